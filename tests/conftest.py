"""Shared fixtures: real DICOM gateways on loopback and synthetic CT studies.

Gateways are started per test (each in its own folder, on free ports) and
stopped after it; starting waits on readiness (C-ECHO, Orthanc's REST API),
never on a sleep. When a test fails, the last lines of each gateway's log are
printed with the test's report.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any, Protocol

import hypothesis
import pytest
from pydicom.uid import ExplicitVRLittleEndian

from gatewaypool_local.peers.dcmtk import StoreSCP
from gatewaypool_local.peers.orthanc import Orthanc
from gatewaypool_local.peers.pynetdicom_sink import PynetdicomSink
from gatewaypool_local.synth import Study, generate_study
from support import custommetrics, lanes
from support.outcome import did_fail
from support.realcluster import (
    Cluster,
    in_sandbox,
    namespace_for,
    running_cluster,
    session_folder,
)

# Property tests check properties, not speed: hypothesis's per-example
# deadline would make them fail on a busy 2-core machine.
hypothesis.settings.register_profile("gatewaypool", deadline=None)
hypothesis.settings.load_profile("gatewaypool")

_LOG_LINES_ON_FAILURE = 30


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Keep each phase's report on the item, so fixtures know a test failed."""
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-golden",
        action="store_true",
        help="write the golden files (tests/golden/) from what the code renders now, "
        "instead of comparing with them; review the change with git diff",
    )


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist, each worker gets a network of its own (support.lanes)."""
    if lanes.xdist_worker() and in_sandbox():
        lanes.own_network_namespace()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    lanes.check_placement(items)


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """``--dist loadscope``: one worker takes every cluster module (support.lanes)."""
    if config.getvalue("dist") == "loadscope":
        return lanes.OneClusterScheduling(config, log)
    return None


def _print_log_on_failure(
    request: pytest.FixtureRequest, gateway: StoreSCP | Orthanc | PynetdicomSink
) -> None:
    # Printed output of a failed test is shown with its report.
    if did_fail(request):
        print(gateway.log_tail(_LOG_LINES_ON_FAILURE))


@pytest.fixture
def tmp_workdir(tmp_path: Path) -> Path:
    """A fresh folder for one test's gateways, studies and logs."""
    work = tmp_path / "work"
    work.mkdir()
    return work


@pytest.fixture
def storescp_gateway(tmp_workdir: Path, request: pytest.FixtureRequest) -> Iterator[StoreSCP]:
    """A started DCMTK storescp (bit-preserving), stopped after the test."""
    gateway = StoreSCP(tmp_workdir / "storescp", ae_title="GW-STORESCP")
    with gateway:
        yield gateway
    _print_log_on_failure(request, gateway)


@pytest.fixture
def orthanc_gateway(tmp_workdir: Path, request: pytest.FixtureRequest) -> Iterator[Orthanc]:
    """A started Orthanc with storage in the test's folder, killed after it.

    Killed, not stopped: Orthanc 1.10's graceful stop takes ~2.5 s (its HTTP
    server's shutdown), and the folder is thrown away with the test anyway.
    """
    gateway = Orthanc(tmp_workdir / "orthanc", ae_title="GW-ORTHANC")
    gateway.start()
    try:
        yield gateway
    finally:
        gateway.kill()
    _print_log_on_failure(request, gateway)


@pytest.fixture
def pynetdicom_gateway(
    tmp_workdir: Path, request: pytest.FixtureRequest
) -> Iterator[PynetdicomSink]:
    """A started pynetdicom sink (exact received bytes), stopped after the test."""
    gateway = PynetdicomSink(tmp_workdir / "sink", ae_title="GW-SINK")
    with gateway:
        yield gateway
    _print_log_on_failure(request, gateway)


class StudyFactory(Protocol):
    """Signature of the ``ct_studies`` fixture's value."""

    def __call__(
        self,
        count: int = 1,
        *,
        instances: int = 5,
        rows: int = 64,
        columns: int = 64,
        transfer_syntax: str = ExplicitVRLittleEndian,
        first_index: int = 0,
        seed: int = 0,
    ) -> list[Study]: ...


_StudyKey = tuple[int, int, int, int, str, int, int]


@pytest.fixture(scope="session")
def _generated_studies(tmp_path_factory: pytest.TempPathFactory) -> dict[_StudyKey, list[Study]]:
    """Studies already written this session, by what was asked for (see ``ct_studies``)."""
    return {}


@pytest.fixture
def ct_studies(
    tmp_path_factory: pytest.TempPathFactory, _generated_studies: dict[_StudyKey, list[Study]]
) -> StudyFactory:
    """Factory: ``ct_studies(count, instances=5, rows=64, columns=64, ...)``.

    Returns ``count`` head-CT studies (indexes ``first_index`` on). Small
    images by default: tests need the shape of CT traffic, not its size.
    The same request gives the same files (the same seed and index give
    identical studies), so each is written once per session and shared: a
    test that must alter one copies it first.
    """

    def make(
        count: int = 1,
        *,
        instances: int = 5,
        rows: int = 64,
        columns: int = 64,
        transfer_syntax: str = ExplicitVRLittleEndian,
        first_index: int = 0,
        seed: int = 0,
    ) -> list[Study]:
        key = (count, instances, rows, columns, str(transfer_syntax), first_index, seed)
        made = _generated_studies.get(key)
        if made is None:
            out = tmp_path_factory.mktemp("studies")
            made = [
                generate_study(
                    out,
                    study_index=first_index + i,
                    instances=instances,
                    rows=rows,
                    columns=columns,
                    transfer_syntax=transfer_syntax,
                    seed=seed,
                )
                for i in range(count)
            ]
            _generated_studies[key] = made
        return list(made)

    return make


# -- the real control plane -----------------------------------------------------------


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    """The real control plane and its stand-ins, one per session (see support.realcluster).

    Its folder is outside /tmp: pods mount an emptyDir there, which would hide
    the folders their other volumes come from.
    """
    folder = session_folder()
    with running_cluster(folder) as running:
        yield running


@pytest.fixture(scope="session")
def custom_metrics(cluster: Cluster) -> None:
    """``custom.metrics.k8s.io`` served: Prometheus and the adapter (support.custommetrics).

    Deployed once per session, by the first test that asks for it; Available when this returns.
    """
    custommetrics.deploy(cluster)
    custommetrics.wait_available(cluster)


@pytest.fixture
def cluster_namespace(cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A namespace of the session's cluster for one test, deleted afterwards.

    When the test fails, the logs of the pods it ran are printed.
    """
    with cluster.namespace(namespace_for(request.node.name)) as namespace:
        yield namespace
        if did_fail(request):
            cluster.print_pod_logs(namespace, lines=_LOG_LINES_ON_FAILURE)
