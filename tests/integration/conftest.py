"""Fixtures for integration tests: the router as a real process."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol

import pytest

from gatewaypool_local.peers.gateway import GatewayPeer
from gatewaypool_local.routerproc import RouterProcess
from gatewaypool_router import splice
from gatewaypool_router.scanner import HOT_PATH_VARIABLE, IMPLEMENTATIONS
from support.outcome import did_fail

#: Modules whose tests run once per ``--forwarding`` mode: every test that
#: moves data set bytes (routing, streaming, bad input, failures,
#: concurrency, stalls, real-world files, the PDU fuzzer). The others (maps, Kubernetes
#: sources, load reports, workers) do not depend on how bytes move, and
#: running them twice would only cost suite time.
DATA_PATH_MODULES = frozenset(
    {
        "test_router_routing",
        "test_router_streaming",
        "test_router_bad_input",
        "test_router_failures",
        "test_router_concurrency",
        "test_router_stalls",
        "test_router_testdata",
        "test_router_fuzz",
    }
)


#: Modules whose tests run once per hot path too (``GATEWAYPOOL_HOT_PATH``:
#: the native scanner, and the Python fallback): the data path's, and the
#: stress test.
HOT_PATH_MODULES = DATA_PATH_MODULES | {"test_router_stress"}

#: (forwarding, hot path) of a data path module's runs: the native scanner
#: (the default where built) on both paths, and the Python fallback on the
#: default path. The fourth pair, copying with the Python scan, adds
#: nothing either of its halves does not test elsewhere.
DATA_PATH_RUNS = [("splice", "native"), ("copy", "native"), ("splice", "python")]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run the data path's tests with the fast path on (splice) and forced off (copy),
    and with the native scanner and the Python one."""
    if "start_router" not in metafunc.fixturenames:
        return
    module = metafunc.module.__name__.rsplit(".", 1)[-1]
    if module in DATA_PATH_MODULES:
        metafunc.parametrize(
            ("forwarding", "hot_path"),
            DATA_PATH_RUNS,
            indirect=True,
            ids=[f"{f}-{h}" for f, h in DATA_PATH_RUNS],
        )
    elif module in HOT_PATH_MODULES:
        metafunc.parametrize("hot_path", ["native", "python"], indirect=True)


@pytest.fixture
def forwarding(request: pytest.FixtureRequest) -> str | None:
    """The ``--forwarding`` mode of the routers a test starts (None: the default)."""
    mode: str | None = getattr(request, "param", None)
    if mode == "splice" and not splice.available():
        pytest.skip("this system cannot splice between sockets")
    return mode


@pytest.fixture
def hot_path(request: pytest.FixtureRequest) -> str | None:
    """The ``GATEWAYPOOL_HOT_PATH`` of the routers a test starts (None: the default)."""
    mode: str | None = getattr(request, "param", None)
    if mode is not None and mode not in IMPLEMENTATIONS:
        pytest.fail("gatewaypool_router._native is not built: run ./dev.sh to build it")
    return mode


class RouterFactory(Protocol):
    def __call__(
        self,
        gateways: Sequence[GatewayPeer] = (),
        *,
        map_file: Path | None = None,
        extra_args: Sequence[str] = (),
        ae_title: str = "GATEWAYPOOL",
        workers: int | None = 1,
    ) -> RouterProcess: ...


def gateway_arg(gateway: GatewayPeer) -> str:
    return f"{gateway.ae_title}@{gateway.host}:{gateway.port}"


@pytest.fixture
def start_router(
    tmp_path: Path, request: pytest.FixtureRequest, forwarding: str | None, hot_path: str | None
) -> Iterator[RouterFactory]:
    """Factory starting ``gatewaypool router`` processes; all stopped after the test."""
    routers: list[RouterProcess] = []

    def start(
        gateways: Sequence[GatewayPeer] = (),
        *,
        map_file: Path | None = None,
        extra_args: Sequence[str] = (),
        ae_title: str = "GATEWAYPOOL",
        workers: int | None = 1,
    ) -> RouterProcess:
        if forwarding is not None:
            extra_args = ["--forwarding", forwarding, *extra_args]
        env = None if hot_path is None else {**os.environ, HOT_PATH_VARIABLE: hot_path}
        router = RouterProcess(
            tmp_path / f"router-{len(routers)}",
            gateways=[gateway_arg(g) for g in gateways],
            map_file=map_file,
            extra_args=extra_args,
            ae_title=ae_title,
            workers=workers,
            env=env,
        )
        routers.append(router)
        router.start()
        if hot_path is not None:
            # Logged beside serving, not before: ready may come a moment first.
            started = router.wait_events("router.started")
            assert started[0]["hot_path"] == hot_path, started
        return router

    yield start
    failed = did_fail(request)
    for router in routers:
        router.stop()
        if failed:
            print(router.log_tail(60))
