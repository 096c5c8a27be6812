"""The PDU fuzzer's short run: hostile bytes beside a well-formed sender.

A few hundred cases of :mod:`support.pdufuzz` (mutated association
requests, P-DATA-TF PDUs, PDV headers and lengths, command sets, abrupt
and slow senders) over concurrent connections, half of them per forwarding
mode, while a pynetdicom sender stores real studies through the same router.
:func:`support.fuzzrun.run` says what is checked; the longer run is
``./dev.sh fuzz`` (docs/hostile-input.md).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from gatewaypool_local.peers.pynetdicom_sink import PynetdicomSink
from gatewaypool_local.routerproc import RouterProcess
from gatewaypool_local.synth import generate_study
from support import fuzzrun

RouterFactory = Callable[..., RouterProcess]
SEED = 20261202
CASES_PER_MODE = 150
CASES_OVER_TLS = 100


def test_hostile_pdus_beside_a_wellformed_sender(
    start_router: RouterFactory,
    pynetdicom_gateway: PynetdicomSink,
    forwarding: str,
    tmp_path: Path,
) -> None:
    studies = [
        generate_study(tmp_path / "studies", study_index=i, instances=4, rows=32, columns=32)
        for i in range(3)
    ]
    router = start_router([pynetdicom_gateway], extra_args=fuzzrun.ROUTER_OPTIONS)
    first = 0 if forwarding == "splice" else CASES_PER_MODE
    report = fuzzrun.run(
        router,
        pynetdicom_gateway,
        studies,
        seed=SEED,
        indexes=range(first, first + CASES_PER_MODE),
        workers=6,
        mode=forwarding,
    )
    print(fuzzrun.figures([report]))
    assert not report.problems, "\n".join(report.problems[:10])
    assert len(report.results) == CASES_PER_MODE
    outcomes = {result.outcome for result in report.results}
    assert {"aborted", "released", "reset"} <= outcomes
    assert report.sender_sent >= 4
    assert report.sender_delivered == report.sender_sent


def test_hostile_pdus_over_tls_beside_a_wellformed_sender(
    pynetdicom_gateway: PynetdicomSink, tmp_path: Path
) -> None:
    # The same cases inside TLS, to the router's TLS port: the router reads
    # them through its TLS socket (records never line up with PDUs), and a
    # cut or reset connection ends the TLS stream without close_notify. An
    # association from the TLS port always copies, so one mode is enough;
    # not start_router, which would run this once per mode.
    tls_options, tls = fuzzrun.tls_target(tmp_path / "pki")
    studies = [
        generate_study(tmp_path / "studies", study_index=i, instances=4, rows=32, columns=32)
        for i in range(3)
    ]
    gateway = f"{pynetdicom_gateway.ae_title}@{pynetdicom_gateway.host}:{pynetdicom_gateway.port}"
    with RouterProcess(
        tmp_path / "router",
        gateways=[gateway],
        extra_args=[*fuzzrun.ROUTER_OPTIONS, *tls_options],
    ) as router:
        report = fuzzrun.run(
            router,
            pynetdicom_gateway,
            studies,
            seed=SEED,
            indexes=range(2 * CASES_PER_MODE, 2 * CASES_PER_MODE + CASES_OVER_TLS),
            workers=6,
            mode="tls",
            tls=tls,
        )
        print(fuzzrun.figures([report]))
        assert not report.problems, "\n".join(report.problems[:10])
        assert len(report.results) == CASES_OVER_TLS
        assert {"aborted", "released", "reset"} <= {r.outcome for r in report.results}
        accepted = router.events("association.accepted")
        assert sum(1 for event in accepted if event["tls"]) >= CASES_OVER_TLS // 2
        assert report.sender_delivered == report.sender_sent >= 4
