"""Fixtures for router integration tests: the router as a real process."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol

import pytest

from gatewaypool_local.peers import GatewayPeer
from gatewaypool_local.routerproc import RouterProcess


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
def start_router(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[RouterFactory]:
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
    failed = getattr(request.node, "report_call", None)
    for router in routers:
        router.stop()
        if failed is None or failed.failed:
            print(f"--- last lines of {router.log_path} ---\n{router.log_tail(60)}")
