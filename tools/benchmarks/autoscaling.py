"""Benchmark: an autoscaled pool through a load that rises from 1 to 8 senders and falls.

    ./dev.sh bench-autoscale [--out docs/autoscaling.png] [--seed 0]

Runs the scenario of the end-to-end autoscaling test (:mod:`support.autoscale`)
on the real control plane: the operator and routers as pods, the real HPA
controller of kube-controller-manager (sync period 2 s) reading studies in
flight through ``custom.metrics.k8s.io`` (Prometheus and the chart's
Prometheus Adapter rules, :mod:`support.custommetrics`), holding each step
of the load a little longer than the test. It prints a summary (replicas
reached, when the pool scaled up and down, studies sent, split, failed and
lost) and draws load, studies in flight and replicas over time into a PNG.
It is not a test: the figures depend on the machine. It starts a cluster of
its own, so it runs in the test sandbox (``./dev.sh`` puts it there).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import matplotlib

from support import autoscale, custommetrics
from support.realcluster import running_cluster, session_folder

REPO = Path(__file__).resolve().parents[2]


def plot(result: autoscale.Result, out: Path) -> None:
    """Load and in-flight studies above, replicas below, the HPA's decisions marked."""
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    s = result.scenario
    fig, (load_ax, replicas_ax) = plt.subplots(
        2, 1, sharex=True, figsize=(10, 7), constrained_layout=True
    )
    fig.suptitle(
        "GatewayPool autoscaling: the real HPA controller on studies in flight per gateway\n"
        f"{s.min_replicas} to {s.max_replicas} gateways, target {s.studies_in_flight} studies "
        f"in flight per gateway; scale-down: {s.stabilization_seconds} s window, 1 gateway "
        f"per {s.period_seconds} s\nquietSeconds {s.quiet_seconds}; HPA sync every "
        f"{s.sync_period:g} s (Kubernetes: 15 s), Prometheus scrape every "
        f"{custommetrics.SCRAPE_INTERVAL}; {len(result.outcome.studies)} studies sent: "
        f"{len(result.split_studies())} split, {len(result.outcome.failed)} failed, "
        f"{len(result.lost_instances())} lost",
        fontsize=10,
    )
    _draw_load(load_ax, result)
    _draw_replicas(replicas_ax, result)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def _draw_load(ax: Any, result: autoscale.Result) -> None:
    s = result.scenario
    times = [x.time for x in result.samples]
    ax.step(
        times,
        [x.senders for x in result.samples],
        where="post",
        color="tab:gray",
        lw=2,
        label="senders (load)",
    )
    ax.plot(
        times,
        [x.in_flight for x in result.samples],
        color="tab:blue",
        lw=1.5,
        label="studies in flight (over gateways and routers, as the HPA read it)",
    )
    ax.step(
        times,
        [s.studies_in_flight * x.spec_replicas for x in result.samples],
        where="post",
        color="tab:blue",
        ls=":",
        lw=1.2,
        label=f"target: {s.studies_in_flight} per gateway x spec.replicas",
    )
    ax.set_ylabel("senders / studies")
    ax.set_ylim(bottom=0)
    ax.legend(loc="upper right", fontsize=8)
    ax.grid(alpha=0.3)


def _draw_replicas(ax: Any, result: autoscale.Result) -> None:
    s = result.scenario
    times = [x.time for x in result.samples]
    ax.axhspan(s.min_replicas, s.max_replicas, color="tab:green", alpha=0.06)
    ax.step(
        times,
        [x.spec_replicas for x in result.samples],
        where="post",
        color="tab:orange",
        lw=2.2,
        label="spec.replicas (written by the HPA)",
    )
    ax.step(
        times,
        [x.ready for x in result.samples],
        where="post",
        color="tab:green",
        lw=1.5,
        ls="--",
        label="gateways Ready (one leaves once its buckets have moved)",
    )
    events = result.scale_events()
    for t, before, after in events:
        colour = "tab:red" if after > before else "tab:purple"
        ax.plot([t], [after], marker="^" if after > before else "v", ms=7, color=colour)
        ax.annotate(
            f"{before}\u2192{after}",
            (t, after),
            xytext=(0, 9 if after > before else -15),
            textcoords="offset points",
            ha="center",
            fontsize=8,
            color=colour,
        )
    # When the HPA said its window held a scale-down back (AbleToScale: ScaleDownStabilized).
    held = [x.time for x in result.samples if x.stabilized]
    for start, end in _spans(held, gap=0.5):
        ax.axvspan(start, end, color="tab:purple", alpha=0.08)
    ax.plot([], [], color="tab:purple", alpha=0.3, lw=6, label="scale-down held by the window")
    downs = [t for t, a, b in events if b < a]
    if downs:
        # The window before the first scale-down: every recommendation in it asked for fewer.
        y = s.max_replicas + 0.45
        ax.annotate(
            "",
            (downs[0], y),
            (downs[0] - s.stabilization_seconds, y),
            arrowprops={"arrowstyle": "<->", "color": "tab:purple"},
        )
        ax.text(
            downs[0] - s.stabilization_seconds / 2,
            y + 0.12,
            f"{s.stabilization_seconds} s (= maxDrainSeconds) of lower recommendations",
            ha="center",
            fontsize=8,
            color="tab:purple",
        )
    ax.set_ylim(0, s.max_replicas + 1.1)
    ax.set_yticks(range(s.max_replicas + 1))
    ax.set_ylabel("gateways")
    ax.set_xlabel("seconds since the load started")
    ax.legend(loc="lower center", fontsize=8)
    ax.grid(alpha=0.3)


def _spans(times: list[float], *, gap: float) -> list[tuple[float, float]]:
    """Runs of `times` no further apart than `gap`, as (first, last)."""
    spans: list[tuple[float, float]] = []
    for t in times:
        if spans and t - spans[-1][1] <= gap:
            spans[-1] = (spans[-1][0], t)
        else:
            spans.append((t, t))
    return spans


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "autoscaling.png")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    scenario = autoscale.Scenario(seed=args.seed)
    with (
        tempfile.TemporaryDirectory(prefix="gwp-bench-autoscale-") as tmp,
        running_cluster(session_folder()) as cluster,
    ):
        custommetrics.deploy(cluster)
        custommetrics.wait_available(cluster)
        with cluster.namespace("bench-autoscale") as namespace:
            result = autoscale.run(cluster, namespace, Path(tmp), scenario)
    print()
    print(result.summary())
    if result.errors:
        print("errors:", *result.errors, sep="\n  ")
    plot(result, args.out)
    print(f"plot: {args.out}")
    return 1 if result.errors or result.split_studies() or result.lost_instances() else 0


if __name__ == "__main__":
    raise SystemExit(main())
