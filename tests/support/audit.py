"""The API server's audit log, read as the requests of one identity.

The session cluster (:mod:`support.realcluster`) logs every request a service
account outside ``kube-system`` makes, at Metadata level: who, which verb on
which resource and object, the response code and RBAC's decision (and a
delete's options). Tests read
it to see what the operator and the routers really asked of the server, and
whether it was allowed: the server's own record, not a client's.

The log is one JSON object a line, appended while the tests run; a reader
remembers an offset (:meth:`AuditLog.mark`) and reads only what came after,
and never a line still being written.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: The verbs that change something (what a quiet operator does not send).
WRITE_VERBS = frozenset({"create", "update", "patch", "delete", "deletecollection"})
DECISION = "authorization.k8s.io/decision"


def service_account(namespace: str, name: str) -> str:
    """The user name a service account's token authenticates as."""
    return f"system:serviceaccount:{namespace}:{name}"


@dataclass(frozen=True)
class Request:
    """One audited request (its ResponseComplete or, for a watch, ResponseStarted event)."""

    user: str
    verb: str
    group: str
    resource: str
    subresource: str
    namespace: str
    name: str
    code: int
    decision: str
    uri: str
    #: The request's body, where the policy keeps it (a delete's DeleteOptions).
    body: dict[str, Any]

    @property
    def full_resource(self) -> str:
        """``resource`` or ``resource/subresource``, as RBAC rules name it."""
        return f"{self.resource}/{self.subresource}" if self.subresource else self.resource

    @property
    def denied(self) -> bool:
        return self.decision == "forbid" or self.code == 403


def _request(event: dict[str, Any]) -> Request:
    ref = event.get("objectRef") or {}
    return Request(
        user=str((event.get("user") or {}).get("username", "")),
        verb=str(event.get("verb", "")),
        group=str(ref.get("apiGroup", "")),
        resource=str(ref.get("resource", "")),
        subresource=str(ref.get("subresource", "")),
        namespace=str(ref.get("namespace", "")),
        name=str(ref.get("name", "")),
        code=int((event.get("responseStatus") or {}).get("code", 0)),
        decision=str((event.get("annotations") or {}).get(DECISION, "")),
        uri=str(event.get("requestURI", "")),
        body=dict(event.get("requestObject") or {}),
    )


class AuditLog:
    """The audit log at `path` (JSON format)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def mark(self) -> int:
        """The current end of the log: pass it as ``since`` to read only what follows."""
        return self.path.stat().st_size if self.path.exists() else 0

    def requests(self, *, since: int = 0, user: str | None = None) -> list[Request]:
        """Each request logged after offset `since` (by `user`), once.

        A watch is logged when it starts (ResponseStarted) and again when it
        ends; a refused one only ends. Each request counts once, by its
        audit ID.
        """
        if not self.path.exists():
            return []
        with self.path.open("rb") as log:
            log.seek(since)
            data = log.read()
        # The last line may still be being written.
        complete = data[: data.rfind(b"\n") + 1]
        seen: set[str] = set()
        found: list[Request] = []
        for line in complete.splitlines():
            event = json.loads(line)
            if user is not None and (event.get("user") or {}).get("username") != user:
                continue
            audit_id = str(event.get("auditID"))
            if audit_id in seen:
                continue
            seen.add(audit_id)
            found.append(_request(event))
        return found

    def writes(self, *, since: int, user: str, namespace: str) -> list[Request]:
        """The writes `user` made in `namespace` after `since`."""
        return [
            r
            for r in self.requests(since=since, user=user)
            if r.verb in WRITE_VERBS and r.namespace == namespace
        ]
