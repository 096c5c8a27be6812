"""What the API server fills in and rewrites on every write of a built-in kind.

Defaulting (the ``SetDefaults_*`` functions of the real server, for the
fields GatewayPool's children meet) and quantity canonicalization. A client
that compares the object it wants with the one it reads back must ignore
these, or it sees a difference on every pass; the drift property test's
oracle adds them so that such a client is tested. Defaults are not in the OpenAPI schemas (the real
server has them in Go code), so they are listed here; which values are
quantities comes from the schemas.

Empty strings: the built-in types are Go structs whose optional string
fields are ``omitempty``, so a field sent as ``""`` (an env var's
``value``, a toleration's ``key``) is stored without it (:func:`drop_empty_strings`).

Defaulted fields are owned by no manager when the object was applied (they
are not in the applied configuration), as on a real server.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final

from gatewaypool.quantity import QuantityError, canonical

from .errors import ApiError
from .schemas import Schema

__all__ = [
    "apply_defaults",
    "canonicalize_quantities",
    "drop_empty_strings",
    "key_defaults",
]

JSONObject = dict[str, Any]

#: Defaults of list-map key fields: an item sent without one is matched as if it had it.
_KEY_DEFAULTS: Final[Mapping[str, Mapping[str, Any]]] = {
    "io.k8s.api.core.v1.ContainerPort": {"protocol": "TCP"},
    "io.k8s.api.core.v1.ServicePort": {"protocol": "TCP"},
    "io.k8s.api.core.v1.EndpointPort": {"protocol": "TCP"},
}


def key_defaults(definition: str | None) -> Mapping[str, Any]:
    """The server defaults of the list-map keys of items of this definition."""
    return _KEY_DEFAULTS.get(definition or "", {})


def _image_pull_policy(image: str) -> str:
    name = image.rsplit("/", 1)[-1]
    if "@" in name:
        return "IfNotPresent"
    tag = name.split(":", 1)[1] if ":" in name else "latest"
    return "Always" if tag == "latest" else "IfNotPresent"


def _probe(probe: JSONObject) -> None:
    for key, value in (
        ("timeoutSeconds", 1),
        ("periodSeconds", 10),
        ("successThreshold", 1),
        ("failureThreshold", 3),
    ):
        probe.setdefault(key, value)
    if isinstance(probe.get("httpGet"), dict):
        probe["httpGet"].setdefault("scheme", "HTTP")


def _container(container: JSONObject) -> None:
    if isinstance(container.get("image"), str):
        container.setdefault("imagePullPolicy", _image_pull_policy(container["image"]))
    container.setdefault("terminationMessagePath", "/dev/termination-log")
    container.setdefault("terminationMessagePolicy", "File")
    for port in container.get("ports") or []:
        port.setdefault("protocol", "TCP")
    for name in ("livenessProbe", "readinessProbe", "startupProbe"):
        if isinstance(container.get(name), dict):
            _probe(container[name])
    for env in container.get("env") or []:
        field_ref = (env.get("valueFrom") or {}).get("fieldRef")
        if isinstance(field_ref, dict):
            field_ref.setdefault("apiVersion", "v1")


def _pod_spec(spec: JSONObject) -> None:
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("schedulerName", "default-scheduler")
    spec.setdefault("securityContext", {})
    spec.setdefault("terminationGracePeriodSeconds", 30)
    for key in ("containers", "initContainers"):
        for container in spec.get(key) or []:
            _container(container)
    for volume in spec.get("volumes") or []:
        for source in ("configMap", "secret"):
            if isinstance(volume.get(source), dict):
                volume[source].setdefault("defaultMode", 0o644)


def _template(workload: JSONObject) -> None:
    spec = workload.get("spec")
    template = spec.get("template") if isinstance(spec, dict) else None
    if isinstance(template, dict) and isinstance(template.get("spec"), dict):
        _pod_spec(template["spec"])


def _statefulset(obj: JSONObject) -> None:
    spec = obj.setdefault("spec", {})
    spec.setdefault("replicas", 1)
    spec.setdefault("podManagementPolicy", "OrderedReady")
    strategy = spec.setdefault("updateStrategy", {"type": "RollingUpdate"})
    if strategy.get("type", "RollingUpdate") == "RollingUpdate":
        strategy.setdefault("type", "RollingUpdate")
        strategy.setdefault("rollingUpdate", {}).setdefault("partition", 0)
    spec.setdefault("revisionHistoryLimit", 10)
    retention = spec.setdefault("persistentVolumeClaimRetentionPolicy", {})
    retention.setdefault("whenDeleted", "Retain")
    retention.setdefault("whenScaled", "Retain")
    for claim in spec.get("volumeClaimTemplates") or []:
        claim.setdefault("spec", {}).setdefault("volumeMode", "Filesystem")
    _template(obj)


def _deployment(obj: JSONObject) -> None:
    spec = obj.setdefault("spec", {})
    spec.setdefault("replicas", 1)
    strategy = spec.setdefault("strategy", {"type": "RollingUpdate"})
    if strategy.get("type", "RollingUpdate") == "RollingUpdate":
        strategy.setdefault("type", "RollingUpdate")
        rolling = strategy.setdefault("rollingUpdate", {})
        rolling.setdefault("maxUnavailable", "25%")
        rolling.setdefault("maxSurge", "25%")
    spec.setdefault("revisionHistoryLimit", 10)
    spec.setdefault("progressDeadlineSeconds", 600)
    _template(obj)


def _service(obj: JSONObject, old: JSONObject | None, allocate_ip: Callable[[], str]) -> None:
    spec = obj.setdefault("spec", {})
    before = (old or {}).get("spec") or {}
    # An update that leaves out the allocated IP keeps it (patchAllocatedValues).
    for allocated in ("clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"):
        if allocated not in spec and allocated in before:
            spec[allocated] = before[allocated]
    spec.setdefault("type", "ClusterIP")
    spec.setdefault("sessionAffinity", "None")
    if spec["type"] != "ExternalName":
        if not spec.get("clusterIP"):
            spec["clusterIP"] = allocate_ip()
        spec.setdefault("clusterIPs", [spec["clusterIP"]])
        spec.setdefault("ipFamilies", ["IPv4"])
        spec.setdefault("ipFamilyPolicy", "SingleStack")
        spec.setdefault("internalTrafficPolicy", "Cluster")
    for port in spec.get("ports") or []:
        port.setdefault("protocol", "TCP")
        if "port" in port:
            port.setdefault("targetPort", port["port"])


def _network_policy(obj: JSONObject) -> None:
    spec = obj.setdefault("spec", {})
    if "policyTypes" not in spec:
        spec["policyTypes"] = ["Ingress", "Egress"] if spec.get("egress") else ["Ingress"]
    for direction in ("ingress", "egress"):
        for rule in spec.get(direction) or []:
            for port in rule.get("ports") or []:
                port.setdefault("protocol", "TCP")


def _horizontal_pod_autoscaler(obj: JSONObject) -> None:
    """``autoscaling/v2`` ``SetDefaults_HorizontalPodAutoscaler``.

    No metrics is CPU at 80 % utilization. A ``behavior`` sent is filled
    rule by rule: a missing direction or field takes the controller's old
    fixed behavior (up: no window, ``Max`` of 4 pods or 100 % per 15 s; down:
    ``Max`` of 100 % per 15 s), except the scale-down window, which stays
    unset (the controller's command-line flag decides it). Fields behind
    alpha feature gates (``tolerance``, ``selectionStrategy``) are left alone.
    """
    spec = obj.setdefault("spec", {})
    spec.setdefault("minReplicas", 1)
    if not spec.get("metrics"):
        spec["metrics"] = [
            {
                "type": "Resource",
                "resource": {
                    "name": "cpu",
                    "target": {"type": "Utilization", "averageUtilization": 80},
                },
            }
        ]
    behavior = spec.get("behavior")
    if not isinstance(behavior, dict):
        return
    up = behavior.get("scaleUp") or {}
    up.setdefault("stabilizationWindowSeconds", 0)
    up.setdefault("selectPolicy", "Max")
    if up.get("policies") is None:
        up["policies"] = [
            {"type": "Pods", "value": 4, "periodSeconds": 15},
            {"type": "Percent", "value": 100, "periodSeconds": 15},
        ]
    down = behavior.get("scaleDown") or {}
    down.setdefault("selectPolicy", "Max")
    if down.get("policies") is None:
        down["policies"] = [{"type": "Percent", "value": 100, "periodSeconds": 15}]
    behavior["scaleUp"], behavior["scaleDown"] = up, down


def apply_defaults(
    api_version: str,
    kind: str,
    obj: JSONObject,
    *,
    old: JSONObject | None,
    allocate_ip: Callable[[], str],
) -> None:
    """Fill in, in place, what the real server defaults in an object of this kind.

    Parameters
    ----------
    old
        The stored object on an update (a Service keeps its allocated IP).
    allocate_ip
        Gives a new Service ClusterIP.
    """
    match (api_version, kind):
        case ("apps/v1", "StatefulSet"):
            _statefulset(obj)
        case ("apps/v1", "Deployment"):
            _deployment(obj)
        case ("v1", "Service"):
            _service(obj, old, allocate_ip)
        case ("v1", "Pod") if isinstance(obj.get("spec"), dict):
            _pod_spec(obj["spec"])
        case ("networking.k8s.io/v1", "NetworkPolicy"):
            _network_policy(obj)
        case ("autoscaling/v2", "HorizontalPodAutoscaler"):
            _horizontal_pod_autoscaler(obj)
        case _:
            pass


#: Optional string fields that are Go pointers (``*string``): ``omitempty`` keeps a
#: pointer to ``""``, which means something of its own (no storage class at all).
_POINTER_STRINGS: Final = frozenset(
    {
        "storageClassName",
        "volumeAttributesClassName",
        "loadBalancerClass",
        "runtimeClassName",
        "preemptionPolicy",
        "localhostProfile",
        "procMount",
    }
)


def drop_empty_strings(value: Any, schema: Schema) -> Any:
    """``value`` without the ``""`` of optional string fields, as the server stores it.

    The real server decodes a write into its Go structs and encodes them
    again: a string field tagged ``omitempty`` disappears when empty. The
    OpenAPI schemas do not carry the tag; a field they list as ``required``
    has none (required fields are not ``omitempty``), the others are taken
    to have it, but for the pointers of `_POINTER_STRINGS`. Entries of maps
    (labels, ConfigMap data) are no fields, and keep ``""``.
    """
    if isinstance(value, dict):
        required = set(schema.node.get("required") or ())
        kept = {}
        for key, child in value.items():
            if (
                child == ""
                and schema.is_struct
                and not schema.is_map_entry(key)
                and key not in required
                and key not in _POINTER_STRINGS
            ):
                continue
            kept[key] = drop_empty_strings(child, schema.field(key))
        return kept
    if isinstance(value, list):
        return [drop_empty_strings(item, schema.items) for item in value]
    return value


def canonicalize_quantities(value: Any, schema: Schema, path: str = "") -> Any:
    """``value`` with every ``resource.Quantity`` the schema marks in canonical form.

    Raises
    ------
    ApiError
        400 when a quantity does not parse, naming the field.
    """
    if schema.is_quantity and isinstance(value, str | int | float):
        try:
            return canonical(value)
        except QuantityError as exc:
            raise ApiError(400, "BadRequest", f"{path.lstrip('.')}: {exc}") from exc
    if isinstance(value, dict):
        return {
            key: canonicalize_quantities(child, schema.field(key), f"{path}.{key}")
            for key, child in value.items()
        }
    if isinstance(value, list):
        return [
            canonicalize_quantities(item, schema.items, f"{path}[{index}]")
            for index, item in enumerate(value)
        ]
    return value
