"""An autoscaled pool through a load that rises and falls: the scenario, its timeline, its outcome.

Shared by the end-to-end test (which asserts on it) and the benchmark (which
plots it), so both run the same thing, on the real control plane
(:mod:`support.realcluster`): the operator as the chart's Deployment renders
the HPA from ``spec.autoscaling``; kube-controller-manager's HPA controller
reads the Pods metric ``gatewaypool_studies_in_flight`` through
``custom.metrics.k8s.io`` (Prometheus scraping the routers, the chart's
Prometheus Adapter rules: :mod:`support.custommetrics`) and writes the
pool's ``/scale``; the routers and one pynetdicom gateway per StatefulSet
pod run as pods of the kubelet stand-in, with a cluster's delays; senders
send whole studies to the router Service's ClusterIP.

The load: one sender, then 2, 4 and 8 at once, held a while once the HPA
has scaled the pool to its maximum, then 4, 2 and 1, held until the HPA
has begun to scale down and a while longer (gateways leave under load),
then none until the pool is back at its minimum and settled. How long each
step of the load lasts is counted in HPA sync periods: that is the load's
shape, as a modality sends for a while. What the run waits for (the pool
at its maximum, the first scale-down, the pool back at its minimum) it
waits for as conditions with deadlines, so a slow machine stretches the run
instead of failing it. A sampler records, every 0.1 s from watches of the
pool, its HPA and its pods: senders, studies in flight (as the HPA last
read them: its average times the pods it averaged over), the pool's spec
and status replicas, the gateways Ready and whether the HPA held a
scale-down back (``ScaleDownStabilized``).
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gatewaypool import quantity
from gatewaypool.contract import API_GROUP, API_VERSION, PLURAL
from gatewaypool_local.peers.process import wait_until
from gatewaypool_local.synth import Study, generate_study
from support import custommetrics
from support.informer import Informer
from support.load import Load
from support.realcluster import Cluster
from support.realpool import RealPool, gateway_spec, operated_pool
from support.traffic import Outcome

POOL = "ct"
IN_FLIGHT = "gatewaypool_studies_in_flight"
#: kube-controller-manager's --horizontal-pod-autoscaler-sync-period in the test cluster.
HPA_SYNC_PERIOD = 2.0


@dataclass(frozen=True)
class Scenario:
    """The pool, the load and the timing of one run."""

    min_replicas: int = 1
    max_replicas: int = 4
    #: The HPA's target per gateway. At 2, the studies in flight of one
    #: sender (summed over two routers, 4 to 8) kept asking for the maximum
    #: and the pool never scaled down while it sent.
    studies_in_flight: int = 3
    #: Few buckets make handovers quick; too few make each a busy one, whose
    #: studies follow one another so closely that it is not quiet for
    #: quietSeconds within maxDrainSeconds: its move is then forced, and may
    #: split a study.
    buckets: int = 256
    quiet_seconds: int = 2
    #: Under 8 senders a study takes seconds on a 2-core machine: 10 s (the
    #: least allowed) leaves a busy bucket too little time to fall quiet, and
    #: so did 15 s once the real HPA controller made its last scale-up under
    #: the peak (2 to 4 buckets forced per run).
    max_drain_seconds: int = 30
    period_seconds: int = 3  # scaleDown.periodSeconds
    sync_period: float = HPA_SYNC_PERIOD  # Kubernetes' default: 15 s
    routers: int = 2
    instances: int = 30  # per study
    chunk: int = 10  # instances per association
    ramp: tuple[int, ...] = (1, 2, 4, 8)
    #: HPA sync periods each step of the ramp lasts.
    hold_syncs: int = 3
    #: HPA sync periods the most senders send once the pool is at max.
    peak_syncs: int = 12
    #: HPA sync periods the lowest load goes on once the HPA has begun to
    #: scale down, so that gateways leave while studies still come in.
    calm_syncs: int = 8
    seed: int = 0

    @property
    def stabilization_seconds(self) -> int:
        """scaleDown.stabilizationSeconds: the shortest allowed, maxDrainSeconds."""
        return self.max_drain_seconds

    def spec(self) -> dict[str, Any]:
        """The pool's spec: pynetdicom gateways, few buckets, autoscaled on studies in flight."""
        return {
            "replicas": self.min_replicas,
            "buckets": self.buckets,
            "gateway": gateway_spec(),
            "router": {"replicas": self.routers},
            "handover": {
                "quietSeconds": self.quiet_seconds,
                "maxDrainSeconds": self.max_drain_seconds,
            },
            "autoscaling": {
                "minReplicas": self.min_replicas,
                "maxReplicas": self.max_replicas,
                "targets": {"studiesInFlight": self.studies_in_flight},
                "scaleDown": {
                    "stabilizationSeconds": self.stabilization_seconds,
                    "periodSeconds": self.period_seconds,
                },
            },
        }


@dataclass(frozen=True)
class Sample:
    """The pool at one moment (seconds since the load started)."""

    time: float
    senders: int
    in_flight: float  # studies in flight over the gateways, as the HPA last read them
    spec_replicas: int
    status_replicas: int
    ready: int  # gateway pods Ready
    stabilized: bool  # the HPA held a scale-down back (AbleToScale: ScaleDownStabilized)


@dataclass
class Result:
    """What a run did.

    Its repr leaves out the timeline and the outcome: long, and the outcome
    holds UIDs, which stay out of test reports.
    """

    scenario: Scenario
    started: float  # monotonic time the load started; sample and phase times count from it
    samples: list[Sample] = field(repr=False)
    #: (monotonic time, from, to) of every change of the pool's spec.replicas seen.
    changes: list[tuple[float, int, int]] = field(repr=False)
    phases: list[tuple[float, int]]  # (time, senders)
    outcome: Outcome = field(repr=False)
    held: dict[str, set[str]] = field(repr=False)  # study -> gateway pods holding some of it
    holders: dict[str, str] = field(repr=False)  # SOP instance -> gateway pod
    hpa: dict[str, Any] = field(repr=False)  # the HPA the operator rendered, at the end
    hpa_events: list[tuple[str, str]] = field(repr=False)  # (reason, message)
    #: Who wrote spec.replicas last (managedFields): (manager, subresource).
    replicas_writer: tuple[str, str]
    handovers: dict[str, int]  # the pool's status.handovers at the end: completed, forced
    forced: list[str]  # the HandoverForced Events' messages (buckets and gateways, no UIDs)
    conditions: list[dict[str, Any]]  # the pool's status.conditions at the end
    errors: list[str] = field(default_factory=list)
    #: Times (since the load started) of the milestones the run waited for.
    marks: dict[str, float] = field(default_factory=dict)

    def at(self, monotonic: float) -> float:
        return monotonic - self.started

    def scale_events(self) -> list[tuple[float, int, int]]:
        """(time, from, to) of every spec.replicas change (the HPA's writes) since the load."""
        return [(self.at(t), a, b) for t, a, b in self.changes if t >= self.started]

    def split_studies(self) -> list[str]:
        return [s.study_uid for s in self.outcome.studies if len(self.held[s.study_uid]) != 1]

    def lost_instances(self) -> set[str]:
        """Acknowledged to the sender but held by no gateway."""
        return set(self.outcome.acknowledged) - set(self.holders)

    def summary(self) -> str:
        events = self.scale_events()
        ups = [e for e in events if e[2] > e[1]]
        downs = [e for e in events if e[2] < e[1]]
        peak = max((s.spec_replicas for s in self.samples), default=0)
        lines = [
            f"autoscaling: {self.scenario.min_replicas}..{self.scenario.max_replicas} gateways, "
            f"target {self.scenario.studies_in_flight} studies in flight per gateway, "
            f"the real HPA controller syncing every {self.scenario.sync_period:g} s "
            "(Kubernetes: 15 s)",
            f"load: senders {' -> '.join(str(n) for _, n in self.phases)}",
            f"max replicas reached: {peak}; max studies in flight: "
            f"{max((s.in_flight for s in self.samples), default=0):g}",
        ]
        for name, when in self.marks.items():
            lines.append(f"  {name}: {when:.1f} s")
        reached = [x.time for x in self.samples if x.spec_replicas == self.scenario.max_replicas]
        if reached:
            lines.append(f"  max replicas written at {reached[0]:.1f} s")
        if downs and "load falls" in self.marks:
            lines.append(
                f"  first scale-down {downs[0][0] - self.marks['load falls']:.1f} s after the "
                f"load fell (window {self.scenario.stabilization_seconds} s)"
            )
        if "load stops" in self.marks and "settled back at min" in self.marks:
            lines.append(
                f"  back at min and settled "
                f"{self.marks['settled back at min'] - self.marks['load stops']:.1f} s after "
                "the load stopped"
            )
        lines.append(
            "scale-ups: "
            + ", ".join(f"{t:.1f} s {a}->{b}" for t, a, b in ups)
            + "; scale-downs: "
            + ", ".join(f"{t:.1f} s {a}->{b}" for t, a, b in downs)
        )
        lines.append(f"spec.replicas written by {self.replicas_writer}")
        lines.append(
            f"studies sent: {len(self.outcome.studies)}, instances acknowledged: "
            f"{len(self.outcome.acknowledged)}, split studies: {len(self.split_studies())}, "
            f"failed: {len(self.outcome.failed)}, unanswered: {len(self.outcome.unanswered)}, "
            f"lost: {len(self.lost_instances())}, retries: {self.outcome.retries}"
        )
        lines.append(
            f"handovers: {self.handovers.get('completed', 0)} completed, "
            f"{self.handovers.get('forced', 0)} forced"
        )
        lines += [f"  {message}" for message in self.forced]
        return "\n".join(lines)


def _ready(pod: dict[str, Any]) -> bool:
    if pod["metadata"].get("deletionTimestamp"):
        return False
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def hpa_total(hpa: dict[str, Any]) -> float:
    """Studies in flight over the pool as the HPA last read them: its average times its pods."""
    status = hpa.get("status") or {}
    for metric in status.get("currentMetrics") or []:
        if metric.get("type") == "Pods" and metric["pods"]["metric"]["name"] == IN_FLIGHT:
            average = float(quantity.parse(metric["pods"]["current"]["averageValue"])[0])
            return average * int(status.get("currentReplicas") or 0)
    return 0.0


def _stabilized(hpa: dict[str, Any]) -> bool:
    conditions = (hpa.get("status") or {}).get("conditions") or []
    return any(
        c["type"] == "AbleToScale" and c.get("reason") == "ScaleDownStabilized" for c in conditions
    )


class Watch:
    """The pool, its HPA and its pods as watches keep them, and every spec.replicas change."""

    def __init__(self, cluster: Cluster, namespace: str) -> None:
        api = cluster.api()
        self.namespace = namespace
        self.changes: list[tuple[float, int, int]] = []
        self._last: int | None = None
        self.pools = Informer(
            api,
            f"/apis/{API_GROUP}/{API_VERSION}/namespaces/{namespace}/{PLURAL}",
            on_change=self._pool_changed,
        )
        self.hpas = Informer(
            api, f"/apis/autoscaling/v2/namespaces/{namespace}/horizontalpodautoscalers"
        )
        self.pods = Informer(api, f"/api/v1/namespaces/{namespace}/pods")
        self._all = (self.pools, self.hpas, self.pods)

    def _pool_changed(self, kind: str, pool: dict[str, Any]) -> None:
        if kind == "DELETED" or pool["metadata"]["name"] != POOL:
            return
        replicas = int((pool.get("spec") or {}).get("replicas") or 0)
        if self._last is not None and replicas != self._last:
            self.changes.append((time.monotonic(), self._last, replicas))
        self._last = replicas

    def start(self) -> None:
        for informer in self._all:
            informer.start()
        for informer in self._all:
            informer.wait_synced()

    def stop(self) -> None:
        for informer in self._all:
            informer.stop()

    def pool(self) -> dict[str, Any]:
        return self.pools.get(self.namespace, POOL) or {}

    def hpa(self) -> dict[str, Any]:
        return self.hpas.get(self.namespace, POOL) or {}

    def spec_replicas(self) -> int:
        return int((self.pool().get("spec") or {}).get("replicas") or 0)

    def ready_gateways(self) -> int:
        prefix = f"{POOL}-gw-"
        return sum(
            1 for p in self.pods.items() if p["metadata"]["name"].startswith(prefix) and _ready(p)
        )


class Sampler:
    """Records :class:`Sample` every `interval` seconds in a thread, from the watches' caches."""

    def __init__(self, watch: Watch, load: Load, *, interval: float) -> None:
        self.samples: list[Sample] = []
        self.started = time.monotonic()
        self._watch, self._load = watch, load
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)

    def start(self) -> None:
        self.started = time.monotonic()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            pool, hpa = self._watch.pool(), self._watch.hpa()
            self.samples.append(
                Sample(
                    time=time.monotonic() - self.started,
                    senders=self._load.senders,
                    in_flight=hpa_total(hpa),
                    spec_replicas=int((pool.get("spec") or {}).get("replicas") or 0),
                    status_replicas=int((pool.get("status") or {}).get("replicas") or 0),
                    ready=self._watch.ready_gateways(),
                    stabilized=_stabilized(hpa),
                )
            )


def _scaling_active(watch: Watch) -> bool:
    conditions = (watch.hpa().get("status") or {}).get("conditions") or []
    return any(
        c["type"] == "ScalingActive" and c["status"] == "True" and c["reason"] == "ValidMetricFound"
        for c in conditions
    )


class _Phases:
    """Drives the load through its phases, each lasting a number of HPA sync periods."""

    def __init__(
        self, pool: RealPool, watch: Watch, s: Scenario, load: Load, sampler: Sampler
    ) -> None:
        self.pool = pool
        self.watch = watch
        self.s = s
        self.load = load
        self.sampler = sampler
        self.phases: list[tuple[float, int]] = []
        self.marks: dict[str, float] = {}
        self._stopped = threading.Event()  # never set: the holds run their length

    def run(self) -> Outcome:
        s = self.s
        try:
            for step, count in enumerate(s.ramp):
                self.senders(count)
                if step < len(s.ramp) - 1:
                    self.hold(s.hold_syncs)
            wait_until(
                lambda: self.watch.spec_replicas() == s.max_replicas,
                timeout=30 * s.sync_period + 30,
                what="the HPA scaling to max",
            )
            # The peak: the new gateways get their buckets as the load goes on.
            self.hold(s.peak_syncs)
            self.mark("load falls")
            for count in reversed(s.ramp[:-1]):
                self.senders(count)
                if count != s.ramp[0]:
                    self.hold(s.hold_syncs - 1)
            wait_until(
                lambda: self.watch.spec_replicas() < s.max_replicas,
                timeout=s.stabilization_seconds + 30 * s.sync_period + 30,
                what="the HPA's first scale-down",
            )
            self.hold(s.calm_syncs)
            self.senders(0)
            self.mark("load stops")
            wait_until(
                lambda: (
                    self.watch.spec_replicas() == s.min_replicas
                    and self.pool.settled(s.min_replicas, s.routers)
                ),
                timeout=s.stabilization_seconds
                + (s.max_replicas - s.min_replicas) * (s.period_seconds + s.sync_period)
                + s.max_drain_seconds
                + 90,
                what="the pool back at min and settled",
                interval=0.5,  # reads the pool from the API server
            )
            self.mark("settled back at min")
        finally:
            outcome = self.load.finish()
        return outcome

    def senders(self, count: int) -> None:
        self.load.set_senders(count)
        self.phases.append((time.monotonic() - self.sampler.started, count))

    def mark(self, name: str) -> None:
        self.marks[name] = time.monotonic() - self.sampler.started

    def hold(self, syncs: int) -> None:
        """Let the load go on as it is for `syncs` HPA sync periods (the load's shape)."""
        self._stopped.wait(syncs * self.s.sync_period)


@contextmanager
def _running(*parts: Any) -> Iterator[None]:
    """Start parts in order, stop them in reverse, whatever happens."""
    with ExitStack() as stack:
        for part in parts:
            part.start()
            stack.callback(part.stop)
        yield


def _timeline(watch: Watch, started: float, phases: _Phases) -> str:
    """Where a run stood: its phases, the HPA's writes, the pool's and the HPA's status."""
    status = {k: v for k, v in (watch.pool().get("status") or {}).items() if k != "bucketCounts"}
    hpa = watch.hpa().get("status") or {}
    return "\n".join(
        [
            f"phases: {[(round(t, 1), n) for t, n in phases.phases]}, marks: {phases.marks}",
            f"spec.replicas: {[(round(t - started, 1), a, b) for t, a, b in watch.changes]}",
            f"pool status: {status}",
            f"HPA status: {hpa}",
        ]
    )


def _replicas_writer(pool: dict[str, Any]) -> tuple[str, str]:
    """The field manager of spec.replicas, and the subresource it wrote through."""
    for entry in pool["metadata"].get("managedFields") or []:
        if "f:replicas" in ((entry.get("fieldsV1") or {}).get("f:spec") or {}):
            return str(entry.get("manager")), str(entry.get("subresource") or "")
    return "", ""


def run(cluster: Cluster, namespace: str, work: Path, scenario: Scenario) -> Result:
    """Run `scenario` in `namespace` of `cluster`, which serves ``custom.metrics.k8s.io``.

    The chart is installed into `namespace` for the run; files go under `work`.
    """
    s = scenario

    def make_study(index: int) -> Study:
        return generate_study(
            work / "data",
            study_index=index,
            instances=s.instances,
            rows=16,
            columns=16,
            seed=s.seed,
        )

    watch = Watch(cluster, namespace)
    errors_before = len(cluster.kubelet.errors)
    with operated_pool(cluster, namespace, s.spec(), name=POOL) as pool, _running(watch):
        pool.wait_settled(s.min_replicas, s.routers, timeout=120)
        # The whole chain is up before the load starts: routers scraped, the
        # adapter serving their series, the HPA reading them.
        try:
            wait_until(
                lambda: _scaling_active(watch),
                timeout=60,
                what=f"the HPA reading {IN_FLIGHT} (ScalingActive: ValidMetricFound)",
            )
        except TimeoutError as exc:
            conditions = (watch.hpa().get("status") or {}).get("conditions")
            raise TimeoutError(
                f"{exc}\nHPA conditions: {conditions}\n{custommetrics.diagnosis(cluster)}"
            ) from None
        load = Load([pool.router_service()], make_study, seed=s.seed, chunk=s.chunk)
        sampler = Sampler(watch, load, interval=0.1)
        phases = _Phases(pool, watch, s, load, sampler)
        with _running(sampler):
            try:
                outcome = phases.run()
            except TimeoutError as exc:
                raise TimeoutError(f"{exc}\n{_timeline(watch, sampler.started, phases)}") from None
        held: dict[str, set[str]] = defaultdict(set)
        holders: dict[str, str] = {}
        for gateway, instances in pool.stored().items():
            for sop, study in instances.items():
                held[study].add(gateway)
                holders[sop] = gateway
        final = pool.get()
        status = dict(final.get("status") or {})
        hpa_events = [
            (str(e.reason), str(e.message))
            for e in pool.core.list_namespaced_event(
                namespace, field_selector="involvedObject.kind=HorizontalPodAutoscaler"
            ).items
        ]
        hpa = watch.hpa()
        forced = [
            f"{e.last_timestamp or e.event_time}: {e.message}"
            for e in pool.core.list_namespaced_event(
                namespace, field_selector="reason=HandoverForced"
            ).items
        ]
    return Result(
        scenario=s,
        started=sampler.started,
        samples=sampler.samples,
        changes=watch.changes,
        phases=phases.phases,
        outcome=outcome,
        held=held,
        holders=holders,
        hpa=hpa,
        hpa_events=hpa_events,
        replicas_writer=_replicas_writer(final),
        handovers=dict(status.get("handovers") or {}),
        forced=forced,
        conditions=list(status.get("conditions") or []),
        errors=[e for e in cluster.kubelet.errors[errors_before:] if e.startswith(f"{POOL}-")],
        marks=phases.marks,
    )
