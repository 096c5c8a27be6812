"""The emulator writes as the real API server does, through the real client over HTTP.

One test per behaviour the operator's server-side apply depends on: apply
and managed fields, strategic merge by the schemas' keys, defaulting,
canonical quantities, immutable fields, resourceVersion preconditions, watch
resumption with 410 Gone, and deletion with orphaning or cascading. Each
asserts something an emulator that merges lists blindly, defaults nothing
and replays every watch would get wrong.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import kubernetes.client
import kubernetes.watch
import pytest
from kubernetes.client.exceptions import ApiException

from gatewaypool_local.peers import wait_until
from support.cluster import NS
from support.kubeemu import KubeEmulator
from support.kubeemu.watch import next_bookmark

APPLY = "application/apply-patch+yaml"
STRATEGIC = "application/strategic-merge-patch+json"
MERGE = "application/merge-patch+json"
OPERATOR = "gatewaypool-operator"
LABELS = {"app.kubernetes.io/instance": "ct", "app.kubernetes.io/component": "gateway"}


@pytest.fixture
def kube() -> Iterator[KubeEmulator]:
    with KubeEmulator() as emulator:
        emulator.create_namespace(NS)
        yield emulator


@pytest.fixture
def api(kube: KubeEmulator) -> Iterator[kubernetes.client.ApiClient]:
    with kube.api_client() as client:
        yield client


def gateway_sts(
    *,
    replicas: int = 2,
    env: dict[str, str] | None = None,
    labels: dict[str, str] | None = None,
    **spec: Any,
) -> dict[str, Any]:
    """A StatefulSet as the operator will apply it (no server defaults in it)."""
    container: dict[str, Any] = {
        "name": "gateway",
        "image": "orthancteam/orthanc:24.1.2",
        "ports": [{"name": "dicom", "containerPort": 4242}],
        "env": [{"name": k, "value": v} for k, v in (env or {"A": "1"}).items()],
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": "ct-gw", "labels": {**LABELS, **(labels or {})}},
        "spec": {
            "replicas": replicas,
            "serviceName": "ct-gw",
            "selector": {"matchLabels": LABELS},
            "template": {"metadata": {"labels": LABELS}, "spec": {"containers": [container]}},
            **spec,
        },
    }


def status_of(call: Callable[[], Any]) -> ApiException:
    with pytest.raises(ApiException) as error:
        call()
    return error.value


def body_of(error: ApiException) -> dict[str, Any]:
    loaded = json.loads(error.body)
    assert isinstance(loaded, dict)
    return loaded


def managed(obj: Any) -> dict[str, dict[str, Any]]:
    """managedFields by manager, as plain dicts."""
    return {entry.manager: entry.to_dict() for entry in obj.metadata.managed_fields or []}


def test_server_side_apply(kube: KubeEmulator, api: kubernetes.client.ApiClient) -> None:
    apps = kubernetes.client.AppsV1Api(api)

    def apply(body: dict[str, Any], manager: str = OPERATOR, *, force: bool = True) -> Any:
        return apps.patch_namespaced_stateful_set(
            "ct-gw", NS, body, field_manager=manager, force=force, _content_type=APPLY
        )

    missing = status_of(
        lambda: apps.patch_namespaced_stateful_set("ct-gw", NS, gateway_sts(), _content_type=APPLY)
    )
    assert missing.status == 400
    assert "fieldManager" in body_of(missing)["message"]

    created = apply(gateway_sts(env={"A": "1", "B": "2"}, labels={"team": "imaging"}))
    assert created.metadata.uid, "apply creates an absent object"
    entry = managed(created)[OPERATOR]
    assert (entry["operation"], entry["api_version"], entry["fields_type"]) == (
        "Apply",
        "apps/v1",
        "FieldsV1",
    )
    assert entry["time"] is not None
    fields = entry["fields_v1"]
    container = fields["f:spec"]["f:template"]["f:spec"]["f:containers"]['k:{"name":"gateway"}']
    assert "." in container, "a list item is owned itself, and its fields"
    assert set(container["f:env"]) == {'k:{"name":"A"}', 'k:{"name":"B"}'}
    # A port applied without protocol is keyed with the server's default.
    assert set(container["f:ports"]) == {'k:{"containerPort":4242,"protocol":"TCP"}'}
    assert fields["f:metadata"]["f:labels"]["f:team"] == {}
    assert "f:podManagementPolicy" not in fields["f:spec"], "defaults are nobody's"
    assert created.spec.pod_management_policy == "OrderedReady"

    # Another manager changing a field the operator owns: 409 naming both.
    conflict = status_of(lambda: apply(gateway_sts(replicas=5), "autoscaler", force=False))
    assert conflict.status == 409
    message = body_of(conflict)["message"]
    assert body_of(conflict)["reason"] == "Conflict"
    assert 'conflict with "gatewaypool-operator"' in message
    assert ".spec.replicas" in message
    # ... the same value is no conflict: both own it.
    shared = apply(
        {**gateway_sts(replicas=2, labels={"team": "imaging"}), "spec": {"replicas": 2}},
        "autoscaler",
        force=False,
    )
    assert shared.metadata.resource_version != created.metadata.resource_version
    assert "f:replicas" in managed(shared)["autoscaler"]["fields_v1"]["f:spec"]
    assert "f:replicas" in managed(shared)[OPERATOR]["fields_v1"]["f:spec"]

    # force takes the field over.
    forced = apply(
        {**gateway_sts(labels={"team": "imaging"}), "spec": {"replicas": 5}},
        "autoscaler",
        force=True,
    )
    assert forced.spec.replicas == 5
    assert "f:replicas" not in managed(forced)[OPERATOR]["fields_v1"]["f:spec"]

    # What the operator applied before and leaves out now goes; env merges by name;
    # the label the autoscaler also applied stays, only the operator's claim goes.
    pruned = apply(gateway_sts(replicas=5, env={"A": "1"}))
    env = pruned.spec.template.spec.containers[0].env
    assert [(e.name, e.value) for e in env] == [("A", "1")]
    assert pruned.metadata.labels["team"] == "imaging"
    assert "f:team" not in managed(pruned)[OPERATOR]["fields_v1"]["f:metadata"]["f:labels"]
    assert len(pruned.spec.template.spec.containers[0].ports) == 1

    # An apply that changes nothing is no write.
    again = apply(gateway_sts(replicas=5, env={"A": "1"}))
    assert again.metadata.resource_version == pruned.metadata.resource_version

    # Other writes record Update entries, named by fieldManager or the User-Agent.
    patched = apps.patch_namespaced_stateful_set(
        "ct-gw", NS, {"metadata": {"annotations": {"note": "x"}}}, _content_type=MERGE
    )
    by_agent = managed(patched)["OpenAPI-Generator"]
    assert by_agent["operation"] == "Update"
    assert by_agent["fields_v1"] == {"f:metadata": {"f:annotations": {".": {}, "f:note": {}}}}
    kube.write_status("apps", "v1", "statefulsets", NS, "ct-gw", status={"replicas": 5})
    after_status = apps.read_namespaced_stateful_set("ct-gw", NS)
    status_entry = managed(after_status)["kube-controller-manager"]
    assert status_entry["subresource"] == "status"


def test_apply_to_a_custom_resource_uses_the_crd_schema(
    kube: KubeEmulator, api: kubernetes.client.ApiClient
) -> None:
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "gatewaypools.gatewaypool.io"},
        "spec": {
            "group": "gatewaypool.io",
            "scope": "Namespaced",
            "names": {"kind": "GatewayPool", "plural": "gatewaypools"},
            "versions": [
                {
                    "name": "v1alpha1",
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {
                                    "type": "object",
                                    "properties": {
                                        "callingAETitles": {
                                            "type": "array",
                                            "items": {"type": "string"},
                                            "x-kubernetes-list-type": "set",
                                        },
                                        "tolerations": {
                                            "type": "array",
                                            "items": {"type": "object"},
                                        },
                                    },
                                }
                            },
                        }
                    },
                }
            ],
        },
    }
    kube.apply_crd(crd)
    custom = kubernetes.client.CustomObjectsApi(api)

    def apply(spec: dict[str, Any], manager: str) -> Any:
        body = {"apiVersion": "gatewaypool.io/v1alpha1", "kind": "GatewayPool"}
        body |= {"metadata": {"name": "ct"}, "spec": spec}
        return custom.patch_namespaced_custom_object(
            "gatewaypool.io",
            "v1alpha1",
            NS,
            "gatewaypools",
            "ct",
            body,
            field_manager=manager,
            force=True,
            _content_type=APPLY,
        )

    apply({"callingAETitles": ["CT1"], "tolerations": [{"key": "a"}]}, "one")
    merged = apply({"callingAETitles": ["MR1"], "tolerations": [{"key": "b"}]}, "two")
    assert merged["spec"]["callingAETitles"] == ["CT1", "MR1"], "a set list merges"
    assert merged["spec"]["tolerations"] == [{"key": "b"}], "a list without a type is atomic"


def test_strategic_merge_patch(api: kubernetes.client.ApiClient) -> None:
    apps = kubernetes.client.AppsV1Api(api)
    body = gateway_sts(env={"A": "1", "B": "2"})
    body["spec"]["template"]["spec"]["containers"].append({"name": "sidecar", "image": "busybox"})
    body["metadata"]["finalizers"] = ["a"]
    apps.create_namespaced_stateful_set(NS, body)

    def patch(change: dict[str, Any]) -> Any:
        return apps.patch_namespaced_stateful_set("ct-gw", NS, change, _content_type=STRATEGIC)

    def containers(change: dict[str, Any]) -> dict[str, Any]:
        return {"spec": {"template": {"spec": {"containers": change}}}}

    merged = patch(containers([{"name": "gateway", "env": [{"name": "C", "value": "3"}]}]))
    names = [c.name for c in merged.spec.template.spec.containers]
    assert names == ["gateway", "sidecar"], "containers merge by name"
    assert [e.name for e in merged.spec.template.spec.containers[0].env] == ["A", "B", "C"]

    deleted = patch(containers([{"name": "sidecar", "$patch": "delete"}]))
    assert [c.name for c in deleted.spec.template.spec.containers] == ["gateway"]

    replaced = patch(
        containers(
            [{"name": "gateway", "env": [{"name": "Z", "value": "0"}, {"$patch": "replace"}]}]
        )
    )
    assert [e.name for e in replaced.spec.template.spec.containers[0].env] == ["Z"]

    ordered = patch(
        containers(
            [
                {
                    "name": "gateway",
                    "env": [{"name": "Y", "value": "9"}],
                    "$setElementOrder/env": [{"name": "Y"}, {"name": "Z"}],
                }
            ]
        )
    )
    assert [e.name for e in ordered.spec.template.spec.containers[0].env] == ["Y", "Z"]

    finalizers = patch({"metadata": {"finalizers": ["b"], "labels": {"team": None}}})
    assert finalizers.metadata.finalizers == ["a", "b"], "a merge-strategy set unions"
    router = {
        "metadata": {"name": "ct-router"},
        "spec": {
            "selector": {"matchLabels": {"a": "b"}},
            "template": {
                "metadata": {"labels": {"a": "b"}},
                "spec": {"containers": [{"name": "router", "image": "router:1"}]},
            },
        },
    }
    apps.create_namespaced_deployment(NS, router)
    retained = apps.patch_namespaced_deployment(
        "ct-router",
        NS,
        {"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate"}}},
        _content_type=STRATEGIC,
    )
    assert retained.spec.strategy.type == "Recreate"
    assert retained.spec.strategy.rolling_update is None, "$retainKeys dropped the rest"
    refused = status_of(lambda: patch({"spec": {"$bogus": 1}}))
    assert refused.status == 400
    # JSON merge patch still replaces lists.
    whole = apps.patch_namespaced_stateful_set(
        "ct-gw", NS, containers([{"name": "only", "image": "x"}]), _content_type=MERGE
    )
    assert [c.name for c in whole.spec.template.spec.containers] == ["only"]


def test_defaults_are_filled_in(kube: KubeEmulator, api: kubernetes.client.ApiClient) -> None:
    apps = kubernetes.client.AppsV1Api(api)
    core = kubernetes.client.CoreV1Api(api)
    sts = apps.create_namespaced_stateful_set(NS, gateway_sts())
    assert sts.spec.pod_management_policy == "OrderedReady"
    assert sts.spec.update_strategy.type == "RollingUpdate"
    assert sts.spec.update_strategy.rolling_update.partition == 0
    assert sts.spec.revision_history_limit == 10
    retention = sts.spec.persistent_volume_claim_retention_policy
    assert (retention.when_deleted, retention.when_scaled) == ("Retain", "Retain")
    pod = sts.spec.template.spec
    assert (pod.restart_policy, pod.dns_policy, pod.scheduler_name) == (
        "Always",
        "ClusterFirst",
        "default-scheduler",
    )
    assert pod.termination_grace_period_seconds == 30
    assert pod.security_context is not None
    container = pod.containers[0]
    assert container.image_pull_policy == "IfNotPresent"
    assert container.termination_message_path == "/dev/termination-log"
    assert container.termination_message_policy == "File"
    assert container.ports[0].protocol == "TCP"

    deployment = {
        "metadata": {"name": "ct-router"},
        "spec": {
            "selector": {"matchLabels": {"a": "b"}},
            "template": {
                "metadata": {"labels": {"a": "b"}},
                "spec": {"containers": [{"name": "router", "image": "router:latest"}]},
            },
        },
    }
    router = apps.create_namespaced_deployment(NS, deployment)
    assert router.spec.strategy.type == "RollingUpdate"
    assert router.spec.strategy.rolling_update.max_surge == "25%"
    assert router.spec.revision_history_limit == 10
    assert router.spec.progress_deadline_seconds == 600
    assert router.spec.template.spec.containers[0].image_pull_policy == "Always"

    service = core.create_namespaced_service(
        NS, {"metadata": {"name": "ct"}, "spec": {"ports": [{"port": 104}]}}
    )
    assert service.spec.type == "ClusterIP"
    assert service.spec.session_affinity == "None"
    assert service.spec.cluster_ip and service.spec.cluster_ip != "None"
    assert service.spec.ip_families == ["IPv4"]
    assert service.spec.internal_traffic_policy == "Cluster"
    assert service.spec.ports[0].protocol == "TCP"
    assert service.spec.ports[0].target_port == 104
    headless = core.create_namespaced_service(
        NS, {"metadata": {"name": "ct-gw"}, "spec": {"clusterIP": "None", "ports": [{"port": 1}]}}
    )
    assert headless.spec.cluster_ip == "None"
    # A port applied without protocol is the defaulted TCP port, not a second one.
    applied = core.patch_namespaced_service(
        "ct",
        NS,
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "ct"},
            "spec": {"ports": [{"port": 104, "name": "dicom"}]},
        },
        field_manager=OPERATOR,
        _content_type=APPLY,
    )
    assert [(p.port, p.protocol, p.name) for p in applied.spec.ports] == [(104, "TCP", "dicom")]
    assert applied.spec.cluster_ip == service.spec.cluster_ip, "an update keeps the IP"


def test_autoscaler_defaults_are_filled_in(
    kube: KubeEmulator, api: kubernetes.client.ApiClient
) -> None:
    """autoscaling/v2 SetDefaults_HorizontalPodAutoscaler, as the real server applies it."""
    target = {"apiVersion": "gatewaypool.io/v1alpha1", "kind": "GatewayPool", "name": "ct"}
    autoscaling = kubernetes.client.AutoscalingV2Api(api)
    bare = autoscaling.create_namespaced_horizontal_pod_autoscaler(
        NS, {"metadata": {"name": "bare"}, "spec": {"scaleTargetRef": target, "maxReplicas": 3}}
    )
    assert bare.spec.min_replicas == 1
    [metric] = bare.spec.metrics
    assert (metric.type, metric.resource.name) == ("Resource", "cpu")
    assert (metric.resource.target.type, metric.resource.target.average_utilization) == (
        "Utilization",
        80,
    )
    assert bare.spec.behavior is None, "no behavior sent, none stored"

    partial = autoscaling.create_namespaced_horizontal_pod_autoscaler(
        NS,
        {
            "metadata": {"name": "partial"},
            "spec": {
                "scaleTargetRef": target,
                "maxReplicas": 3,
                "behavior": {"scaleDown": {"stabilizationWindowSeconds": 600}},
            },
        },
    )
    up, down = partial.spec.behavior.scale_up, partial.spec.behavior.scale_down
    assert (up.stabilization_window_seconds, up.select_policy) == (0, "Max")
    assert [(p.type, p.value, p.period_seconds) for p in up.policies] == [
        ("Pods", 4, 15),
        ("Percent", 100, 15),
    ]
    assert (down.stabilization_window_seconds, down.select_policy) == (600, "Max")
    assert [(p.type, p.value, p.period_seconds) for p in down.policies] == [("Percent", 100, 15)]
    # The scale-down window alone stays unset: the controller's flag decides it.
    unset = autoscaling.create_namespaced_horizontal_pod_autoscaler(
        NS,
        {
            "metadata": {"name": "unset"},
            "spec": {
                "scaleTargetRef": target,
                "maxReplicas": 3,
                "behavior": {"scaleUp": {"selectPolicy": "Min"}},
            },
        },
    )
    assert unset.spec.behavior.scale_up.select_policy == "Min"
    assert unset.spec.behavior.scale_down.stabilization_window_seconds is None


def test_apply_with_a_list_map_key_twice_is_a_server_error(
    kube: KubeEmulator, api: kubernetes.client.ApiClient
) -> None:
    # The real server cannot build its typed patch object: 500, naming list and key.
    apps = kubernetes.client.AppsV1Api(api)
    body = gateway_sts()
    body["spec"]["template"]["spec"]["containers"][0]["env"] = [
        {"name": "A", "value": "1"},
        {"name": "A", "value": "2"},
    ]
    failed = status_of(
        lambda: apps.patch_namespaced_stateful_set(
            "ct-gw", NS, body, field_manager=OPERATOR, force=True, _content_type=APPLY
        )
    )
    assert failed.status == 500
    assert body_of(failed)["message"] == (
        "failed to create typed patch object (apps/v1, Kind=StatefulSet): "
        '.spec.template.spec.containers[name="gateway"].env: duplicate entries for key [name="A"]'
    )
    assert kube.get("StatefulSet", "ct-gw", NS) is None
    ports = gateway_sts()
    ports["spec"]["template"]["spec"]["containers"][0]["ports"].append(
        {"name": "again", "containerPort": 4242, "protocol": "TCP"}
    )
    failed = status_of(
        lambda: apps.patch_namespaced_stateful_set(
            "ct-gw", NS, ports, field_manager=OPERATOR, force=True, _content_type=APPLY
        )
    )
    assert failed.status == 500
    assert '[containerPort=4242,protocol="TCP"]' in body_of(failed)["message"]


def test_empty_strings_of_omitempty_fields_are_dropped(
    kube: KubeEmulator, api: kubernetes.client.ApiClient
) -> None:
    # The server encodes its Go structs again: optional strings are omitempty.
    apps = kubernetes.client.AppsV1Api(api)
    body = gateway_sts(env={"EMPTY": "", "SET": "1"})
    body["spec"]["template"]["spec"]["tolerations"] = [{"key": "", "operator": "Exists"}]
    body["spec"]["volumeClaimTemplates"] = [
        {"metadata": {"name": "data"}, "spec": {"storageClassName": "", "accessModes": []}}
    ]
    apps.patch_namespaced_stateful_set(
        "ct-gw", NS, body, field_manager=OPERATOR, force=True, _content_type=APPLY
    )
    stored = kube.get("StatefulSet", "ct-gw", NS) or {}
    pod = stored["spec"]["template"]["spec"]
    assert pod["containers"][0]["env"] == [{"name": "EMPTY"}, {"name": "SET", "value": "1"}]
    assert pod["tolerations"] == [{"operator": "Exists"}]
    # A pointer to "" is kept (no storage class at all); so are map entries.
    assert stored["spec"]["volumeClaimTemplates"][0]["spec"]["storageClassName"] == ""
    core = kubernetes.client.CoreV1Api(api)
    core.create_namespaced_config_map(NS, {"metadata": {"name": "m"}, "data": {"k": ""}})
    assert (kube.get("ConfigMap", "m", NS) or {})["data"] == {"k": ""}


def test_quantities_are_canonical(kube: KubeEmulator, api: kubernetes.client.ApiClient) -> None:
    apps = kubernetes.client.AppsV1Api(api)
    body = gateway_sts()
    container = body["spec"]["template"]["spec"]["containers"][0]
    container["resources"] = {
        "requests": {"cpu": "1000m", "memory": "1024Mi"},
        "limits": {"cpu": "0.5", "memory": "1.5Gi"},
    }
    body["spec"]["template"]["spec"]["volumes"] = [
        {"name": "scratch", "emptyDir": {"sizeLimit": "2000000"}}
    ]
    body["spec"]["volumeClaimTemplates"] = [
        {
            "metadata": {"name": "data"},
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": "1024Gi"}},
            },
        }
    ]
    apps.create_namespaced_stateful_set(NS, body)
    stored = kube.get("StatefulSet", "ct-gw", NS)
    assert stored is not None
    pod = stored["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"] == {
        "requests": {"cpu": "1", "memory": "1Gi"},
        "limits": {"cpu": "500m", "memory": "1536Mi"},
    }
    assert pod["volumes"][0]["emptyDir"]["sizeLimit"] == "2M"
    claim = stored["spec"]["volumeClaimTemplates"][0]
    assert claim["spec"]["resources"]["requests"]["storage"] == "1Ti"
    container["resources"] = {"requests": {"cpu": "lots"}}
    body["metadata"]["name"] = "other"
    bad = status_of(lambda: apps.create_namespaced_stateful_set(NS, body))
    assert bad.status == 400
    assert "cpu" in body_of(bad)["message"]


def test_immutable_fields(api: kubernetes.client.ApiClient) -> None:
    apps = kubernetes.client.AppsV1Api(api)
    core = kubernetes.client.CoreV1Api(api)
    apps.create_namespaced_stateful_set(NS, gateway_sts())

    def apply(body: dict[str, Any]) -> Any:
        return apps.patch_namespaced_stateful_set(
            "ct-gw", NS, body, field_manager=OPERATOR, force=True, _content_type=APPLY
        )

    claims = [{"metadata": {"name": "data"}, "spec": {"accessModes": ["ReadWriteOnce"]}}]
    for write in (
        lambda: apply(gateway_sts(volumeClaimTemplates=claims)),
        lambda: apps.patch_namespaced_stateful_set(
            "ct-gw", NS, {"spec": {"serviceName": "x"}}, _content_type=MERGE
        ),
        lambda: apps.patch_namespaced_stateful_set(
            "ct-gw", NS, {"spec": {"podManagementPolicy": "Parallel"}}, _content_type=STRATEGIC
        ),
    ):
        refused = status_of(write)
        assert refused.status == 422
        status = body_of(refused)
        assert status["reason"] == "Invalid"
        assert status["message"].startswith(
            'StatefulSet.apps "ct-gw" is invalid: spec: Forbidden: updates to statefulset spec '
            "for fields other than 'replicas', 'ordinals', 'template', 'updateStrategy'"
        )
    current = apps.read_namespaced_stateful_set("ct-gw", NS)
    current.spec.selector.match_labels = {"other": "x"}
    assert (
        status_of(lambda: apps.replace_namespaced_stateful_set("ct-gw", NS, current)).status == 422
    )
    assert apply(gateway_sts(replicas=4)).spec.replicas == 4, "replicas may change"

    deployment = {
        "metadata": {"name": "ct-router"},
        "spec": {
            "selector": {"matchLabels": {"a": "b"}},
            "template": {
                "metadata": {"labels": {"a": "b", "c": "d"}},
                "spec": {"containers": [{"name": "router", "image": "router:1"}]},
            },
        },
    }
    apps.create_namespaced_deployment(NS, deployment)
    moved = status_of(
        lambda: apps.patch_namespaced_deployment(
            "ct-router", NS, {"spec": {"selector": {"matchLabels": {"c": "d"}}}}
        )
    )
    assert moved.status == 422
    assert "spec.selector" in body_of(moved)["message"]
    service = core.create_namespaced_service(
        NS, {"metadata": {"name": "ct"}, "spec": {"ports": [{"port": 104}]}}
    )
    readdressed = status_of(
        lambda: core.patch_namespaced_service(
            "ct", NS, {"spec": {"clusterIP": "None"}}, _content_type=MERGE
        )
    )
    assert readdressed.status == 422
    assert service.spec.cluster_ip != "None"


def test_stale_resource_version_conflicts(api: kubernetes.client.ApiClient) -> None:
    apps = kubernetes.client.AppsV1Api(api)
    created = apps.create_namespaced_stateful_set(NS, gateway_sts())
    stale = created.metadata.resource_version
    apps.patch_namespaced_stateful_set("ct-gw", NS, {"spec": {"replicas": 3}}, _content_type=MERGE)
    body = gateway_sts(replicas=4)
    body["metadata"]["resourceVersion"] = stale
    expected = "the object has been modified; please apply your changes to the latest version"
    for write in (
        lambda: apps.replace_namespaced_stateful_set("ct-gw", NS, body),
        lambda: apps.patch_namespaced_stateful_set("ct-gw", NS, body, _content_type=STRATEGIC),
        lambda: apps.patch_namespaced_stateful_set(
            "ct-gw", NS, body, field_manager=OPERATOR, force=True, _content_type=APPLY
        ),
    ):
        refused = status_of(write)
        assert refused.status == 409
        assert expected in body_of(refused)["message"]
    current = apps.read_namespaced_stateful_set("ct-gw", NS)
    assert current.spec.replicas == 3
    body["metadata"]["resourceVersion"] = current.metadata.resource_version
    assert apps.replace_namespaced_stateful_set("ct-gw", NS, body).spec.replicas == 4


def test_watch_resumes_from_a_resource_version(
    kube: KubeEmulator, api: kubernetes.client.ApiClient
) -> None:
    core = kubernetes.client.CoreV1Api(api)
    first = core.create_namespaced_config_map(NS, {"metadata": {"name": "a"}})
    core.create_namespaced_config_map(NS, {"metadata": {"name": "b"}})
    core.patch_namespaced_config_map("a", NS, {"data": {"k": "v"}}, _content_type=MERGE)

    def events(**params: Any) -> list[tuple[str, str]]:
        seen: list[tuple[str, str]] = []
        watch = kubernetes.watch.Watch()
        for event in watch.stream(
            core.list_namespaced_config_map, NS, timeout_seconds=1, _request_timeout=10, **params
        ):
            seen.append((event["type"], event["object"].metadata.name))
        return seen

    resumed = events(resource_version=first.metadata.resource_version)
    assert resumed == [("ADDED", "b"), ("MODIFIED", "a")], "only what came after"
    assert sorted(events()) == [("ADDED", "a"), ("ADDED", "b")], "no version: the objects"
    assert sorted(events(resource_version="0", allow_watch_bookmarks=True)) == [
        ("ADDED", "a"),
        ("ADDED", "b"),
    ]
    kube.compact_history()
    expired = status_of(lambda: events(resource_version=first.metadata.resource_version))
    assert expired.status == 410

    with KubeEmulator(history_size=2) as small, small.api_client() as client:
        configmaps = kubernetes.client.CoreV1Api(client)
        early = configmaps.create_namespaced_config_map("x", {"metadata": {"name": "a"}})
        for name in ("b", "c", "d"):
            configmaps.create_namespaced_config_map("x", {"metadata": {"name": name}})
        watch = kubernetes.watch.Watch()
        stream = watch.stream(
            configmaps.list_namespaced_config_map,
            "x",
            resource_version=early.metadata.resource_version,
            timeout_seconds=1,
            _request_timeout=10,
        )
        with pytest.raises(ApiException) as gone:
            list(stream)
        assert gone.value.status == 410
        assert "too old resource version" in str(gone.value.reason)


def test_bookmarks_come_as_from_the_watch_cache() -> None:
    assert next_bookmark(100.0, None, 60.0) == 160.0
    assert next_bookmark(100.0, 150.0, 60.0) == 148.0, "2 s before the end"
    assert next_bookmark(100.0, 101.0, 60.0) is None, "a watch of 2 s or less gets none"
    with KubeEmulator(bookmark_interval=0.2) as kube, kube.api_client() as client:
        core = kubernetes.client.CoreV1Api(client)
        quiet = core.create_namespaced_config_map(NS, {"metadata": {"name": "quiet"}})
        busy = core.create_namespaced_config_map(NS, {"metadata": {"name": "busy"}})

        def events(**params: Any) -> list[tuple[str, str]]:
            seen: list[tuple[str, str]] = []
            watch = kubernetes.watch.Watch()
            for event in watch.stream(
                core.list_namespaced_config_map,
                NS,
                field_selector="metadata.name=quiet",
                resource_version=quiet.metadata.resource_version,
                timeout_seconds=3,
                _request_timeout=10,
                **params,
            ):
                raw = event["raw_object"]
                seen.append((event["type"], raw["metadata"]["resourceVersion"]))
                assert raw["kind"] == "ConfigMap" and raw["apiVersion"] == "v1"
            return seen

        # The other object's write is filtered out, and its version is what
        # the bookmarks say: a client resuming from one misses nothing of its own.
        marks = events(allow_watch_bookmarks=True)
        assert marks, "bookmarks while the watch lasts"
        assert set(marks) == {("BOOKMARK", busy.metadata.resource_version)}
        assert events() == [], "none unless asked for"


def test_delete_orphans_or_cascades(kube: KubeEmulator, api: kubernetes.client.ApiClient) -> None:
    apps = kubernetes.client.AppsV1Api(api)
    core = kubernetes.client.CoreV1Api(api)

    def owned_by(owner: Any) -> list[dict[str, Any]]:
        return [
            {
                "apiVersion": "apps/v1",
                "kind": "StatefulSet",
                "name": owner.metadata.name,
                "uid": owner.metadata.uid,
                "controller": True,
            }
        ]

    sts = apps.create_namespaced_stateful_set(NS, gateway_sts())
    for name in ("ct-gw-0", "ct-gw-1"):
        kube.create(
            "Pod",
            {"metadata": {"name": name, "ownerReferences": owned_by(sts)}},
            namespace=NS,
        )
    kube.create("PersistentVolumeClaim", {"metadata": {"name": "data-ct-gw-0"}}, namespace=NS)
    stale = status_of(
        lambda: apps.delete_namespaced_stateful_set(
            "ct-gw",
            NS,
            body=kubernetes.client.V1DeleteOptions(
                propagation_policy="Orphan",
                preconditions=kubernetes.client.V1Preconditions(uid="not-its-uid"),
            ),
        )
    )
    assert stale.status == 409
    assert "Precondition failed: UID in precondition: not-its-uid" in body_of(stale)["message"]
    apps.delete_namespaced_stateful_set(
        "ct-gw",
        NS,
        body=kubernetes.client.V1DeleteOptions(
            propagation_policy="Orphan",
            preconditions=kubernetes.client.V1Preconditions(uid=sts.metadata.uid),
        ),
    )
    # As on a real server, the object stays, held by the orphan finalizer,
    # until the garbage collector has detached its dependents.
    held = kube.get("StatefulSet", "ct-gw", NS)
    assert held is not None
    assert held["metadata"]["finalizers"] == ["orphan"]
    assert held["metadata"]["deletionTimestamp"]
    busy = status_of(lambda: apps.create_namespaced_stateful_set(NS, gateway_sts()))
    assert busy.status == 409
    wait_until(lambda: kube.get("StatefulSet", "ct-gw", NS) is None, timeout=10, what="orphaned")
    pods = kube.objects("Pod", NS)
    assert [p["metadata"]["name"] for p in pods] == ["ct-gw-0", "ct-gw-1"], "orphaned, kept"
    assert all("ownerReferences" not in p["metadata"] for p in pods)
    assert kube.objects("PersistentVolumeClaim", NS)

    again = apps.create_namespaced_stateful_set(NS, gateway_sts())
    for pod in pods:
        core.patch_namespaced_pod(
            pod["metadata"]["name"],
            NS,
            {"metadata": {"ownerReferences": owned_by(again)}},
            _content_type=MERGE,
        )
    apps.delete_namespaced_stateful_set("ct-gw", NS, propagation_policy="Background")
    assert kube.objects("Pod", NS) == [], "the garbage collector deleted the dependents"
    assert kube.objects("PersistentVolumeClaim", NS), "a PVC the set did not own stays"


def test_a_dependent_written_after_its_owner_went_is_collected(
    kube: KubeEmulator, api: kubernetes.client.ApiClient
) -> None:
    # A controller that read its owner just before the owner was deleted
    # still writes the child; the garbage collector removes it.
    core = kubernetes.client.CoreV1Api(api)
    owner = core.create_namespaced_config_map(NS, {"metadata": {"name": "owner"}})
    reference = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "name": "owner",
        "uid": owner.metadata.uid,
    }
    kept = core.create_namespaced_config_map(
        NS, {"metadata": {"name": "while-owned", "ownerReferences": [reference]}}
    )
    assert kept.metadata.name == "while-owned"
    assert kube.get("ConfigMap", "while-owned", NS) is not None, "its owner lives: kept"
    core.delete_namespaced_config_map("owner", NS)
    assert kube.get("ConfigMap", "while-owned", NS) is None
    late = core.create_namespaced_config_map(
        NS, {"metadata": {"name": "late", "ownerReferences": [reference]}}
    )
    assert late.metadata.name == "late", "the write itself succeeds"
    assert kube.get("ConfigMap", "late", NS) is None, "then the collector deletes it"
    unowned = core.create_namespaced_config_map(NS, {"metadata": {"name": "unowned"}})
    core.patch_namespaced_config_map(
        "unowned", NS, {"metadata": {"ownerReferences": [reference]}}, _content_type=MERGE
    )
    assert kube.get("ConfigMap", "unowned", NS) is None, "also when an update names the owner"
    assert unowned.metadata.name == "unowned"
