"""What the emulator serves: resources, their kinds, subresources and scale paths."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any, Final

import kmock

_ALL_VERBS: Final = frozenset(
    {"create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"}
)
#: Groups served by the API server itself: strategic merge is allowed there only.
_BUILTIN_GROUPS: Final = frozenset(
    {
        "",
        "apps",
        "rbac.authorization.k8s.io",
        "networking.k8s.io",
        "policy",
        "coordination.k8s.io",
        "apiextensions.k8s.io",
        "events.k8s.io",
        "autoscaling",
        "batch",
    }
)


@dataclasses.dataclass(frozen=True)
class ScalePaths:
    """Where a resource keeps what its ``/scale`` subresource shows.

    Paths are tuples of keys from the object's root, as a CRD's
    ``subresources.scale`` gives them (``.spec.replicas`` is
    ``("spec", "replicas")``). ``selector_path`` points either at a label
    selector string (custom resources: ``.status.selector``) or, when
    ``selector_is_label_selector``, at a ``LabelSelector`` object (the
    ``spec.selector`` of StatefulSets and Deployments).
    """

    spec_replicas: tuple[str, ...] = ("spec", "replicas")
    status_replicas: tuple[str, ...] = ("status", "replicas")
    selector_path: tuple[str, ...] | None = ("status", "selector")
    selector_is_label_selector: bool = False


_WORKLOAD_SCALE: Final = ScalePaths(
    selector_path=("spec", "selector"), selector_is_label_selector=True
)


@dataclasses.dataclass(frozen=True)
class ResourceKind:
    """One served resource: its address, its kind, and how the server treats it.

    ``status`` in ``subresources`` makes ``/status`` the only way to change the
    status (as on a real server); ``scale`` needs ``scale`` paths.
    """

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    subresources: frozenset[str] = frozenset()
    shortnames: frozenset[str] = frozenset()
    scale: ScalePaths | None = None
    #: A custom resource's ``openAPIV3Schema`` (its list types guide apply).
    openapi: Mapping[str, Any] | None = dataclasses.field(
        default=None, compare=False, hash=False, repr=False
    )

    @property
    def api_version(self) -> str:
        """``apiVersion`` of its objects: ``v1`` for the core group, else ``group/version``."""
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def builtin(self) -> bool:
        """Whether the API server implements it itself (strategic merge works)."""
        return self.group in _BUILTIN_GROUPS

    @property
    def resource(self) -> kmock.resource:
        """The resource as kmock addresses it."""
        return kmock.resource(self.group, self.version, self.plural)

    def info(self) -> kmock.ResourceInfo:
        """Discovery information, as kubectl and kopf read it."""
        return kmock.ResourceInfo(
            namespaced=self.namespaced,
            kind=self.kind,
            singular=self.kind.lower(),
            verbs=_ALL_VERBS,
            shortnames=self.shortnames,
            subresources=self.subresources,
        )


def _kind(
    group: str,
    version: str,
    plural: str,
    kind: str,
    *,
    namespaced: bool = True,
    subresources: Iterable[str] = (),
    shortnames: Iterable[str] = (),
    scale: ScalePaths | None = None,
    openapi: Mapping[str, Any] | None = None,
) -> ResourceKind:
    return ResourceKind(
        group,
        version,
        plural,
        kind,
        namespaced,
        frozenset(subresources),
        frozenset(shortnames),
        scale,
        openapi,
    )


#: What GatewayPool reads and writes, what kopf needs, the Secrets its pods
#: mount (which the kubelet stand-ins read), and GatewayPool itself as the CRD
#: defines it (its scale paths are the CRD's).
RESOURCES: Final[tuple[ResourceKind, ...]] = (
    _kind("", "v1", "namespaces", "Namespace", namespaced=False, shortnames={"ns"}),
    _kind("", "v1", "configmaps", "ConfigMap", shortnames={"cm"}),
    _kind("", "v1", "services", "Service", subresources={"status"}, shortnames={"svc"}),
    _kind("", "v1", "serviceaccounts", "ServiceAccount", shortnames={"sa"}),
    _kind("", "v1", "secrets", "Secret"),
    _kind("", "v1", "pods", "Pod", subresources={"status"}, shortnames={"po"}),
    _kind(
        "",
        "v1",
        "persistentvolumeclaims",
        "PersistentVolumeClaim",
        subresources={"status"},
        shortnames={"pvc"},
    ),
    _kind("", "v1", "events", "Event", shortnames={"ev"}),
    _kind(
        "apps",
        "v1",
        "statefulsets",
        "StatefulSet",
        subresources={"status", "scale"},
        shortnames={"sts"},
        scale=_WORKLOAD_SCALE,
    ),
    _kind(
        "apps",
        "v1",
        "deployments",
        "Deployment",
        subresources={"status", "scale"},
        shortnames={"deploy"},
        scale=_WORKLOAD_SCALE,
    ),
    _kind(
        "autoscaling",
        "v2",
        "horizontalpodautoscalers",
        "HorizontalPodAutoscaler",
        subresources={"status"},
        shortnames={"hpa"},
    ),
    _kind("rbac.authorization.k8s.io", "v1", "roles", "Role"),
    _kind("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding"),
    _kind("networking.k8s.io", "v1", "networkpolicies", "NetworkPolicy", shortnames={"netpol"}),
    _kind(
        "policy",
        "v1",
        "poddisruptionbudgets",
        "PodDisruptionBudget",
        subresources={"status"},
        shortnames={"pdb"},
    ),
    _kind("coordination.k8s.io", "v1", "leases", "Lease"),
    _kind(
        "apiextensions.k8s.io",
        "v1",
        "customresourcedefinitions",
        "CustomResourceDefinition",
        namespaced=False,
        subresources={"status"},
        shortnames={"crd", "crds"},
    ),
    _kind("events.k8s.io", "v1", "events", "Event", shortnames={"ev"}),
    _kind(
        "gatewaypool.io",
        "v1alpha1",
        "gatewaypools",
        "GatewayPool",
        subresources={"status", "scale"},
        shortnames={"gwp"},
        scale=ScalePaths(),
    ),
    # kopf's peering, for kopf run without --standalone.
    _kind("kopf.dev", "v1", "clusterkopfpeerings", "ClusterKopfPeering", namespaced=False),
    _kind("kopf.dev", "v1", "kopfpeerings", "KopfPeering"),
)

CRDS: Final = kmock.resource("apiextensions.k8s.io", "v1", "customresourcedefinitions")
NAMESPACES: Final = kmock.resource("", "v1", "namespaces")


def kinds_from_crd(crd: Mapping[str, Any]) -> list[ResourceKind]:
    """The resources a CustomResourceDefinition serves, one per served version.

    Parameters
    ----------
    crd
        The CRD object (``apiextensions.k8s.io/v1``).

    Returns
    -------
    list of ResourceKind
        With the CRD's scope, names, and status/scale subresources.
    """
    spec = crd.get("spec") or {}
    names = spec.get("names") or {}
    kinds: list[ResourceKind] = []
    for version in spec.get("versions") or []:
        if not version.get("served", True):
            continue
        subresources = version.get("subresources") or {}
        scale_spec = subresources.get("scale")
        scale = None
        if scale_spec is not None:
            selector = scale_spec.get("labelSelectorPath")
            scale = ScalePaths(
                spec_replicas=_json_path(scale_spec["specReplicasPath"]),
                status_replicas=_json_path(scale_spec["statusReplicasPath"]),
                selector_path=_json_path(selector) if selector else None,
            )
        kinds.append(
            _kind(
                spec["group"],
                version["name"],
                names["plural"],
                names["kind"],
                namespaced=spec.get("scope", "Namespaced") == "Namespaced",
                subresources=subresources.keys(),
                shortnames=names.get("shortNames") or (),
                scale=scale,
                openapi=(version.get("schema") or {}).get("openAPIV3Schema"),
            )
        )
    return kinds


def _json_path(path: str) -> tuple[str, ...]:
    # A CRD's scale paths are simple JSON paths: ".spec.replicas".
    return tuple(part for part in path.split(".") if part)
