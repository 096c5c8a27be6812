"""``gatewaypool bench``: what the router costs, in figures.

Same data, same run: DCMTK ``storescu`` straight to one ``storescp`` is 1.0;
the same files through the router to three ``storescp`` gateways give the
ratio. Then the latency the router adds per instance (a pynetdicom sender
timing each C-STORE round trip, direct and routed) and the router's peak
memory, also while it streams one very large multi-frame instance.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pynetdicom import _config

from gatewaypool_local import scu
from gatewaypool_local.peers import StoreSCP, storescu
from gatewaypool_local.routerproc import RouterProcess
from gatewaypool_local.synth import generate_multiframe, generate_study

_STUDY_SIZE = 50


@dataclass(frozen=True)
class Throughput:
    label: str
    associations: int
    instances: int
    size: int
    seconds: float

    @property
    def per_second(self) -> float:
        return self.instances / self.seconds

    @property
    def megabytes_per_second(self) -> float:
        return self.size / 1e6 / self.seconds


def _say(text: str = "") -> None:
    print(text, flush=True)


def _send_parallel(host: str, port: int, called_ae: str, parts: Sequence[Sequence[Path]]) -> float:
    errors: list[str] = []

    def send(files: Sequence[Path], index: int) -> None:
        result = storescu(host, port, files, calling_ae=f"BENCH{index}", called_ae=called_ae)
        if result.returncode != 0:
            errors.append((result.stdout + result.stderr)[-400:])

    threads = [threading.Thread(target=send, args=(files, i)) for i, files in enumerate(parts)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise RuntimeError("storescu failed: " + " | ".join(errors))
    return elapsed


def _split(files: Sequence[Path], parts: int) -> list[list[Path]]:
    """Whole studies per association, as modalities send them."""
    studies = [list(files[i : i + _STUDY_SIZE]) for i in range(0, len(files), _STUDY_SIZE)]
    out: list[list[Path]] = [[] for _ in range(parts)]
    for index, study in enumerate(studies):
        out[index % parts].extend(study)
    return [part for part in out if part]


def _round_trips(host: str, port: int, called_ae: str, files: Sequence[Path]) -> list[float]:
    """Seconds per C-STORE round trip on one pynetdicom association."""
    previous = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    timings = []
    try:
        with scu.open_association(
            host,
            port,
            contexts=[("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.1")],
            calling_ae="LATENCY",
            called_ae=called_ae,
            max_pdu=131072,
        ) as assoc:
            for path in files:
                started = time.perf_counter()
                status = scu.store(assoc, path)
                timings.append(time.perf_counter() - started)
                if not status or int(status.Status) != 0:
                    raise RuntimeError(f"C-STORE failed: {status}")
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = previous
    return timings


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


def _percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def main(args: argparse.Namespace) -> int:
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="gatewaypool-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    lines: list[str] = []

    def record(text: str = "") -> None:
        _say(text)
        lines.append(text)

    instances = max(_STUDY_SIZE, args.instances)
    studies = (instances + _STUDY_SIZE - 1) // _STUDY_SIZE
    _say(f"generating {studies * _STUDY_SIZE} CT instances (512x512, 16 bit) in {work}")
    files: list[Path] = []
    for index in range(studies):
        files += generate_study(
            work / "data", study_index=index, instances=_STUDY_SIZE, rows=512, columns=512
        ).files
    size = sum(path.stat().st_size for path in files)
    # --fork: a gateway serves concurrent associations, as a real one does
    # (a single storescp process takes one association at a time).
    direct_gateway = StoreSCP(work / "direct", ae_title="DIRECT", extra_args=["--fork"])
    gateways = [
        StoreSCP(work / f"gw-{i}", ae_title=f"GW{i}", extra_args=["--fork"]) for i in range(3)
    ]
    router: RouterProcess | None = None
    results: list[Throughput] = []
    try:
        for gateway in [direct_gateway, *gateways]:
            gateway.start()
        router = RouterProcess(
            work / "router", gateways=[f"{g.ae_title}@{g.host}:{g.port}" for g in gateways]
        )
        router.start()
        targets = [
            ("direct", direct_gateway.host, direct_gateway.port, direct_gateway.ae_title),
            ("routed", router.host, router.port, router.ae_title),
        ]
        for associations in (1, 4):
            parts = _split(files, associations)
            for label, host, port, ae_title in targets:
                best = min(_send_parallel(host, port, ae_title, parts) for _ in range(args.rounds))
                results.append(Throughput(label, associations, len(files), size, best))
                _say(f"  {label} x{associations}: {len(files) / best:.0f} instances/s")
        sample = files[: min(200, len(files))]
        direct_rt = _round_trips(
            direct_gateway.host, direct_gateway.port, direct_gateway.ae_title, sample
        )
        routed_rt = _round_trips(router.host, router.port, router.ae_title, sample)
        router_rss = router.peak_rss_bytes()
    finally:
        if router is not None:
            router.stop()
        for gateway in [direct_gateway, *gateways]:
            gateway.stop()

    big_rss, big_seconds, big_size = _multiframe(work, args.multiframe_mb)

    record("## Router benchmark")
    record()
    command = f"gatewaypool bench --instances {args.instances} --multiframe-mb {args.multiframe_mb}"
    record(f"Command: `{command}`")
    record(
        f"Data: {len(files)} CT instances, 512x512x16 bit, {size / 1e6:.0f} MB, "
        f"in studies of {_STUDY_SIZE}; best of {args.rounds} rounds. "
        f"Machine: {_machine()}."
    )
    record()
    record("| path | associations | instances/s | MB/s | routed/direct |")
    record("|---|---|---|---|---|")
    for associations in (1, 4):
        direct = next(r for r in results if r.label == "direct" and r.associations == associations)
        routed = next(r for r in results if r.label == "routed" and r.associations == associations)
        for r in (direct, routed):
            ratio = f"{routed.per_second / direct.per_second:.2f}" if r is routed else "1.00"
            record(
                f"| {'storescu → storescp' if r is direct else 'storescu → router → 3 storescp'} "
                f"| {associations} | {r.per_second:.0f} | {r.megabytes_per_second:.0f} | {ratio} |"
            )
    record()
    added50 = (statistics.median(routed_rt) - statistics.median(direct_rt)) * 1000
    added99 = (_percentile(routed_rt, 0.99) - _percentile(direct_rt, 0.99)) * 1000
    record(
        f"Per-instance C-STORE round trip (pynetdicom sender, {len(direct_rt)} instances): "
        f"direct p50 {_ms(statistics.median(direct_rt))}, p99 {_ms(_percentile(direct_rt, 0.99))}; "
        f"routed p50 {_ms(statistics.median(routed_rt))}, p99 {_ms(_percentile(routed_rt, 0.99))}; "
        f"added by the router p50 {added50:.2f} ms, p99 {added99:.2f} ms."
    )
    record()
    record(f"Router peak RSS over all the runs above: {router_rss / 2**20:.0f} MiB.")
    record(
        f"Router peak RSS while streaming one {big_size / 2**20:.0f} MiB multi-frame instance: "
        f"{big_rss / 2**20:.0f} MiB (took {big_seconds:.1f} s)."
    )
    if args.markdown:
        args.markdown.write_text("\n".join(lines) + "\n")
        _say(f"figures written to {args.markdown}")
    return 0


def _multiframe(work: Path, megabytes: int) -> tuple[int, float, int]:
    """Peak RSS of a fresh router while one huge instance streams through it."""
    path = work / "multiframe.dcm"
    instance = generate_multiframe(path, size_bytes=megabytes * 2**20)
    gateway = StoreSCP(work / "gw-big", ae_title="BIG", extra_args=["--ignore"])
    router: RouterProcess | None = None
    try:
        gateway.start()
        router = RouterProcess(
            work / "router-big", gateways=[f"{gateway.ae_title}@{gateway.host}:{gateway.port}"]
        )
        router.start()
        started = time.perf_counter()
        result = storescu(router.host, router.port, [path], called_ae=router.ae_title)
        seconds = time.perf_counter() - started
        if result.returncode != 0:
            raise RuntimeError(f"multi-frame send failed: {result.stderr[-400:]}")
        return router.peak_rss_bytes(), seconds, instance.total_bytes
    finally:
        if router is not None:
            router.stop()
        gateway.stop()
        path.unlink(missing_ok=True)


def _machine() -> str:
    import os
    import platform

    return f"{os.cpu_count()} cores, Python {platform.python_version()}, {platform.machine()}"


if __name__ == "__main__":
    sys.exit(main(argparse.Namespace()))
