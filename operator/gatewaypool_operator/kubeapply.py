"""Apply desired objects through the Kubernetes API: create, repair drift.

Desired state is built as plain dicts by :mod:`gatewaypool_operator.children`;
this module is the only place that sends them. Every object is written with
server-side apply (field manager ``gatewaypool-operator``, forced), so the
API server ends up with exactly the desired fields: a field the spec no
longer has is removed, list items merge by their keys. Before writing,
:func:`gatewaypool_operator.drift.apply_change` decides whether the apply
would change anything; a steady pool costs reads and no writes.

Two writes are conditional (``base``): the bucket map and the StatefulSet
carry the ``resourceVersion`` of the object they were computed from, and a
``409`` raises :class:`ConflictError` so that the pass re-reads and recomputes;
a stale pass can never publish an older map or shrink the StatefulSet back.

Immutable fields (a StatefulSet's ``volumeClaimTemplates`` when
``spec.gateway.storage`` changes) cannot be applied: the object is deleted
with ``propagationPolicy: Orphan`` -- its pods and PersistentVolumeClaims
stay -- and applied again; the new StatefulSet adopts the pods (same
selector) and rolls them onto the new template. The delete names the old
object's uid as a precondition, so it never deletes a newer one. The API
server keeps the old object, with the ``orphan`` finalizer, until the
garbage collector has detached its dependents; an apply meanwhile would
patch the old object and be refused (422). So the new one is created only
once the old one is gone: the applier waits for that at most
:data:`GONE_WAIT_SECONDS` (the pool's other children wait behind it), and
otherwise reports the child as ``deleting``: a later pass, which sees the
object terminating, waits again and creates it.

The API server's answers: 429 (API Priority and Fairness throttles under
load) and 5xx are retried after :data:`RETRY_DELAYS`, or after the server's
``Retry-After`` when it says a longer one (at most
:data:`MAX_RETRY_AFTER_SECONDS`) -- the decision is :func:`retry_delay`. Any
other error, or one that lasts through the retries, of one child's write
raises :class:`RefusedError` with the server's message; the pass records it
and goes on with the other children.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from gatewaypool_operator.drift import MANAGER, apply_change, immutable_change

log = logging.getLogger(__name__)

APPLY_PATCH: Final = "application/apply-patch+yaml"

RETRY_DELAYS: Final = (0.2, 0.5, 1.0, 2.0)
"""Seconds before each retry of a request answered 429 or 5xx; then it fails."""
MAX_RETRY_AFTER_SECONDS: Final = 10.0
"""The longest ``Retry-After`` honoured: longer, the request fails and a later pass retries."""
GONE_WAIT_SECONDS: Final = 5.0
"""How long a re-creation waits for the old object to go (its dependents orphaned)."""

#: kind -> (API class name in kubernetes.client, method suffix)
_KINDS: dict[str, tuple[str, str]] = {
    "ConfigMap": ("CoreV1Api", "config_map"),
    "Service": ("CoreV1Api", "service"),
    "ServiceAccount": ("CoreV1Api", "service_account"),
    "Pod": ("CoreV1Api", "pod"),
    "PersistentVolumeClaim": ("CoreV1Api", "persistent_volume_claim"),
    "StatefulSet": ("AppsV1Api", "stateful_set"),
    "Deployment": ("AppsV1Api", "deployment"),
    "Role": ("RbacAuthorizationV1Api", "role"),
    "RoleBinding": ("RbacAuthorizationV1Api", "role_binding"),
    "NetworkPolicy": ("NetworkingV1Api", "network_policy"),
    "PodDisruptionBudget": ("PolicyV1Api", "pod_disruption_budget"),
    "HorizontalPodAutoscaler": ("AutoscalingV2Api", "horizontal_pod_autoscaler"),
}

#: The kinds a pool owns (the API server's garbage collector deletes them with it).
OWNED_KINDS: tuple[str, ...] = (
    "Deployment",
    "StatefulSet",
    "Service",
    "NetworkPolicy",
    "PodDisruptionBudget",
    "HorizontalPodAutoscaler",
    "RoleBinding",
    "Role",
    "ServiceAccount",
    "ConfigMap",
)


@dataclass(frozen=True, slots=True)
class Applied:
    """What applying one object did.

    ``created``, ``patched``, ``recreated``, ``unchanged``, ``deleted``, or
    ``deleting``: deleted for a re-creation, but not yet gone (a later pass
    creates it).

    ``why``: the field that differed (see :func:`~gatewaypool_operator.drift.apply_change`).
    """

    kind: str
    name: str
    action: str
    why: str = ""


class ConflictError(Exception):
    """A conditional write found the object changed since it was read (409): recompute."""


class RefusedError(Exception):
    """The API server refused a write (an error other than a 409), or kept failing it (429,
    5xx); ``message`` is its own."""

    def __init__(self, kind: str, name: str, message: str) -> None:
        super().__init__(f"{kind} {name}: {message}")
        self.kind = kind
        self.name = name
        self.message = message


class _Unset:
    pass


#: ``base`` left out: read the object and write unconditionally.
UNSET: Final = _Unset()


def retry_delay(
    status: int | None, headers: Mapping[str, str] | None, retries: int
) -> float | None:
    """Seconds to wait before retrying a request answered `status`; None: do not retry.

    `retries` is how many retries were made already. 429 and 5xx are
    retried, after the larger of :data:`RETRY_DELAYS` and the answer's
    ``Retry-After`` (in seconds), at most :data:`MAX_RETRY_AFTER_SECONDS`.
    """
    if status is None or not (status == 429 or 500 <= status <= 599):
        return None
    if retries >= len(RETRY_DELAYS):
        return None
    delay = RETRY_DELAYS[retries]
    after = {key.lower(): value for key, value in (headers or {}).items()}.get("retry-after")
    try:
        asked = float(after) if after is not None else 0.0
    except ValueError:
        asked = 0.0  # an HTTP date: the schedule's own delay
    if asked > MAX_RETRY_AFTER_SECONDS:
        return None
    return max(delay, asked)


def _server_message(exc: Any) -> str:
    try:
        body = json.loads(exc.body or "")
    except (TypeError, ValueError):
        body = None
    if isinstance(body, dict) and body.get("message"):
        return str(body["message"])
    return f"{exc.status} {exc.reason}"


class Cluster:
    """Typed access to the kinds a pool owns, on one ``ApiClient``."""

    def __init__(
        self,
        api_client: Any,
        *,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        from kubernetes import client

        self.api_client = api_client
        self._apis: dict[str, Any] = {}
        self._client = client
        self._sleep = sleep
        self._clock = clock
        self.custom = client.CustomObjectsApi(api_client)

    def call(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``method(*args, **kwargs)``, retried on 429 and 5xx as :func:`retry_delay` says."""
        from kubernetes.client.exceptions import ApiException

        retries = 0
        while True:
            try:
                return method(*args, **kwargs)
            except ApiException as exc:
                delay = retry_delay(exc.status, exc.headers, retries)
                if delay is None:
                    raise
                log.info("%s answered %s; retrying in %.1f s", method.__name__, exc.status, delay)
                self._sleep(delay)
                retries += 1

    def _api(self, kind: str) -> tuple[Any, str]:
        class_name, suffix = _KINDS[kind]
        api = self._apis.get(class_name)
        if api is None:
            api = getattr(self._client, class_name)(self.api_client)
            self._apis[class_name] = api
        return api, suffix

    def _plain(self, obj: Any) -> dict[str, Any]:
        plain: dict[str, Any] = self.api_client.sanitize_for_serialization(obj)
        return plain

    def read(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """The object as the API holds it, or None if it does not exist."""
        from kubernetes.client.exceptions import ApiException

        api, suffix = self._api(kind)
        try:
            return self._plain(
                self.call(getattr(api, f"read_namespaced_{suffix}"), name, namespace)
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def find(self, kind: str, namespace: str, *, labels: Mapping[str, str]) -> list[dict[str, Any]]:
        """Objects of ``kind`` carrying every label in ``labels``.

        The label selector goes to the API server, and is applied again here:
        an API server (or a proxy in front of one) that ignores it must not make the
        operator act on objects that are not its own.
        """
        api, suffix = self._api(kind)
        result = self._plain(
            self.call(
                getattr(api, f"list_namespaced_{suffix}"),
                namespace,
                label_selector=_selector(labels),
            )
        )
        return _labelled(result.get("items") or [], labels)

    def create(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        api, suffix = self._api(str(obj["kind"]))
        namespace = obj["metadata"]["namespace"]
        return self._plain(
            self.call(
                getattr(api, f"create_namespaced_{suffix}"),
                namespace,
                dict(obj),
                field_manager=MANAGER,
            )
        )

    def patch(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """A strategic merge patch (a hand edit, in tests); the operator itself applies."""
        api, suffix = self._api(str(obj["kind"]))
        metadata = obj["metadata"]
        return self._plain(
            self.call(
                getattr(api, f"patch_namespaced_{suffix}"),
                metadata["name"],
                metadata["namespace"],
                dict(obj),
            )
        )

    def merge_patch_data(
        self, kind: str, namespace: str, name: str, data: Mapping[str, str | None]
    ) -> bool:
        """Merge `data` into the object's ``data`` (None deletes a key); False if it is gone.

        For keys other writers own (the routers' reports): a merge patch
        touches only the keys it names.

        Raises
        ------
        RefusedError
            The API server refused the patch.
        """
        from kubernetes.client.exceptions import ApiException

        api, suffix = self._api(kind)
        try:
            self.call(
                getattr(api, f"patch_namespaced_{suffix}"),
                name,
                namespace,
                {"data": dict(data)},
                _preload_content=False,
            )
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise RefusedError(kind, name, _server_message(exc)) from exc
        return True

    def server_side_apply(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Apply ``obj`` as the operator's field manager, taking over conflicting fields."""
        api, suffix = self._api(str(obj["kind"]))
        metadata = obj["metadata"]
        return self._plain(
            self.call(
                getattr(api, f"patch_namespaced_{suffix}"),
                metadata["name"],
                metadata["namespace"],
                dict(obj),
                field_manager=MANAGER,
                force=True,
                _content_type=APPLY_PATCH,
            )
        )

    def delete(
        self, kind: str, namespace: str, name: str, *, orphan: bool = False, uid: str | None = None
    ) -> bool:
        """Delete an object (its dependents kept with ``orphan``); False if it was gone.

        With `uid`, only the object of that uid: a newer one of the same name
        makes it raise :class:`ConflictError`. Any other refusal raises
        :class:`RefusedError`.
        """
        from kubernetes.client.exceptions import ApiException

        api, suffix = self._api(kind)
        body = self._client.V1DeleteOptions(
            propagation_policy="Orphan" if orphan else "Background",
            preconditions=self._client.V1Preconditions(uid=uid) if uid else None,
        )
        try:
            self.call(
                getattr(api, f"delete_namespaced_{suffix}"),
                name,
                namespace,
                body=body,
                _preload_content=False,
            )
        except ApiException as exc:
            if exc.status == 404:
                return False
            if exc.status == 409:
                raise ConflictError(f"{kind} {name}: {_server_message(exc)}") from exc
            raise RefusedError(kind, name, _server_message(exc)) from exc
        return True

    def wait_gone(self, kind: str, namespace: str, name: str, *, uid: str | None) -> bool:
        """Whether the object of `uid` is gone within :data:`GONE_WAIT_SECONDS`.

        A terminating object stays while finalizers hold it (``orphan``,
        until the garbage collector detached its dependents). Polled, at
        growing intervals; an object of another uid counts as gone.
        """
        deadline = self._clock() + GONE_WAIT_SECONDS
        interval = 0.1
        while True:
            live = self.read(kind, namespace, name)
            if live is None or (live.get("metadata") or {}).get("uid") != uid:
                return True
            left = deadline - self._clock()
            if left <= 0:
                return False
            self._sleep(min(interval, left))
            interval = min(interval * 2, 1.0)

    def apply(
        self,
        desired: Mapping[str, Any],
        *,
        base: Mapping[str, Any] | _Unset | None = UNSET,
        exclusive: bool = False,
        create_only: bool = False,
    ) -> Applied:
        """Bring the object in line with ``desired`` if anything the operator owns differs.

        Parameters
        ----------
        desired
            The whole object as the operator wants it.
        base
            The live object ``desired`` was computed from (None: computed from
            its absence). The write is then conditional on it: applied only at
            its ``resourceVersion``, else :class:`ConflictError`. Left out, the
            object is read here and written unconditionally.
        exclusive
            With ``base`` None: create the object only if it is still absent
            (a POST; :class:`ConflictError` if it exists). For the bucket map,
            whose first version must not overwrite another. Apply (which
            creates too) is used otherwise, because fields a POST wrote stay
            co-owned by its ``Update`` entry and a later apply could not
            remove them.
        create_only
            Create the object if missing, never change it (the routers' reports).

        Raises
        ------
        ConflictError
            The object changed since ``base`` was read.
        RefusedError
            The API server refused the write (its message says why).
        """
        from kubernetes.client.exceptions import ApiException

        kind = str(desired["kind"])
        metadata = desired["metadata"]
        name, namespace = str(metadata["name"]), str(metadata["namespace"])
        conditional = not isinstance(base, _Unset)  # a write at base's resourceVersion
        live = base if not isinstance(base, _Unset) else self.read(kind, namespace, name)
        try:
            if live is None:
                return self._create(desired, exclusive=exclusive, create_only=create_only)
            return self._update(desired, live, conditional=conditional, create_only=create_only)
        except ApiException as exc:
            if exc.status == 409:
                raise ConflictError(f"{kind} {name}: {_server_message(exc)}") from exc
            if exc.status is not None and 400 <= exc.status <= 599:
                # Also a 5xx that outlasted the retries: one child's trouble.
                raise RefusedError(kind, name, _server_message(exc)) from exc
            raise

    def _create(self, desired: Mapping[str, Any], *, exclusive: bool, create_only: bool) -> Applied:
        """`apply` of an object that is absent."""
        from kubernetes.client.exceptions import ApiException

        kind, name = str(desired["kind"]), str(desired["metadata"]["name"])
        if not (exclusive or create_only):
            self.server_side_apply(desired)
            return Applied(kind, name, "created")
        try:
            self.create(desired)
        except ApiException as exc:
            if exc.status != 409:
                raise
            if exclusive:
                raise ConflictError(f"{kind} {name} was created meanwhile") from exc
            return Applied(kind, name, "unchanged")
        return Applied(kind, name, "created")

    def _update(
        self,
        desired: Mapping[str, Any],
        live: Mapping[str, Any],
        *,
        conditional: bool,
        create_only: bool,
    ) -> Applied:
        """`apply` of an object that exists: re-create, patch, or leave it."""
        kind = str(desired["kind"])
        metadata = desired["metadata"]
        name, namespace = str(metadata["name"]), str(metadata["namespace"])
        live_metadata = live.get("metadata") or {}
        if live_metadata.get("deletionTimestamp"):
            # Deleted for a re-creation by an earlier pass, or by someone:
            # create it once it is gone.
            if not self.wait_gone(kind, namespace, name, uid=live_metadata.get("uid")):
                return Applied(kind, name, "deleting", "the old object is still terminating")
            self.server_side_apply(desired)
            return Applied(kind, name, "created")
        if create_only:
            return Applied(kind, name, "unchanged")
        immutable = immutable_change(desired, live)
        if immutable is not None:
            # Pods and PersistentVolumeClaims stay: the new object adopts them.
            uid = live_metadata.get("uid")
            self.delete(kind, namespace, name, orphan=True, uid=uid)
            if not self.wait_gone(kind, namespace, name, uid=uid):
                return Applied(kind, name, "deleting", immutable)
            self.server_side_apply(desired)
            return Applied(kind, name, "recreated", immutable)
        why = apply_change(desired, live)
        if why is None:
            return Applied(kind, name, "unchanged")
        if conditional:
            version = live_metadata.get("resourceVersion")
            desired = {**desired, "metadata": {**metadata, "resourceVersion": version}}
        self.server_side_apply(desired)
        return Applied(kind, name, "patched", why)


def _selector(labels: Mapping[str, str]) -> str:
    """A label selector requiring every label in ``labels``."""
    return ",".join(f"{key}={value}" for key, value in sorted(labels.items()))


def _labelled(items: list[dict[str, Any]], labels: Mapping[str, str]) -> list[dict[str, Any]]:
    """The items carrying every label in ``labels`` (the selector, applied again here)."""
    return [
        item
        for item in items
        if all(
            ((item.get("metadata") or {}).get("labels") or {}).get(key) == value
            for key, value in labels.items()
        )
    ]
