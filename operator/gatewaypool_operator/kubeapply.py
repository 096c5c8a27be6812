"""Apply desired objects through the Kubernetes API: create, repair drift.

Desired state is built as plain dicts by :mod:`gatewaypool_operator.children`;
this module is the only place that sends them. An object is patched only
when a field we own differs from what the API holds, so a steady pool costs
reads and no writes, and fields other controllers own (status, defaults the
API server fills in) are left alone.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

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
}

#: The kinds a pool owns (the API server's garbage collector deletes them with it).
OWNED_KINDS: tuple[str, ...] = (
    "Deployment",
    "StatefulSet",
    "Service",
    "NetworkPolicy",
    "PodDisruptionBudget",
    "RoleBinding",
    "Role",
    "ServiceAccount",
    "ConfigMap",
)


@dataclass(frozen=True, slots=True)
class Applied:
    """What applying one object did: ``created``, ``patched`` or ``unchanged``."""

    kind: str
    name: str
    action: str


def differs(desired: Any, actual: Any) -> bool:
    """Whether ``actual`` lacks or contradicts anything in ``desired``.

    Mappings compare key by key on the desired keys only (the API server
    adds defaults and status); lists and scalars must be equal.
    """
    if isinstance(desired, Mapping):
        if not isinstance(actual, Mapping):
            return True
        return any(differs(value, actual.get(key)) for key, value in desired.items())
    if isinstance(desired, list):
        if not isinstance(actual, list) or len(desired) != len(actual):
            return True
        return any(differs(d, a) for d, a in zip(desired, actual, strict=True))
    return bool(desired != actual)


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
        return self._plain(getattr(api, f"create_namespaced_{suffix}")(namespace, dict(obj)))

    def patch(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        api, suffix = self._api(str(obj["kind"]))
        metadata = obj["metadata"]
        return self._plain(
            getattr(api, f"patch_namespaced_{suffix}")(
                metadata["name"], metadata["namespace"], dict(obj)
            )
        )

    def apply(self, desired: Mapping[str, Any], *, create_only: bool = False) -> Applied:
        """Create ``desired`` if missing, else patch it if any owned field drifted."""
        kind = str(desired["kind"])
        metadata = desired["metadata"]
        actual = self.read(kind, metadata["namespace"], metadata["name"])
        if actual is None:
            from kubernetes.client.exceptions import ApiException

            try:
                self.create(desired)
            except ApiException as exc:
                # Another pass (the resync timer runs beside change handlers)
                # created it first: fall through and compare with that one.
                if exc.status != 409:
                    raise
                actual = self.read(kind, metadata["namespace"], metadata["name"])
                if actual is None:
                    raise
            else:
                return Applied(kind, metadata["name"], "created")
        if create_only or not differs(_comparable(desired), actual):
            return Applied(kind, metadata["name"], "unchanged")
        self.patch(desired)
        return Applied(kind, metadata["name"], "patched")


def _comparable(desired: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a desired object the operator owns (not apiVersion/kind)."""
    return {key: value for key, value in desired.items() if key not in ("apiVersion", "kind")}


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
