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
selector) and rolls them onto the new template. A write the API server
refuses raises :class:`RefusedError` with the server's message.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from gatewaypool_operator.drift import MANAGER, apply_change, immutable_change

log = logging.getLogger(__name__)

APPLY_PATCH: Final = "application/apply-patch+yaml"

#: kind -> (API class name in kubernetes.client, method suffix)
_KINDS: dict[str, tuple[str, str]] = {
    "ConfigMap": ("CoreV1Api", "config_map"),
    "Service": ("CoreV1Api", "service"),
    "ServiceAccount": ("CoreV1Api", "service_account"),
    "Pod": ("CoreV1Api", "pod"),
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
    """What applying one object did: ``created``, ``patched``, ``recreated`` or ``unchanged``.

    ``why``: the field that differed (see :func:`~gatewaypool_operator.drift.apply_change`).
    """

    kind: str
    name: str
    action: str
    why: str = ""


class ConflictError(Exception):
    """A conditional write found the object changed since it was read (409): recompute."""


class RefusedError(Exception):
    """The API server refused a write (4xx other than 404/409); ``message`` is its own."""

    def __init__(self, kind: str, name: str, message: str) -> None:
        super().__init__(f"{kind} {name}: {message}")
        self.kind = kind
        self.name = name
        self.message = message


class _Unset:
    pass


#: ``base`` left out: read the object and write unconditionally.
UNSET: Final = _Unset()


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

    def __init__(self, api_client: Any) -> None:
        from kubernetes import client

        self.api_client = api_client
        self._apis: dict[str, Any] = {}
        self._client = client
        self.custom = client.CustomObjectsApi(api_client)

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
            return self._plain(getattr(api, f"read_namespaced_{suffix}")(name, namespace))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def find(self, kind: str, namespace: str, *, labels: Mapping[str, str]) -> list[dict[str, Any]]:
        """Objects of ``kind`` carrying every label in ``labels``.

        The label selector goes to the API server, and is applied again here:
        an API server (or an emulator) that ignores it must not make the
        operator act on objects that are not its own.
        """
        api, suffix = self._api(kind)
        result = self._plain(
            getattr(api, f"list_namespaced_{suffix}")(namespace, label_selector=_selector(labels))
        )
        return _labelled(result.get("items") or [], labels)

    def create(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        api, suffix = self._api(str(obj["kind"]))
        namespace = obj["metadata"]["namespace"]
        return self._plain(
            getattr(api, f"create_namespaced_{suffix}")(namespace, dict(obj), field_manager=MANAGER)
        )

    def patch(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """A strategic merge patch (a hand edit, in tests); the operator itself applies."""
        api, suffix = self._api(str(obj["kind"]))
        metadata = obj["metadata"]
        return self._plain(
            getattr(api, f"patch_namespaced_{suffix}")(
                metadata["name"], metadata["namespace"], dict(obj)
            )
        )

    def merge_patch_data(
        self, kind: str, namespace: str, name: str, data: Mapping[str, str | None]
    ) -> bool:
        """Merge `data` into the object's ``data`` (None deletes a key); False if it is gone.

        For keys other writers own (the routers' reports): a merge patch
        touches only the keys it names.
        """
        from kubernetes.client.exceptions import ApiException

        api, suffix = self._api(kind)
        try:
            getattr(api, f"patch_namespaced_{suffix}")(
                name, namespace, {"data": dict(data)}, _preload_content=False
            )
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def server_side_apply(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Apply ``obj`` as the operator's field manager, taking over conflicting fields."""
        api, suffix = self._api(str(obj["kind"]))
        metadata = obj["metadata"]
        return self._plain(
            getattr(api, f"patch_namespaced_{suffix}")(
                metadata["name"],
                metadata["namespace"],
                dict(obj),
                field_manager=MANAGER,
                force=True,
                _content_type=APPLY_PATCH,
            )
        )

    def delete(self, kind: str, namespace: str, name: str, *, orphan: bool = False) -> bool:
        """Delete an object (its dependents kept with ``orphan``); False if it was gone."""
        from kubernetes.client.exceptions import ApiException

        api, suffix = self._api(kind)
        body = self._client.V1DeleteOptions(propagation_policy="Orphan" if orphan else "Background")
        try:
            getattr(api, f"delete_namespaced_{suffix}")(
                name, namespace, body=body, _preload_content=False
            )
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        return True

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
                if exclusive or create_only:
                    try:
                        self.create(desired)
                    except ApiException as exc:
                        if exc.status != 409:
                            raise
                        if exclusive:
                            raise ConflictError(f"{kind} {name} was created meanwhile") from exc
                        return Applied(kind, name, "unchanged")
                else:
                    self.server_side_apply(desired)
                return Applied(kind, name, "created")
            if create_only:
                return Applied(kind, name, "unchanged")
            immutable = immutable_change(desired, live)
            if immutable is not None:
                # Pods and PersistentVolumeClaims stay: the new object adopts them.
                self.delete(kind, namespace, name, orphan=True)
                self.server_side_apply(desired)
                return Applied(kind, name, "recreated", immutable)
            why = apply_change(desired, live)
            if why is None:
                return Applied(kind, name, "unchanged")
            if conditional:
                version = (live.get("metadata") or {}).get("resourceVersion")
                desired = {**desired, "metadata": {**metadata, "resourceVersion": version}}
            self.server_side_apply(desired)
            return Applied(kind, name, "patched", why)
        except ApiException as exc:
            if exc.status == 409:
                raise ConflictError(f"{kind} {name}: {_server_message(exc)}") from exc
            if exc.status is not None and 400 <= exc.status < 500 and exc.status != 404:
                raise RefusedError(kind, name, _server_message(exc)) from exc
            raise


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
