"""An autoscaled pool through a load that rises and falls: the scenario, its timeline, its outcome.

Shared by the end-to-end test (which asserts on it) and the benchmark (which
plots it), so both run the same thing. Everything real but the cluster: the
API is the emulator, the operator and the routers are processes, the
kubelet harness starts a pynetdicom gateway per pod with a real cluster's
delays, and :class:`support.hpa_controller.HPAController` plays Kubernetes'
HPA controller on the HPA the operator renders, fed by the routers'
``/metrics``.

The load: one sender, then 2, 4 and 8 at once, held a while once the HPA
has scaled the pool to its maximum, then 4, 2 and 1, held until the HPA
has begun to scale down and a while longer (gateways leave under load),
then none until the pool is back at its minimum and settled. Phases are
counted in HPA syncs and ended by what the pool does, not by wall-clock
sleeps, so a slow machine stretches the run instead of failing it. A
sampler records, every 0.1 s, senders, studies in flight (summed over
routers and gateways, as the HPA last read them), the pool's spec and
status replicas and the gateways Ready.
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

from gatewaypool_local.peers import wait_until
from gatewaypool_local.routerproc import RouterProcess
from gatewaypool_local.synth import Study, generate_study
from support.cluster import NS
from support.hpa_controller import HPAController, RouterMetricsAdapter, Sync
from support.kubeemu import KubeEmulator
from support.kubelet import GatewayKubelet
from support.load import Load
from support.pool import POOL, operated, pool_spec, pool_status, settled
from support.pool import router as make_router
from support.traffic import Outcome

IN_FLIGHT = "gatewaypool_router_studies_in_flight"


@dataclass(frozen=True)
class Scenario:
    """The pool, the load and the timing of one run."""

    min_replicas: int = 1
    max_replicas: int = 4
    studies_in_flight: int = 3  # the HPA's target per gateway
    #: Few buckets make handovers quick; too few make each a busy one, whose
    #: studies follow one another so closely that it is not quiet for
    #: quietSeconds within maxDrainSeconds: its move is then forced, and may
    #: split a study.
    buckets: int = 256
    quiet_seconds: int = 2
    #: Under 8 senders a study takes seconds on a 2-core machine: 10 s (the
    #: least allowed) leaves a busy bucket too little time to fall quiet.
    max_drain_seconds: int = 15
    period_seconds: int = 3  # scaleDown.periodSeconds
    sync_period: float = 1.0  # Kubernetes: 15 s, compressed here
    routers: int = 2
    instances: int = 30  # per study
    chunk: int = 10  # instances per association
    ramp: tuple[int, ...] = (1, 2, 4, 8)
    #: HPA syncs each step of the ramp is held.
    hold_syncs: int = 3
    #: HPA syncs the most senders send once the pool is at max.
    peak_syncs: int = 12
    #: HPA syncs the lowest load goes on once the HPA has begun to scale down,
    #: so that gateways leave while studies still come in.
    calm_syncs: int = 8
    seed: int = 0

    @property
    def stabilization_seconds(self) -> int:
        """scaleDown.stabilizationSeconds: the shortest allowed, maxDrainSeconds."""
        return self.max_drain_seconds

    def spec(self) -> dict[str, Any]:
        """The pool's spec: the harness's gateways, few buckets, autoscaled on studies."""
        return {
            **pool_spec(
                replicas=self.min_replicas,
                quiet_seconds=self.quiet_seconds,
                max_drain_seconds=self.max_drain_seconds,
            ),
            "buckets": self.buckets,
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
    in_flight: float  # studies in flight, summed over routers and gateways
    spec_replicas: int
    status_replicas: int
    ready: int  # gateway pods Ready


@dataclass
class Result:
    """What a run did.

    Its repr leaves out the timeline and the outcome: long, and the outcome
    holds UIDs, which stay out of test reports.
    """

    scenario: Scenario
    started: float  # monotonic time the load started; sample and phase times count from it
    samples: list[Sample] = field(repr=False)
    syncs: list[Sync] = field(repr=False)
    phases: list[tuple[float, int]]  # (time, senders)
    outcome: Outcome = field(repr=False)
    held: dict[str, set[int]] = field(repr=False)  # study -> gateway ordinals holding some of it
    holders: dict[str, int] = field(repr=False)  # SOP instance -> gateway ordinal
    hpa: dict[str, Any] = field(repr=False)
    handovers: dict[str, int]  # the pool's status.handovers at the end: completed, forced
    conditions: list[dict[str, Any]]  # the pool's status.conditions at the end
    errors: list[str] = field(default_factory=list)
    #: Times (since the load started) of the milestones the run waited for.
    marks: dict[str, float] = field(default_factory=dict)

    def at(self, monotonic: float) -> float:
        return monotonic - self.started

    def scale_events(self) -> list[tuple[float, int, int]]:
        """(time, from, to) of every spec.replicas change the HPA controller wrote."""
        return [
            (self.at(s.time), s.current, s.decision.replicas)
            for s in self.syncs
            if s.wrote and s.time >= self.started
        ]

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
            f"HPA sync every {self.scenario.sync_period:g} s (Kubernetes: 15 s)",
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
        return "\n".join(lines)


class Sampler:
    """Records :class:`Sample` every `interval` seconds in a thread.

    The pool is read from the emulator in process (cheap, so the replicas
    are sampled far more often than the HPA syncs); studies in flight are
    the total of the HPA's last scrape of the routers, not a scrape of our
    own, which would double the load on the routers' ``/metrics``.
    """

    def __init__(
        self,
        kube: KubeEmulator,
        kubelet: GatewayKubelet,
        adapter: RouterMetricsAdapter,
        load: Load,
        *,
        interval: float,
    ) -> None:
        self.samples: list[Sample] = []
        self.started = time.monotonic()
        self._kube, self._kubelet, self._adapter, self._load = kube, kubelet, adapter, load
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
            pool = self._kube.get("GatewayPool", POOL, NS) or {}
            self.samples.append(
                Sample(
                    time=time.monotonic() - self.started,
                    senders=self._load.senders,
                    in_flight=self._adapter.last_total,
                    spec_replicas=int((pool.get("spec") or {}).get("replicas") or 0),
                    status_replicas=int((pool.get("status") or {}).get("replicas") or 0),
                    ready=len(self._kubelet.ready_ordinals()),
                )
            )


@contextmanager
def _running(*parts: Any) -> Iterator[None]:
    """Start parts in order, stop them in reverse, whatever happens."""
    with ExitStack() as stack:
        for part in parts:
            part.start()
            stack.callback(part.stop)
        yield


@dataclass
class _Pool:
    """The pool at its minimum with its routers, the operator and the kubelet running."""

    kube: KubeEmulator
    kubelet: GatewayKubelet
    routers: list[RouterProcess]
    hpa: dict[str, Any]


@contextmanager
def _pool(kube: KubeEmulator, work: Path, s: Scenario) -> Iterator[_Pool]:
    with (
        operated(kube, work, spec=s.spec(), max_gateways=s.max_replicas, resync=1) as pool,
        ExitStack() as stack,
    ):
        routers = [
            make_router(
                kube,
                pool.kubelet,
                work,
                f"{POOL}-router-{i}",
                extra_args=["--study-quiet-seconds", str(s.quiet_seconds)],
            )
            for i in range(s.routers)
        ]
        for router in routers:
            stack.callback(router.stop)
        # Together, while the first gateway starts: each is ready once it has a map.
        _start_together(routers, timeout=90)
        wait_until(
            lambda: settled(kube, pool.kubelet, s.min_replicas), timeout=60, what="pool at min"
        )
        wait_until(
            lambda: kube.get("HorizontalPodAutoscaler", POOL, NS) is not None,
            timeout=30,
            what="the operator's HPA",
        )
        yield _Pool(
            kube, pool.kubelet, routers, kube.get("HorizontalPodAutoscaler", POOL, NS) or {}
        )


def _start_together(routers: list[RouterProcess], *, timeout: float) -> None:
    """Start every router at once and wait until each is ready; raise what any raised."""
    failures: list[BaseException] = []

    def start(router: RouterProcess) -> None:
        try:
            router.start(timeout=timeout)
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=start, args=(r,), name="start-router") for r in routers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise failures[0]


class _Phases:
    """Drives the load through its phases, counting time in HPA syncs."""

    def __init__(
        self,
        pool: _Pool,
        s: Scenario,
        controller: HPAController,
        load: Load,
        sampler: Sampler,
    ) -> None:
        self.pool = pool
        self.s = s
        self.controller = controller
        self.load = load
        self.sampler = sampler
        self.phases: list[tuple[float, int]] = []
        self.marks: dict[str, float] = {}

    def run(self) -> Outcome:
        s = self.s
        try:
            for step, count in enumerate(s.ramp):
                self.senders(count)
                if step < len(s.ramp) - 1:
                    self.hold(s.hold_syncs, f"{count} senders")
            wait_until(
                lambda: self.spec_replicas() == s.max_replicas,
                timeout=30 * s.sync_period + 30,
                what="the HPA scaling to max",
            )
            # The peak: the new gateways get their buckets as the load goes on.
            self.hold(s.peak_syncs, "the peak")
            self.mark("load falls")
            for count in reversed(s.ramp[:-1]):
                self.senders(count)
                if count != s.ramp[0]:
                    self.hold(s.hold_syncs - 1, f"{count} senders")
            wait_until(
                lambda: self.spec_replicas() < s.max_replicas,
                timeout=s.stabilization_seconds + 30 * s.sync_period + 30,
                what="the HPA's first scale-down",
            )
            self.hold(s.calm_syncs, f"{s.ramp[0]} sender while gateways leave")
            self.senders(0)
            self.mark("load stops")
            kube, kubelet = self.pool.kube, self.pool.kubelet
            wait_until(
                lambda: (
                    self.spec_replicas() == s.min_replicas
                    and settled(kube, kubelet, s.min_replicas)
                ),
                timeout=s.stabilization_seconds
                + (s.max_replicas - s.min_replicas) * (s.period_seconds + s.sync_period)
                + s.max_drain_seconds
                + 60,
                what="the pool back at min and settled",
            )
            self.mark("settled back at min")
        finally:
            outcome = self.load.finish()
        wait_until(
            lambda: all(_in_flight(r) == 0 for r in self.pool.routers),
            timeout=s.quiet_seconds * 5 + 10,
            what="nothing in flight",
        )
        self.hold(s.hold_syncs, "idle")
        return outcome

    def senders(self, count: int) -> None:
        self.load.set_senders(count)
        self.phases.append((time.monotonic() - self.sampler.started, count))

    def mark(self, name: str) -> None:
        self.marks[name] = time.monotonic() - self.sampler.started

    def hold(self, syncs: int, what: str) -> None:
        target = len(self.controller.syncs) + syncs
        wait_until(
            lambda: len(self.controller.syncs) >= target,
            timeout=syncs * self.s.sync_period * 5 + 10,
            what=what,
        )

    def spec_replicas(self) -> int:
        pool = self.pool.kube.get("GatewayPool", POOL, NS) or {}
        return int((pool.get("spec") or {}).get("replicas") or 0)


def run(kube: KubeEmulator, work: Path, scenario: Scenario) -> Result:
    """Run `scenario` on `kube` (CRD applied, namespace made) with files under `work`."""
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

    with _pool(kube, work, s) as pool:
        adapter = RouterMetricsAdapter(lambda: pool.routers)
        controller = HPAController(
            kube, namespace=NS, name=POOL, metrics=adapter.pods_metric, sync_period=s.sync_period
        )
        load = Load(pool.routers, make_study, seed=s.seed, chunk=s.chunk)
        sampler = Sampler(kube, pool.kubelet, adapter, load, interval=0.1)
        phases = _Phases(pool, s, controller, load, sampler)
        with _running(controller, sampler):
            outcome = phases.run()
        held: dict[str, set[int]] = defaultdict(set)
        holders: dict[str, int] = {}
        for ordinal, sink in pool.kubelet.gateways.items():
            for item in sink.received():
                held[item.study_uid].add(ordinal)
                holders[item.sop_instance_uid] = ordinal
        status = pool_status(kube, pool.kubelet)
    return Result(
        scenario=s,
        started=sampler.started,
        samples=sampler.samples,
        syncs=controller.syncs,
        phases=phases.phases,
        outcome=outcome,
        held=held,
        holders=holders,
        hpa=pool.hpa,
        handovers=dict(status.get("handovers") or {}),
        conditions=list(status.get("conditions") or []),
        errors=[*pool.kubelet.errors, *controller.errors],
        marks=phases.marks,
    )


def _in_flight(router: RouterProcess) -> float:
    return sum(v for (name, _), v in router.metrics().items() if name == IN_FLIGHT)
