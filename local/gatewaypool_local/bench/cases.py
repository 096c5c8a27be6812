"""The benchmark's cases: who sends what to whom, and how it is timed.

Every throughput case is a set of *lanes* run at once, one thread each; a
lane is a list of sends run one after another, each one DCMTK ``storescu``
process (one association). The routed cases give each lane one ``storescu``
carrying whole studies, as a modality sends them. The limit case sends the
same studies in the same lanes, but each study with its own ``storescu``
straight to the gateway its bucket names in the map the router is given:
what the gateways can take with no router at all. The spool cases send
the routed cases' lanes through routers of their own with ``--spool-dir``
(:data:`SPOOL_CASES`), timed until the senders are answered and, for a
router that acknowledges before forwarding, until its spool is empty again.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
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


@dataclass(frozen=True)
class SpoolCase:
    """A routed case through a router with a spool: its label and ``--spool-when``."""

    label: str
    when: str

    @property
    def folder(self) -> str:
        """The spool's folder under the benchmark's work dir (on disk, as a router's volume)."""
        return self.label

    def router_args(self, work: Path) -> list[str]:
        """The router options of this case: its spool in `work`, no size limit but the disk's."""
        return ["--spool-dir", str(work / self.folder), "--spool-when", self.when]


#: The spool cases, beside the cut-through ``routed`` case. ``Always``
#: acknowledges each instance once it is fsynced in the spool and forwards
#: it afterwards; ``GatewayUnavailable`` with every gateway up spools
#: nothing, but copies each instance through memory (no splice) and writes
#: an unsynced copy of it while it goes to its gateway: its cost when
#: nothing fails.
SPOOL_CASES = (
    SpoolCase("spool-always", "Always"),
    SpoolCase("spool-unavailable", "GatewayUnavailable"),
)


def spool_entries(spool_dir: Path) -> int:
    """Committed instances waiting in a spool folder (``queue/<bucket>/<seq>.inst``).

    The forwarder deletes an entry once its gateway answered, so none left
    means every acknowledged instance was on its gateway.
    """
    queue = spool_dir / "queue"
    if not queue.is_dir():
        return 0
    count = 0
    for bucket in queue.iterdir():
        try:
            count += sum(1 for name in bucket.iterdir() if name.suffix == ".inst")
        except (FileNotFoundError, NotADirectoryError):  # emptied and removed meanwhile
            continue
    return count


def spool_is_empty(spool_dir: Path) -> bool:
    """Whether every instance a spool acknowledged has been forwarded."""
    return spool_entries(spool_dir) == 0


@dataclass(frozen=True)
class Timing:
    """How long a case took, in seconds from the senders' start.

    `answered`: until every sender had its last answer; `delivered`: until
    every instance was on its gateway, the same for a cut-through router.
    """

    answered: float
    delivered: float


def run_lanes(
    plan: Sequence[Sequence[Send]],
    *,
    delivered: Callable[[], bool] | None = None,
    interval: float = 0.005,
    timeout: float = 600.0,
) -> Timing:
    """Run every lane at once, each lane's sends in turn, then poll `delivered` until true.

    `delivered` None: the senders' answers are the delivery (cut-through).

    Raises
    ------
    RuntimeError
        If any ``storescu`` failed: a figure from a run that lost instances
        would flatter whichever path lost them. Or if `delivered` stayed
        false for `timeout` seconds after the senders finished.
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
    answered = time.perf_counter() - started
    if errors:
        raise RuntimeError("storescu failed: " + " | ".join(errors))
    if delivered is None:
        return Timing(answered, answered)
    deadline = time.monotonic() + timeout
    while not delivered():
        if time.monotonic() >= deadline:
            raise RuntimeError(f"instances not delivered within {timeout:g} s of the answers")
        time.sleep(interval)
    return Timing(answered, time.perf_counter() - started)


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
