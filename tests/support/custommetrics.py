"""Studies in flight in ``custom.metrics.k8s.io``, as a cluster serves them to the HPA.

The chain a cluster's autoscaling on studies in flight runs on:

1. **Prometheus** scrapes every router's ``/metrics``. It is the upstream
   program, built from its Go module (``tests/prometheus``, only its
   Kubernetes service discovery compiled in; the image stand-in of
   :mod:`support.images`), run by the kubelet stand-in as a pod in
   ``monitoring``. It finds the routers by real pod discovery
   (``kubernetes_sd_configs``, role ``pod``, with the token of its own
   ServiceAccount and the RBAC the upstream Prometheus chart gives it). Its
   scrape job is the chart's PodMonitor (``podMonitor.enabled``), rendered by
   the real Helm engine and translated by :func:`scrape_config` the way
   Prometheus Operator translates a PodMonitor, since no Prometheus Operator
   runs here. The scrape interval is the PodMonitor's, 1 s here (30 s by
   default).
2. **The adapter** serves ``custom.metrics.k8s.io`` (v1beta1 and v1beta2,
   through the API server's aggregation layer) with the chart's Prometheus
   Adapter rules: ConfigMap ``config.yaml`` of
   ``autoscaling.prometheusAdapter.rules.enabled``, rendered by the real Helm
   engine and mounted as ``rules.existing`` mounts it. Prometheus Adapter is
   not served by the Go module proxy, so this is a stand-in
   (``tests/metricsadapter``) on the library the real adapter is built on,
   ``sigs.k8s.io/custom-metrics-apiserver``: it reads the same file,
   supports what the chart's rules use and refuses anything else when it
   starts. Its metrics relist interval is 1 s (the adapter chart's: 1 min).
3. **The HPA controller** in kube-controller-manager (sync period 2 s in the
   tests) reads the Pods metric ``gatewaypool_studies_in_flight`` of the
   HPA the operator renders, and scales the pool through ``/scale``.

:func:`deploy` applies every object (``kubectl apply --server-side``);
:func:`wait_available` waits for both APIServices to be Available and for
Prometheus to have found a target. The session fixture ``custom_metrics``
(``tests/conftest.py``) does both, once, when a test asks for it.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import kubernetes.client
import yaml
from kubernetes.client.exceptions import ApiException

from gatewaypool import quantity
from gatewaypool_local.peers.process import wait_until

if TYPE_CHECKING:
    from support.realcluster import Cluster

NAMESPACE = "monitoring"
#: Prometheus v3.16.0 is Go module github.com/prometheus/prometheus v0.316.0 (tests/prometheus).
PROMETHEUS_IMAGE = "quay.io/prometheus/prometheus:v3.16.0"
ADAPTER_IMAGE = "registry.example.org/gatewaypool/prometheus-adapter-standin:v1.37.0"
PROMETHEUS = "prometheus"
ADAPTER = "prometheus-adapter"
PROMETHEUS_PORT = 9090
GROUP = "custom.metrics.k8s.io"
APISERVICES = (f"v1beta2.{GROUP}", f"v1beta1.{GROUP}")
#: How often Prometheus scrapes the routers (the chart's podMonitor.interval, 30 s by default).
SCRAPE_INTERVAL = "1s"
#: How often the adapter lists the rules' series again (the adapter chart's default is 1m).
RELIST_INTERVAL = "1s"
#: The chart's release these objects are rendered from.
RELEASE = "gwp"
STUDIES_IN_FLIGHT = "gatewaypool_studies_in_flight"


def chart_values() -> dict[str, Any]:
    """The chart's values for its monitoring objects: the PodMonitor and the adapter's rules."""
    return {
        "podMonitor": {"enabled": True, "interval": SCRAPE_INTERVAL},
        "autoscaling": {"prometheusAdapter": {"rules": {"enabled": True}}},
    }


def chart_objects(cluster: Cluster) -> tuple[dict[str, Any], dict[str, Any]]:
    """The chart's PodMonitor and adapter-rules ConfigMap, rendered for namespace ``monitoring``."""
    rendered = cluster.render(NAMESPACE, RELEASE, chart_values())
    [monitor] = [o for o in rendered if o["kind"] == "PodMonitor"]
    [rules] = [
        o
        for o in rendered
        if o["kind"] == "ConfigMap"
        and o["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "autoscaling"
    ]
    return monitor, rules


def _label(name: str) -> str:
    """A Kubernetes label's name as service discovery exposes it (app.kubernetes.io/name)."""
    return "".join(c if c.isalnum() else "_" for c in name)


_RELABELING_FIELDS = {
    "sourceLabels": "source_labels",
    "targetLabel": "target_label",
    "regex": "regex",
    "replacement": "replacement",
    "separator": "separator",
    "action": "action",
}
_ENDPOINT_FIELDS = {"port", "path", "interval", "scrapeTimeout", "relabelings"}


def scrape_config(monitor: dict[str, Any]) -> list[dict[str, Any]]:
    """The scrape jobs Prometheus Operator generates for `monitor` (a PodMonitor).

    One job per ``podMetricsEndpoints`` entry: pods found by Kubernetes pod
    discovery, kept when their labels match the selector and their container
    port is the endpoint's; Failed and Succeeded pods dropped; ``namespace``,
    ``container``, ``pod``, ``job`` and ``endpoint`` labels added; then the
    endpoint's own relabelings. Only what the chart's PodMonitor uses is
    supported: anything else raises, so that a change of the chart cannot go
    unnoticed here.
    """
    name = f"{monitor['metadata']['namespace']}/{monitor['metadata']['name']}"
    spec = dict(monitor["spec"])
    unknown = set(spec) - {"namespaceSelector", "selector", "podMetricsEndpoints"}
    if unknown:
        raise ValueError(f"PodMonitor {name}: spec fields {sorted(unknown)} are not translated")
    namespaces = spec.get("namespaceSelector") or {}
    discovery: dict[str, Any] = {"role": "pod"}
    if namespaces.get("matchNames"):
        discovery["namespaces"] = {"names": list(namespaces["matchNames"])}
    elif namespaces != {"any": True}:
        raise ValueError(f"PodMonitor {name}: namespaceSelector {namespaces} is not translated")
    selector = spec.get("selector") or {}
    if set(selector) - {"matchLabels"}:
        raise ValueError(f"PodMonitor {name}: selector {selector} is not translated")
    keep_labels = [
        {
            "action": "keep",
            "source_labels": [
                f"__meta_kubernetes_pod_label_{_label(key)}",
                f"__meta_kubernetes_pod_labelpresent_{_label(key)}",
            ],
            "regex": f"({value});true",
        }
        for key, value in sorted((selector.get("matchLabels") or {}).items())
    ]
    jobs = []
    for index, endpoint in enumerate(spec["podMetricsEndpoints"]):
        unknown = set(endpoint) - _ENDPOINT_FIELDS
        if unknown:
            raise ValueError(f"PodMonitor {name}: endpoint fields {sorted(unknown)} not translated")
        relabelings = []
        for relabeling in endpoint.get("relabelings") or []:
            if set(relabeling) - set(_RELABELING_FIELDS):
                raise ValueError(f"PodMonitor {name}: relabeling {relabeling} is not translated")
            relabelings.append({_RELABELING_FIELDS[k]: v for k, v in relabeling.items()})
        job: dict[str, Any] = {
            "job_name": f"podMonitor/{name}/{index}",
            "honor_labels": False,
            "kubernetes_sd_configs": [discovery],
            "metrics_path": endpoint.get("path", "/metrics"),
            "relabel_configs": [
                {"source_labels": ["job"], "target_label": "__tmp_prometheus_job_name"},
                *keep_labels,
                {
                    "action": "drop",
                    "source_labels": ["__meta_kubernetes_pod_phase"],
                    "regex": "(Failed|Succeeded)",
                },
                {
                    "action": "keep",
                    "source_labels": ["__meta_kubernetes_pod_container_port_name"],
                    "regex": endpoint["port"],
                },
                {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
                {
                    "source_labels": ["__meta_kubernetes_pod_container_name"],
                    "target_label": "container",
                },
                {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
                {"target_label": "job", "replacement": name},
                {"target_label": "endpoint", "replacement": endpoint["port"]},
                *relabelings,
            ],
        }
        if endpoint.get("interval"):
            job["scrape_interval"] = endpoint["interval"]
        if endpoint.get("scrapeTimeout"):
            job["scrape_timeout"] = endpoint["scrapeTimeout"]
        jobs.append(job)
    return jobs


def _meta(name: str, labels: dict[str, str], namespaced: bool = True) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "labels": dict(labels)}
    if namespaced:
        meta["namespace"] = NAMESPACE
    return meta


def _cluster_role_binding(name: str, role: str, account: str, namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": namespace}],
    }


_RESTRICTED = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "runAsUser": 65534,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


def prometheus_manifests(monitor: dict[str, Any]) -> list[dict[str, Any]]:
    """Prometheus, as the upstream chart installs it, scraping what `monitor` selects."""
    labels = {"app.kubernetes.io/name": PROMETHEUS}
    config = {
        "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL},
        "scrape_configs": scrape_config(monitor),
    }
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(PROMETHEUS, labels)},
        {
            # What pod discovery needs, as the upstream chart's server ClusterRole grants it.
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": _meta("gatewaypool-tests:prometheus", labels, namespaced=False),
            "rules": [
                {
                    "apiGroups": [""],
                    "resources": ["nodes", "services", "endpoints", "pods"],
                    "verbs": ["get", "list", "watch"],
                },
                {
                    "apiGroups": ["discovery.k8s.io"],
                    "resources": ["endpointslices"],
                    "verbs": ["get", "list", "watch"],
                },
                {"nonResourceURLs": ["/metrics"], "verbs": ["get"]},
            ],
        },
        _cluster_role_binding(
            "gatewaypool-tests:prometheus",
            "gatewaypool-tests:prometheus",
            PROMETHEUS,
            NAMESPACE,
        ),
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": _meta(f"{PROMETHEUS}-config", labels),
            "data": {"prometheus.yml": yaml.safe_dump(config, sort_keys=False)},
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": _meta(PROMETHEUS, labels),
            "spec": {
                "selector": dict(labels),
                "ports": [{"name": "http", "port": PROMETHEUS_PORT, "targetPort": "http"}],
            },
        },
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": _meta(PROMETHEUS, labels),
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": dict(labels)},
                "template": {
                    "metadata": {"labels": dict(labels)},
                    "spec": {
                        "serviceAccountName": PROMETHEUS,
                        "volumes": [
                            {"name": "config", "configMap": {"name": f"{PROMETHEUS}-config"}},
                            {"name": "data", "emptyDir": {}},
                        ],
                        "terminationGracePeriodSeconds": 5,
                        "containers": [
                            {
                                "name": PROMETHEUS,
                                "image": PROMETHEUS_IMAGE,
                                "args": [
                                    "--config.file=/etc/prometheus/prometheus.yml",
                                    # On the emptyDir at /tmp: the kubelet stand-in
                                    # cannot lay a mount over a missing top folder
                                    # such as the upstream chart's /data.
                                    "--storage.tsdb.path=/tmp/data",
                                    "--storage.tsdb.retention.time=1h",
                                    f"--web.listen-address=:{PROMETHEUS_PORT}",
                                    "--log.level=warn",
                                ],
                                "ports": [{"name": "http", "containerPort": PROMETHEUS_PORT}],
                                "readinessProbe": {
                                    "httpGet": {"path": "/-/ready", "port": "http"},
                                    "periodSeconds": 1,
                                },
                                "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}},
                                "securityContext": _RESTRICTED,
                                "volumeMounts": [
                                    {"name": "config", "mountPath": "/etc/prometheus"},
                                    {"name": "data", "mountPath": "/tmp"},
                                ],
                            }
                        ],
                    },
                },
            },
        },
    ]


def adapter_manifests(rules: dict[str, Any]) -> list[dict[str, Any]]:
    """The adapter, as the prometheus-adapter chart installs it with ``rules.existing``."""
    labels = {"app.kubernetes.io/name": ADAPTER}
    prometheus_url = f"http://{PROMETHEUS}.{NAMESPACE}.svc:{PROMETHEUS_PORT}"
    account = ADAPTER
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(ADAPTER, labels)},
        # Delegated authentication and authorization, as every aggregated API server has.
        _cluster_role_binding(
            f"{ADAPTER}:system:auth-delegator", "system:auth-delegator", account, NAMESPACE
        ),
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": f"{ADAPTER}-auth-reader", "namespace": "kube-system"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": "extension-apiserver-authentication-reader",
            },
            "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": NAMESPACE}],
        },
        {
            # It resolves a label selector to the objects' names.
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": _meta(f"{ADAPTER}-resource-reader", labels, namespaced=False),
            "rules": [
                {
                    "apiGroups": [""],
                    "resources": ["namespaces", "pods", "services", "configmaps"],
                    "verbs": ["get", "list", "watch"],
                }
            ],
        },
        _cluster_role_binding(
            f"{ADAPTER}-resource-reader", f"{ADAPTER}-resource-reader", account, NAMESPACE
        ),
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": _meta(f"{ADAPTER}-server-resources", labels, namespaced=False),
            "rules": [{"apiGroups": [GROUP], "resources": ["*"], "verbs": ["*"]}],
        },
        _cluster_role_binding(
            f"{ADAPTER}-hpa-controller",
            f"{ADAPTER}-server-resources",
            "horizontal-pod-autoscaler",
            "kube-system",
        ),
        rules,
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": _meta(ADAPTER, labels),
            "spec": {
                "selector": dict(labels),
                "ports": [{"name": "https", "port": 443, "targetPort": "https"}],
            },
        },
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": _meta(ADAPTER, labels),
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": dict(labels)},
                "template": {
                    "metadata": {"labels": dict(labels)},
                    "spec": {
                        "serviceAccountName": account,
                        "volumes": [
                            {"name": "config", "configMap": {"name": rules["metadata"]["name"]}},
                            {"name": "tmp", "emptyDir": {}},
                        ],
                        "terminationGracePeriodSeconds": 5,
                        "containers": [
                            {
                                "name": ADAPTER,
                                "image": ADAPTER_IMAGE,
                                "args": [
                                    "--secure-port=6443",
                                    "--cert-dir=/tmp/cert",
                                    f"--prometheus-url={prometheus_url}",
                                    f"--metrics-relist-interval={RELIST_INTERVAL}",
                                    "--config=/etc/adapter/config.yaml",
                                    "--v=2",
                                ],
                                "ports": [{"name": "https", "containerPort": 6443}],
                                "readinessProbe": {
                                    "httpGet": {
                                        "path": "/readyz",
                                        "port": "https",
                                        "scheme": "HTTPS",
                                    },
                                    "periodSeconds": 1,
                                },
                                "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
                                "securityContext": _RESTRICTED,
                                "volumeMounts": [
                                    {"name": "config", "mountPath": "/etc/adapter"},
                                    {"name": "tmp", "mountPath": "/tmp"},
                                ],
                            }
                        ],
                    },
                },
            },
        },
        *(
            {
                "apiVersion": "apiregistration.k8s.io/v1",
                "kind": "APIService",
                "metadata": _meta(name, labels, namespaced=False),
                "spec": {
                    "service": {"name": ADAPTER, "namespace": NAMESPACE},
                    "group": GROUP,
                    "version": name.split(".", 1)[0],
                    "insecureSkipTLSVerify": True,
                    "groupPriorityMinimum": 100,
                    "versionPriority": 200 if name.startswith("v1beta2") else 100,
                },
            }
            for name in APISERVICES
        ),
    ]


def deploy(cluster: Cluster) -> None:
    """Apply Prometheus and the adapter (``kubectl apply --server-side``); no wait."""
    monitor, rules = chart_objects(cluster)
    core: Any = kubernetes.client.CoreV1Api(cluster.api())
    try:
        core.create_namespace({"metadata": {"name": NAMESPACE}})
    except ApiException as exc:
        if exc.status != 409:
            raise
    # The chart's ConfigMap as Helm applies it, the rest as a user applies upstream charts.
    cluster.apply([rules])
    cluster.kubectl(
        "apply",
        "--server-side",
        "--field-manager=kubectl",
        "-f",
        "-",
        stdin=yaml.safe_dump_all(prometheus_manifests(monitor) + adapter_manifests(rules)),
    )


def _available(cluster: Cluster, name: str) -> tuple[bool, str]:
    registration: Any = kubernetes.client.ApiregistrationV1Api(cluster.api())
    found = registration.read_api_service(name)
    for condition in (found.status.conditions if found.status else None) or []:
        if condition.type == "Available":
            return condition.status == "True", f"{condition.reason}: {condition.message}"
    return False, "no Available condition yet"


def _all_available(cluster: Cluster) -> bool:
    return all(_available(cluster, name)[0] for name in APISERVICES)


def wait_available(cluster: Cluster, *, timeout: float = 120) -> None:
    """Wait until the aggregation layer serves ``custom.metrics.k8s.io`` (both APIServices).

    On a timeout the error carries :func:`diagnosis`.
    """
    try:
        wait_until(lambda: _all_available(cluster), timeout=timeout, what=f"APIServices {GROUP}")
    except TimeoutError as exc:
        raise TimeoutError(f"{exc}\n{diagnosis(cluster)}") from exc


def _get(cluster: Cluster, path: str, params: dict[str, str]) -> Any:
    """``GET`` `path` of the API server as the admin; the decoded JSON body."""
    api = cluster.api()
    method, url, headers, body, post = api.param_serialize(
        "GET",
        path,
        query_params=list(params.items()),
        header_params={"Accept": "application/json"},
        auth_settings=["BearerToken"],
    )
    answer = api.call_api(method, url, headers, body, post, _request_timeout=10)
    if answer.status >= 400:
        raise ApiException(status=answer.status, reason=answer.response.data)
    return json.loads(answer.response.data)


def prometheus_api(cluster: Cluster, path: str, **params: str) -> Any:
    """Prometheus' HTTP API (``/api/v1/...``), through the API server's Service proxy: its data."""
    proxy = f"/api/v1/namespaces/{NAMESPACE}/services/{PROMETHEUS}:http/proxy"
    return _get(cluster, proxy + path, params)["data"]


def diagnosis(cluster: Cluster) -> str:
    """The APIServices' conditions, Prometheus' targets, the pods' logs' ends."""
    lines = [f"APIService {name}: {_available(cluster, name)[1]}" for name in APISERVICES]
    try:
        targets = prometheus_api(cluster, "/api/v1/targets", state="active")
        for target in targets.get("activeTargets") or []:
            lines.append(
                f"target {target.get('scrapeUrl')} {target.get('labels')}: "
                f"{target.get('health')} {target.get('lastError')}"
            )
    except Exception as exc:  # a diagnosis reports what it can
        lines.append(f"Prometheus' targets: {exc!r}")
    for pod in cluster.kubelet.pods(NAMESPACE):
        lines.append(f"--- pod {pod.name} ---")
        lines.append(cluster.kubelet.log(pod)[-3000:])
    lines += [f"kubelet error: {error}" for error in cluster.kubelet.errors[-5:]]
    return "\n".join(lines)


def pods_metric(
    cluster: Cluster, namespace: str, selector: str, metric: str = STUDIES_IN_FLIGHT
) -> dict[str, float]:
    """What the HPA controller reads: `metric` of the pods `selector` picks, by pod name.

    ``GET /apis/custom.metrics.k8s.io/v1beta2/namespaces/NS/pods/*/METRIC?labelSelector=...``;
    raises ``ApiException`` when the adapter has no value (404).
    """
    answer = _get(
        cluster,
        f"/apis/{GROUP}/v1beta2/namespaces/{namespace}/pods/*/{metric}",
        {"labelSelector": selector},
    )
    return {
        item["describedObject"]["name"]: float(quantity.parse(item["value"])[0])
        for item in answer.get("items", [])
    }
