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

from gatewaypool_local.peers import PynetdicomSink
from gatewaypool_local.routerproc import RouterProcess
from gatewaypool_local.synth import generate_study
from support import fuzzrun

RouterFactory = Callable[..., RouterProcess]
SEED = 20261202
CASES_PER_MODE = 150


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
