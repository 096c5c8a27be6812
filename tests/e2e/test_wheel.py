"""The wheel, installed into a clean virtualenv, runs both commands."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import kubernetes.client
import pytest

from gatewaypool_local.peers import PynetdicomSink, echo, free_port, wait_until
from support.cluster import REPO
from support.kubeemu import KubeEmulator
from support.operatorproc import OperatorProcess

#: What the Dockerfile copies into its build: the product, without local/.
IMAGE_SOURCES = ("pyproject.toml", "README.md", "common", "router", "operator")

# Building and installing the wheel fetches its build and run dependencies.
pytestmark = pytest.mark.network


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The wheel built as the Dockerfile builds it, installed without extras."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "src"
    source.mkdir()
    for name in IMAGE_SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(
                REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__")
            )
        else:
            shutil.copy2(REPO / name, source / name)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "-w",
            str(work / "dist"),
            str(source),
        ],
        check=True,
        capture_output=True,
    )
    [wheel] = (work / "dist").glob("gatewaypool-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for package in ("gatewaypool", "gatewaypool_router", "gatewaypool_operator"):
        assert f"{package}/__init__.py" in names, package
    # Neither the demo and its synthetic studies nor test tooling ship in the image.
    assert not any(name.startswith(("gatewaypool_local/", "tests/", "support/")) for name in names)
    subprocess.run([sys.executable, "-m", "venv", str(work / "venv")], check=True)
    subprocess.run(
        [str(work / "venv" / "bin" / "pip"), "install", "-q", str(wheel)],
        check=True,
        capture_output=True,
    )
    yield work / "venv"


def test_the_image_carries_no_numpy(venv: Path) -> None:
    probe = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import numpy"], capture_output=True, check=False
    )
    assert probe.returncode != 0 and b"No module named 'numpy'" in probe.stderr


def run(venv: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(venv / "bin" / "gatewaypool"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_every_command_is_registered(venv: Path) -> None:
    result = run(venv, "--help")
    assert result.returncode == 0
    for command in ("router", "operator"):
        assert command in result.stdout
    # Registered by the project, absent from the image: left out of the list, not an error.
    assert "local" not in result.stdout and "bench" not in result.stdout
    assert run(venv, "router", "--help").returncode == 0
    assert run(venv, "operator", "--help").returncode == 0
    assert run(venv, "--version").stdout.strip() == "gatewaypool 0.1.0"


def test_router_from_the_wheel_serves(venv: Path, tmp_path: Path) -> None:
    port, http_port = free_port(), free_port()
    with PynetdicomSink(tmp_path / "sink", ae_title="SINK") as sink:
        process = subprocess.Popen(
            [
                str(venv / "bin" / "gatewaypool"),
                "router",
                "--bind",
                "127.0.0.1",
                "--port",
                str(port),
                "--http-port",
                str(http_port),
                "--gateway",
                f"SINK@{sink.host}:{sink.port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            wait_until(
                lambda: echo("127.0.0.1", port, called_ae="GATEWAYPOOL") == 0x0000,
                timeout=30,
                what="router answers C-ECHO",
            )
        finally:
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=30) == 0


def test_operator_from_the_wheel_reconciles(venv: Path, tmp_path: Path) -> None:
    with KubeEmulator() as kube:
        kube.apply_crd(REPO / "crds" / "gatewaypool.io_gatewaypools.yaml")
        kube.create_namespace("radiology")
        operator = OperatorProcess(
            tmp_path / "operator.log",
            kubeconfig=kube.kubeconfig_path,
            command=[str(venv / "bin" / "gatewaypool")],
        )
        operator.start()
        try:
            kubernetes.client.CustomObjectsApi(kube.api_client()).create_namespaced_custom_object(
                "gatewaypool.io",
                "v1alpha1",
                "radiology",
                "gatewaypools",
                {
                    "apiVersion": "gatewaypool.io/v1alpha1",
                    "kind": "GatewayPool",
                    "metadata": {"name": "ct", "namespace": "radiology"},
                    "spec": {"replicas": 2, "gateway": {"image": "scp:1"}},
                },
            )
            wait_until(
                lambda: kube.get("StatefulSet", "ct-gw", "radiology") is not None,
                timeout=30,
                what="StatefulSet created by the wheel's operator",
            )
        finally:
            operator.stop()
