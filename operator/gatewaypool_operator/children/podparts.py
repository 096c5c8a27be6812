"""What gateway and router pods share: security context, resources, spread, Secrets, PDB.

Both the gateway StatefulSet (`gatewaypool_operator.children.gateway`) and
the router Deployment (`gatewaypool_operator.children.router`) run locked-down
containers with a writable ``/tmp`` only, take their resource requirements
from the spec, spread over zones and nodes unless the spec says otherwise,
mount the TLS Secrets of the spec read-only below `TLS_DIRECTORY`, and have
a PodDisruptionBudget of one; the parts they build alike are built here
once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from gatewaypool_operator.children.names import labels, object_metadata, selector_labels
from gatewaypool_operator.spec.fields import thaw
from gatewaypool_operator.spec.types import PodTemplateSpec

__all__ = [
    "CA_KEY",
    "CERT_KEYS",
    "DEFAULT_SPREAD_KEYS",
    "GATEWAY_CERT_DIRECTORY",
    "SECRET_FILE_MODE",
    "TLS_DIRECTORY",
    "TMP_VOLUME",
    "SecretMount",
    "container_resources",
    "container_security_context",
    "image_pull_secrets_field",
    "pod_disruption_budget",
    "scheduling_fields",
    "secret_volume",
    "spread_field",
    "topology_spread",
]

TMP_VOLUME: Final = "tmp"
"""The emptyDir volume every pod mounts at ``/tmp``, its only writable folder."""
TLS_DIRECTORY: Final = "/etc/gatewaypool/tls"
"""Where router and gateway pods mount the Secrets of ``spec.router.tls`` and
``spec.gateway.tls``, one folder each."""
SECRET_FILE_MODE: Final = 0o440
"""Secret files readable by their owner (root) and group only: the pod's
``fsGroup``, which the kubelet gives the files and adds to the container's
groups. A private key is never world-readable."""
GATEWAY_CERT_DIRECTORY: Final = f"{TLS_DIRECTORY}/server"
"""Where a gateway pod finds the certificate it serves (``tls.crt``, ``tls.key``)."""
CERT_KEYS: Final = ("tls.crt", "tls.key")
"""The keys of a ``kubernetes.io/tls`` Secret."""
CA_KEY: Final = "ca.crt"
"""The key of a CA bundle, as cert-manager and ``kubectl create secret`` name it."""


@dataclass(frozen=True, slots=True)
class SecretMount:
    """One Secret a pod mounts read-only: volume, Secret, folder, and the keys used.

    Only `keys` are projected into the folder: the Secret of a cert-manager
    CA (``ca.crt``, ``tls.crt``, ``tls.key``) may serve as a client CA without
    its private key reaching the pod. No ``subPath``: the kubelet swaps
    a Secret volume's files atomically when the Secret changes, which is how
    a renewed certificate reaches running pods.
    """

    volume: str
    secret_name: str
    directory: str
    keys: tuple[str, ...]

    def path(self, key: str) -> str:
        """The file of `key` inside the container."""
        return f"{self.directory}/{key}"

    def volume_mount(self) -> dict[str, Any]:
        """The container's ``volumeMounts`` entry."""
        return {"name": self.volume, "mountPath": self.directory, "readOnly": True}


def secret_volume(mount: SecretMount) -> dict[str, Any]:
    """The pod's ``volumes`` entry of `mount`: only its keys, mode `SECRET_FILE_MODE`."""
    return {
        "name": mount.volume,
        "secret": {
            "secretName": mount.secret_name,
            "items": [{"key": key, "path": key} for key in mount.keys],
            "defaultMode": SECRET_FILE_MODE,
        },
    }


def container_resources(resources: Mapping[str, Any]) -> dict[str, Any]:
    """Resource requirements without empty ``requests``/``limits``.

    The API server drops an empty map (``omitempty``), so one sent would
    never be seen again and would read as drift on every pass.
    """
    return {key: value for key, value in thaw(resources).items() if value}


def image_pull_secrets_field(names: Sequence[str]) -> dict[str, Any]:
    """Return a pod spec's ``imagePullSecrets`` for ``spec.imagePullSecrets``, or no field."""
    return {"imagePullSecrets": [{"name": name} for name in names]} if names else {}


def scheduling_fields(template: PodTemplateSpec) -> dict[str, Any]:
    """Return the pod spec fields of a pod template that place the pods, those set only.

    ``nodeSelector``, ``tolerations``, ``affinity`` and ``priorityClassName``,
    alike for gateways and routers; the spread is `spread_field`'s.
    """
    fields: dict[str, Any] = {}
    if template.node_selector:
        fields["nodeSelector"] = thaw(template.node_selector)
    if template.tolerations:
        fields["tolerations"] = thaw(template.tolerations)
    if template.affinity:
        fields["affinity"] = thaw(template.affinity)
    if template.priority_class_name:
        fields["priorityClassName"] = template.priority_class_name
    return fields


def container_security_context(*, run_as_non_root: bool = True) -> dict[str, Any]:
    """Return the ``securityContext`` of every container: read-only, no privileges, and
    non-root unless a pool's ``spec.gateway.securityContext.runAsNonRoot`` is false."""
    return {
        "runAsNonRoot": run_as_non_root,
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


DEFAULT_SPREAD_KEYS: Final = ("topology.kubernetes.io/zone", "kubernetes.io/hostname")
"""Gateways and routers spread over zones, then nodes, unless the spec says otherwise."""


def topology_spread(
    name: str, component: str, constraints: Sequence[Mapping[str, Any]] | None
) -> list[dict[str, Any]]:
    """Return a component's ``topologySpreadConstraints``.

    Not set in the spec (None): one constraint per key of
    `DEFAULT_SPREAD_KEYS`, ``maxSkew: 1``, ``ScheduleAnyway`` -- a preference
    that never keeps a pod from starting (on a one-node cluster, in a cluster
    without zone labels). Set: the spec's constraints, where one without a
    ``labelSelector`` gets the component's selector (without one it would
    count no pods). ``[]``: none.
    """
    if constraints is None:
        constraints = [
            {"maxSkew": 1, "topologyKey": key, "whenUnsatisfiable": "ScheduleAnyway"}
            for key in DEFAULT_SPREAD_KEYS
        ]
    result = []
    for constraint in constraints:
        item = thaw(constraint)
        item.setdefault("labelSelector", {"matchLabels": selector_labels(name, component)})
        result.append(item)
    return result


def spread_field(
    name: str, component: str, constraints: Sequence[Mapping[str, Any]] | None
) -> dict[str, Any]:
    """Return `topology_spread` as a pod spec's field, or no field at all when it is empty."""
    spread = topology_spread(name, component, constraints)
    return {"topologySpreadConstraints": spread} if spread else {}


def pod_disruption_budget(
    object_name: str, name: str, namespace: str, component: str
) -> dict[str, Any]:
    """Return the PodDisruptionBudget `object_name`: one pod of `component` unavailable at a time.

    A node drain then never takes the pool's DICOM endpoint away (routers),
    nor more than one gateway, whose buckets fail over only after the
    operator moves them; a single pod of either can still be evicted.
    """
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": object_metadata(object_name, namespace, labels(name, component)),
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": selector_labels(name, component)},
        },
    }
