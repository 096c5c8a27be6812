"""Fixtures for integration tests: the router as a real process."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol

import pytest

from gatewaypool_local.peers.gateway import GatewayPeer
from gatewaypool_local.routerproc import RouterProcess
from gatewaypool_router import splice
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


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run the data path's tests with the fast path on (splice) and forced off (copy)."""
    if (
        "start_router" in metafunc.fixturenames
        and metafunc.module.__name__.rsplit(".", 1)[-1] in DATA_PATH_MODULES
    ):
        metafunc.parametrize("forwarding", ["splice", "copy"], indirect=True)


@pytest.fixture
def forwarding(request: pytest.FixtureRequest) -> str | None:
    """The ``--forwarding`` mode of the routers a test starts (None: the default)."""
    mode: str | None = getattr(request, "param", None)
    if mode == "splice" and not splice.available():
        pytest.skip("this system cannot splice between sockets")
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
    tmp_path: Path, request: pytest.FixtureRequest, forwarding: str | None
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
        router = RouterProcess(
            tmp_path / f"router-{len(routers)}",
            gateways=[gateway_arg(g) for g in gateways],
            map_file=map_file,
            extra_args=extra_args,
            ae_title=ae_title,
            workers=workers,
        )
        routers.append(router)
        router.start()
        return router

    yield start
    failed = did_fail(request)
    for router in routers:
        router.stop()
        if failed:
            print(router.log_tail(60))
