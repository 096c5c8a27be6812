r"""What one pass of the control loop reads, decides and did, as plain data.

`Observed` is what :func:`gatewaypool_operator.observe.observe` reads;
`Plan` (with its `Write`\ s, `Prune` and `StatusBasis`) is what the pure
:func:`gatewaypool_operator.plan.plan` decides; `ApplyResult` is what
:func:`gatewaypool_operator.apply.apply` did; `Outcome` is what the pass
hands the runner. Kept apart from the decisions so that both stay short.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from gatewaypool.bucketmap import BucketMap
from gatewaypool_operator import poolstatus
from gatewaypool_operator.events import Event
from gatewaypool_operator.handover.decide import HandoverPlan
from gatewaypool_operator.kubeapply import Applied
from gatewaypool_operator.spec.types import PoolSpec

#: A child named by kind and name.
Child = tuple[str, str]


@dataclass(frozen=True, slots=True)
class Observed:
    """Everything one pass decides from, each object read once at its start.

    Attributes
    ----------
    pool
        The GatewayPool as read under its lock (metadata, spec, status).
    map_configmap
        The ``NAME-map`` ConfigMap; None if it does not exist.
    statefulset
        The gateway StatefulSet; None if it does not exist. Both its spec
        (the replicas the handover starts from, the version its write is
        conditional on) and its status (the pool's counts) are read off it.
    gateway_pods, router_pods
        The pods carrying the pool's gateway / router selector labels.
    reports_configmap
        The ``NAME-routers`` ConfigMap the routers report into; None if absent.
    router_claims
        The PersistentVolumeClaims carrying the router selector labels: the
        spool claims the router StatefulSet made (it gives them its selector's
        labels), kept after their routers are gone.
    optional_children
        The children a spec may leave out
        (`gatewaypool_operator.children.desired.optional_children`) that
        exist, by (kind, name): deleted when the spec leaves them out and
        this pool owns them. The HorizontalPodAutoscaler's status, which
        the pool's status repeats, is read off the same object.
    """

    pool: Mapping[str, Any]
    map_configmap: Mapping[str, Any] | None = None
    statefulset: Mapping[str, Any] | None = None
    gateway_pods: Sequence[Mapping[str, Any]] = ()
    router_pods: Sequence[Mapping[str, Any]] = ()
    reports_configmap: Mapping[str, Any] | None = None
    optional_children: Mapping[Child, Mapping[str, Any]] = field(default_factory=dict)
    router_claims: Sequence[Mapping[str, Any]] = ()

    @property
    def reports(self) -> Mapping[str, str]:
        """The routers' reports: pod name → report text."""
        data: Mapping[str, str] = (self.reports_configmap or {}).get("data") or {}
        return data


@dataclass(frozen=True, slots=True)
class Write:
    """One object to apply, with :meth:`~gatewaypool_operator.kubeapply.Cluster.apply`'s options.

    Attributes
    ----------
    obj
        The whole object as the operator wants it, owner reference included.
    conditional
        Write only over `base`, the object as the pass read it (None: its
        absence): a pass decided from an older map cannot publish over a
        newer one, nor shrink the StatefulSet back. Otherwise the applier
        reads the object itself and writes whatever it finds.
    exclusive, create_only
        As for ``Cluster.apply``.
    """

    obj: dict[str, Any]
    conditional: bool = False
    base: Mapping[str, Any] | None = None
    exclusive: bool = False
    create_only: bool = False


@dataclass(frozen=True, slots=True)
class Prune:
    """Keys to delete from a ConfigMap others write into (reports of router pods gone)."""

    configmap: str
    keys: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class StatusBasis:
    """What the pool's status is computed from, but for the API server's refusals.

    The status is decided before the writes, except its ``Degraded``
    condition when a write is refused; `status` computes it either way from
    the same observations, so that the applier need not observe again.
    """

    name: str
    spec: PoolSpec | None
    generation: int
    statefulset_status: Mapping[str, Any] | None
    bucket_map: BucketMap | None
    router_reports: Mapping[str, str]
    live_router_pods: tuple[str, ...]
    spec_error: str | None
    previous_conditions: Sequence[Mapping[str, Any]]
    now: datetime
    handover: poolstatus.HandoverSummary | None = None
    autoscaler_status: Mapping[str, Any] | None = None
    #: Spool claims no live router mounts (see `Observed.router_claims`).
    idle_spool_claims: tuple[str, ...] = ()
    #: The map's gateways published as not Ready (``readiness.json``).
    gateways_not_ready: tuple[str, ...] = ()

    def status(self, *, apply_error: str | None = None) -> dict[str, Any]:
        """The whole ``status`` block, with `apply_error` when a write was refused."""
        return poolstatus.compute_status(
            name=self.name,
            spec=self.spec,
            generation=self.generation,
            statefulset_status=self.statefulset_status,
            bucket_map=self.bucket_map,
            router_reports=self.router_reports,
            live_router_pods=self.live_router_pods,
            spec_error=self.spec_error,
            apply_error=apply_error,
            previous_conditions=self.previous_conditions,
            now=self.now,
            handover=self.handover,
            autoscaler_status=self.autoscaler_status,
            idle_spool_claims=self.idle_spool_claims,
            gateways_not_ready=self.gateways_not_ready,
        )


@dataclass(frozen=True, slots=True)
class Plan:
    """What a pass does, in the order the applier does it.

    Attributes
    ----------
    namespace
        The pool's namespace, where every write goes.
    writes
        Objects to apply, in order (what an object refers to comes first).
    prune
        Report keys to delete after the writes; None when none.
    deletes
        Optional children the spec left out that this pool owns.
    events
        Events decided before any write; `finish` adds those about the writes.
    accepted_spec
        The spec to record in the accepted-spec annotation; None when the
        annotation already holds it or the spec was refused.
    handover
        The handover's decision; None when the spec was refused.
    refused
        Children not written because the API server would refuse them (a
        list-map key twice), each as ``"KIND NAME: why"``; `finish` reports
        them as the server's own refusals are.
    status_basis
        What the status is computed from (see `StatusBasis`).
    map_name
        The ``NAME-map`` ConfigMap, whose new versions have Events of their own.
    map_existed
        Whether the map's ConfigMap existed: a child created in a pool
        that already had one was deleted by someone, and is re-created.
    replacing
        The router Deployment or StatefulSet the spec no longer asks for
        waits for the other kind to be Ready before it is deleted.
    owners_not_ready
        With ``spec.router.spool``: the gateways the published readiness
        marks not Ready that own buckets. Routers spool their instances
        until a pass sees them Ready again, so the pool is passed again soon.
    """

    namespace: str
    status_basis: StatusBasis
    map_name: str
    map_existed: bool
    writes: tuple[Write, ...] = ()
    prune: Prune | None = None
    deletes: tuple[Child, ...] = ()
    events: tuple[Event, ...] = ()
    accepted_spec: str | None = None
    handover: HandoverPlan | None = None
    refused: tuple[str, ...] = ()
    replacing: bool = False
    owners_not_ready: tuple[str, ...] = ()

    @property
    def status(self) -> dict[str, Any]:
        """The status to write if the API server accepts every write."""
        return self.status_basis.status()


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """What the writes did: each object's `Applied`, and the writes the API server refused.

    A refused write does not stop the others; ``refused`` holds each
    refusal's text (``"StatefulSet NAME-gw: <the server's message>"``).
    """

    applied: tuple[Applied, ...] = ()
    refused: tuple[str, ...] = ()


@dataclass(slots=True)
class Outcome:
    """What a pass decided: the status to write, events, the accepted spec."""

    status: dict[str, Any]
    events: list[Event] = field(default_factory=list)
    #: The spec to record in the accepted-spec annotation; None when the
    #: annotation already holds it (or the spec was refused).
    accepted_spec: str | None = None
    applied: list[Applied] = field(default_factory=list)
    #: The handover's decision; None when the spec was refused.
    plan: HandoverPlan | None = None
    #: The old router kind waits for the new one to be Ready (see `Plan.replacing`).
    replacing: bool = False
    #: Gateways marked not Ready that own buckets, with a spool (see `Plan.owners_not_ready`).
    owners_not_ready: tuple[str, ...] = ()

    @property
    def pending(self) -> bool:
        """Whether the pool is mid-change: moves, gateways not as wanted, a spooled owner not Ready.

        The resync then passes again within seconds, not at its usual interval:
        a handover advances only on passes, and so does a router replacement.
        """
        if any(item.action == "deleting" for item in self.applied):
            return True  # a re-creation waits for the old object to go
        if self.replacing:
            return True  # the old routers go on the first pass that sees the new ones Ready
        if self.owners_not_ready:
            return True  # spools hold their instances until a pass marks them Ready again
        plan = self.plan
        if plan is None:
            return False
        wanted = self.status.get("replicas") != plan.replicas
        return bool(plan.moving or plan.publish is not None or wanted or plan.events)


# --- the decision -------------------------------------------------------------------
