"""Every Kubernetes Event the operator posts about a pool, each reason with a name.

Users read these with ``kubectl describe gwp`` and alert on them, so each
reason is a named member of `Reason`, listed with its type in the README's
table of Events (a unit test holds the two together). A reason always has
the same type: Warning when a study may be split, a user's spec or write was
refused, or something stored could not be read; Normal otherwise.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["Event", "EventType", "Reason"]


class EventType(enum.StrEnum):
    """A core/v1 Event's ``type``."""

    NORMAL = "Normal"
    WARNING = "Warning"


class Reason(enum.StrEnum):
    """The ``reason`` of every Event the operator posts."""

    #: The first bucket map of a pool was published.
    BUCKET_MAP_PUBLISHED = "BucketMapPublished"
    #: Buckets were marked moving ``from → to``.
    HANDOVER_STARTED = "HandoverStarted"
    #: Moving buckets, quiet on every router, changed owner.
    HANDOVER_COMPLETED = "HandoverCompleted"
    #: Closing buckets were used again (a study began in them); they move later.
    HANDOVER_DEFERRED = "HandoverDeferred"
    #: Buckets changed owner without proof of quiet: a study may be split.
    HANDOVER_FORCED = "HandoverForced"
    #: A router pod went away: no bucket changes owner for quietSeconds.
    HANDOVER_PAUSED = "HandoverPaused"
    #: A router's reports stopped or are unusable; handovers stop waiting for it.
    ROUTER_EXCLUDED = "RouterExcluded"
    #: The spec cannot be honoured; the pool is left as it was.
    SPEC_REJECTED = "SpecRejected"
    #: The published bucket map cannot be read.
    MAP_UNREADABLE = "MapUnreadable"
    #: The handover state beside the map cannot be read (moves count as started now).
    HANDOVER_STATE_UNREADABLE = "HandoverStateUnreadable"
    #: The API server refused a child.
    APPLY_REFUSED = "ApplyRefused"
    #: A deleted child was created again, or one recreated for an immutable field.
    CHILD_RECREATED = "ChildRecreated"
    #: A child that drifted from what the operator wants was brought back in line.
    CHILD_UPDATED = "ChildUpdated"
    #: A child the spec no longer asks for was deleted.
    CHILD_DELETED = "ChildDeleted"
    #: The router is a LoadBalancer that admits any source.
    ROUTER_EXPOSED = "RouterExposed"
    #: The routers' spools need a person: an instance past its retention, a spool
    #: nearly full, or instances refused for good (the SpoolBacklog condition turned True).
    SPOOL_BACKLOG = "SpoolBacklog"

    @property
    def type(self) -> EventType:
        """The one type Events of this reason have."""
        return EventType.WARNING if self in _WARNINGS else EventType.NORMAL


_WARNINGS = frozenset(
    {
        Reason.HANDOVER_FORCED,
        Reason.ROUTER_EXCLUDED,
        Reason.SPEC_REJECTED,
        Reason.MAP_UNREADABLE,
        Reason.HANDOVER_STATE_UNREADABLE,
        Reason.APPLY_REFUSED,
        Reason.ROUTER_EXPOSED,
        Reason.SPOOL_BACKLOG,
    }
)


@dataclass(frozen=True, slots=True)
class Event:
    """A Kubernetes Event to post about the pool; its type follows from its reason."""

    reason: Reason
    message: str

    @property
    def type(self) -> EventType:
        return self.reason.type
