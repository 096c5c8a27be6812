"""The image's environment: what the Dockerfile installs, and what the cluster's pods run.

``./dev.sh`` builds it as the Dockerfile builds the image (the wheels of the
Dockerfile's sources and their dependencies, installed with ``--no-index``
into a clean virtualenv: :mod:`support.images`). Every operator and router
pod of the test cluster runs from it, so each cluster test is also a test of
the installed wheel; here, what the image must and must not carry.
"""

from __future__ import annotations

import signal
import subprocess
import zipfile
from pathlib import Path

import pytest

from gatewaypool_local.peers.gateway import echo
from gatewaypool_local.peers.process import free_port, wait_until
from gatewaypool_local.peers.pynetdicom_sink import PynetdicomSink
from support import chart, images


@pytest.fixture(scope="module")
def venv() -> Path:
    return images.project_venv()


def run(venv: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(venv / "bin" / "gatewaypool"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_wheel_holds_the_product_and_nothing_else(venv: Path) -> None:
    [wheel] = (venv.parent / "wheels").glob("gatewaypool-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for package in ("gatewaypool", "gatewaypool_router", "gatewaypool_operator"):
        assert f"{package}/__init__.py" in names, package
    # Neither the demo and its synthetic studies nor test tooling ship in the image.
    assert not any(name.startswith(("gatewaypool_local/", "tests/", "support/")) for name in names)


def test_the_image_runs_the_native_hot_path(venv: Path) -> None:
    # The wheel carries router/native, built by setuptools-rust: the router in
    # the image scans natively unless told otherwise (GATEWAYPOOL_HOT_PATH).
    probe = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "from gatewaypool_router import scanner; "
         "print(scanner.HOT_PATH)"],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin"},
        check=True,
    )  # fmt: skip
    assert probe.stdout.strip() == "native"


def test_the_image_carries_no_numpy_and_no_test_tools(venv: Path) -> None:
    for module in ("numpy", "pytest", "gatewaypool_local"):
        probe = subprocess.run(
            [str(venv / "bin" / "python"), "-c", f"import {module}"],
            capture_output=True,
            check=False,
        )
        assert probe.returncode != 0, module
        assert f"No module named '{module}'".encode() in probe.stderr, module


def test_every_command_is_registered(venv: Path) -> None:
    result = run(venv, "--help")
    assert result.returncode == 0
    for command in ("router", "operator", "locate"):
        assert command in result.stdout
    # Registered by the project, absent from the image: left out of the list, not an error.
    assert "local" not in result.stdout and "bench" not in result.stdout
    assert run(venv, "router", "--help").returncode == 0
    assert run(venv, "operator", "--help").returncode == 0
    # `kubectl gwp locate`: the plugin is in the image beside `gatewaypool`.
    plugin = subprocess.run(
        [str(venv / "bin" / "kubectl-gwp"), "locate", "--help"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert plugin.returncode == 0 and "STUDY_UID" in plugin.stdout
    assert run(venv, "--version").stdout.strip() == "gatewaypool 0.1.0"


def test_the_charts_operator_and_routers_run_from_the_image(venv: Path) -> None:
    objects = chart.render({}, release="gatewaypool", namespace="gatewaypool-system")
    [deployment] = [obj for obj in objects if obj["kind"] == "Deployment"]
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    image = images.pull(container["image"])
    assert image is not None
    argv = images.command_line(image, container.get("command", []), container.get("args", []))
    assert argv[0] == str(venv / "bin" / "gatewaypool")
    assert argv[1] == "operator"


def test_the_router_from_the_image_serves(venv: Path, tmp_path: Path) -> None:
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
