"""Every condition the operator sets on a pool, and every reason it gives, each with a name.

``kubectl wait --for=condition=Ready``, dashboards and alerts read these, so
each type and reason is a named member here, and the README's table of
conditions lists every reason (a unit test holds the two together). Which
reason a condition gets is decided in `gatewaypool_operator.poolstatus` and,
for ``RouterExposed``, in `gatewaypool_operator.exposure`.
"""

from __future__ import annotations

import enum

__all__ = ["ConditionReason", "ConditionType"]


class ConditionType(enum.StrEnum):
    """A condition's ``type`` in ``status.conditions``."""

    #: The pool routes studies.
    READY = "Ready"
    #: The pool is on its way to its spec.
    PROGRESSING = "Progressing"
    #: The pool needs a person.
    DEGRADED = "Degraded"
    #: The router is a LoadBalancer that admits any source (present only while True).
    ROUTER_EXPOSED = "RouterExposed"
    #: The routers' spools need a person (present only with ``spec.router.spool``).
    SPOOL_BACKLOG = "SpoolBacklog"


class ConditionReason(enum.StrEnum):
    """The ``reason`` of every condition the operator sets."""

    # Ready
    #: True: every gateway the spec wants is ready and a router applied the map.
    ALL_GATEWAYS_READY = "AllGatewaysReady"
    #: False: ``spec.replicas`` is 0.
    SCALED_TO_ZERO = "ScaledToZero"
    #: False: no bucket map is published yet.
    MAP_NOT_PUBLISHED = "MapNotPublished"
    #: False: fewer gateways ready than the spec wants.
    GATEWAYS_NOT_READY = "GatewaysNotReady"
    #: False: no router applied the current bucket map.
    ROUTERS_NOT_READY = "RoutersNotReady"
    # Progressing
    #: True: gateways scaling or starting, or the map not yet listing them.
    SCALING_GATEWAYS = "ScalingGateways"
    #: True: buckets are moving.
    HANDING_OVER_BUCKETS = "HandingOverBuckets"
    #: True: routers are not all on the current map yet.
    ROUTERS_UPDATING = "RoutersUpdating"
    #: False: gateways and routers as the spec says.
    UP_TO_DATE = "UpToDate"
    # Degraded
    #: True (and Ready, Progressing False before any spec was accepted): the spec was refused.
    SPEC_REJECTED = "SpecRejected"
    #: True: the API server refused to write a child.
    APPLY_REFUSED = "ApplyRefused"
    #: True: gateways ready before, or never ready within the progress deadline, are not.
    GATEWAYS_UNAVAILABLE = "GatewaysUnavailable"
    #: True: the pool's HorizontalPodAutoscaler says it cannot scale.
    AUTOSCALER_NOT_SCALING = "AutoscalerNotScaling"
    #: False: nothing needs attention.
    AS_EXPECTED = "AsExpected"
    # RouterExposed
    #: True: a LoadBalancer with neither source ranges nor a NetworkPolicy restriction.
    ANY_SOURCE_ADMITTED = "AnySourceAdmitted"
    #: Not exposed, so no condition: source ranges or ``routerFrom`` restrict the callers.
    SOURCES_RESTRICTED = "SourcesRestricted"
    #: Not exposed, so no condition: the router Service is ClusterIP or NodePort.
    NOT_A_LOAD_BALANCER = "NotALoadBalancer"
    # SpoolBacklog (see gatewaypool_operator.spoolstatus)
    #: True: a spooled instance waited longer than ``spec.router.spool.retentionSeconds``.
    RETENTION_EXCEEDED = "RetentionExceeded"
    #: True: a router's spool is nearly full (then it answers 0xA700).
    SPOOL_FILLING = "SpoolFilling"
    #: True: gateways refused spooled instances for good; they are kept aside.
    INSTANCES_REFUSED = "InstancesRefused"
    #: False: instances wait in the spools, within the limits.
    SPOOL_DRAINING = "SpoolDraining"
    #: False: no instance waits.
    SPOOL_EMPTY = "SpoolEmpty"
