"""The benchmark's cases: who sends what to whom, and how it is timed.

Every throughput case is a set of *lanes* run at once, one thread each; a
lane is a list of sends run one after another, each one DCMTK ``storescu``
process (one association). The routed cases give each lane one ``storescu``
carrying whole studies, as a modality sends them. The limit case sends the
same studies in the same lanes, but each study with its own ``storescu``
straight to the gateway its bucket names in the map the router is given:
what the gateways can take with no router at all.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pynetdicom import _config

from gatewaypool.bucketmap import BucketMap, Gateway
from gatewaypool.hashing import study_bucket
from gatewaypool_local import scu
from gatewaypool_local.peers.dcmtk import storescu

_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
_EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"


@dataclass(frozen=True)
class StudyFiles:
    """One study's instances, in the order a modality sends them."""

    study_uid: str
    files: tuple[Path, ...]


@dataclass(frozen=True)
class Send:
    """One ``storescu`` run: one association to one peer."""

    host: str
    port: int
    called_ae: str
    files: tuple[Path, ...]


def lanes(studies: Sequence[StudyFiles], senders: int) -> list[list[StudyFiles]]:
    """Deal whole studies over `senders` lanes, round robin; empty lanes are dropped.

    Round robin rather than blocks keeps the lanes within one study of each
    other, so no lane runs long after the others and the case measures
    `senders` associations at once for nearly all of its time.
    """
    if senders < 1:
        raise ValueError(f"senders must be at least 1, got {senders}")
    out: list[list[StudyFiles]] = [[] for _ in range(senders)]
    for index, study in enumerate(studies):
        out[index % senders].append(study)
    return [lane for lane in out if lane]


def through_one_peer(
    study_lanes: Sequence[Sequence[StudyFiles]], *, host: str, port: int, called_ae: str
) -> list[list[Send]]:
    """Each lane as one association to one peer (the router, or the direct gateway)."""
    return [
        [Send(host, port, called_ae, tuple(f for study in lane for f in study.files))]
        for lane in study_lanes
    ]


def straight_to_owners(
    study_lanes: Sequence[Sequence[StudyFiles]], bucket_map: BucketMap
) -> list[list[Send]]:
    """Each study of each lane as its own association to the gateway that owns its bucket.

    The bucket comes from :func:`gatewaypool.hashing.study_bucket` and the
    owner from the very map the router routes by, so every instance reaches
    the gateway the router would have chosen.
    """
    plan = []
    for lane in study_lanes:
        sends = []
        for study in lane:
            gateway = bucket_map.gateway_for(study_bucket(study.study_uid, bucket_map.buckets))
            sends.append(Send(gateway.host, gateway.port, gateway.ae_title, study.files))
        plan.append(sends)
    return plan


def studies_per_gateway(plan: Sequence[Sequence[Send]], gateways: Sequence[Gateway]) -> str:
    """Describe how the limit case spreads studies, e.g. ``gw-0 7, gw-1 6, gw-2 7``.

    Shown with the figures because a skewed spread, not the router, can be
    what bounds four associations on a small run.
    """
    counts = Counter((send.host, send.port, send.called_ae) for lane in plan for send in lane)
    return ", ".join(
        f"{gateway.name} {counts[(gateway.host, gateway.port, gateway.ae_title)]}"
        for gateway in gateways
    )


def run_lanes(plan: Sequence[Sequence[Send]]) -> float:
    """Run every lane at once, each lane's sends in turn; return the wall-clock seconds.

    Raises
    ------
    RuntimeError
        If any ``storescu`` failed: a figure from a run that lost instances
        would flatter whichever path lost them.
    """
    errors: list[str] = []

    def run(lane: Sequence[Send], index: int) -> None:
        for send in lane:
            result = storescu(
                send.host,
                send.port,
                send.files,
                calling_ae=f"BENCH{index}",
                called_ae=send.called_ae,
            )
            if result.returncode != 0:
                errors.append((result.stdout + result.stderr)[-400:])
                return

    threads = [threading.Thread(target=run, args=(lane, i)) for i, lane in enumerate(plan)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise RuntimeError("storescu failed: " + " | ".join(errors))
    return elapsed


def round_trips(host: str, port: int, called_ae: str, files: Sequence[Path]) -> list[float]:
    """Seconds per C-STORE round trip, each timed alone, on one pynetdicom association.

    One association and small instances leave little but the per-instance
    work of whoever answers: the router's share is the difference between
    the routed and the direct figures. :mod:`gatewaypool_local.scu` keeps
    pynetdicom 3.0.4 from losing a response, which would show up as a
    30 s "round trip".
    """
    previous = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    timings = []
    try:
        with scu.open_association(
            host,
            port,
            contexts=[(_CT_IMAGE_STORAGE, _EXPLICIT_VR_LITTLE_ENDIAN)],
            calling_ae="LATENCY",
            called_ae=called_ae,
            max_pdu=131072,
        ) as assoc:
            for path in files:
                started = time.perf_counter()
                status = scu.store(assoc, path)
                timings.append(time.perf_counter() - started)
                if not status or int(status.Status) != 0:
                    raise RuntimeError(f"C-STORE failed with status {status}")
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = previous
    return timings
