"""The Kubernetes API emulator against the real ``kubernetes`` client and kopf.

Each test talks HTTP to a fresh :class:`KubeEmulator` the way the operator
will: typed core/apps clients, ``CustomObjectsApi`` for GatewayPools, watches,
and kopf itself. What the emulator adds to kmock is what is asserted, so a
regression in the subclass (or a kmock upgrade that changes its internals)
fails here. Nothing sleeps: waits poll with a deadline.
"""

from __future__ import annotations

import http.client
import json
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kopf
import kubernetes.client
import kubernetes.watch
import pytest
from kopf.testing import KopfRunner
from kubernetes.client.exceptions import ApiException

from support.cluster import GROUP, NS, PLURAL, REPO, VERSION
from support.kubeemu import KubeEmulator

CRD_PATH = REPO / "crds" / "gatewaypool.io_gatewaypools.yaml"
MERGE = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"


def wait_until(condition: Callable[[], Any], *, timeout: float = 10.0, what: str = "") -> Any:
    """Poll ``condition`` until it returns something truthy; fail at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what or condition}")
        time.sleep(0.02)


def minimal_crd() -> dict[str, Any]:
    """The GatewayPool CRD's served shape, for when crds/ has no file (yet)."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{PLURAL}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {"kind": "GatewayPool", "plural": PLURAL, "shortNames": ["gwp"]},
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": {"type": "object"}},
                    "subresources": {
                        "status": {},
                        "scale": {
                            "specReplicasPath": ".spec.replicas",
                            "statusReplicasPath": ".status.replicas",
                            "labelSelectorPath": ".status.selector",
                        },
                    },
                }
            ],
        },
    }


def gatewaypool(name: str, replicas: int = 3) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "GatewayPool",
        "metadata": {"name": name},
        "spec": {"replicas": replicas, "gateway": {"image": "orthancteam/orthanc:24.1.2"}},
    }


def statefulset(name: str) -> dict[str, Any]:
    labels = {"app.kubernetes.io/instance": name, "app.kubernetes.io/component": "gateway"}
    return {
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "replicas": 2,
            "serviceName": name,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "gateway", "image": "orthanc"}]},
            },
        },
        # A real server drops a status sent on create: the emulator too.
        "status": {"replicas": 99, "readyReplicas": 99},
    }


@pytest.fixture
def kube() -> Iterator[KubeEmulator]:
    with KubeEmulator() as emulator:
        emulator.create_namespace(NS)
        yield emulator


@pytest.fixture
def api(kube: KubeEmulator) -> Iterator[kubernetes.client.ApiClient]:
    with kube.api_client() as client:
        yield client


@pytest.fixture
def custom(api: kubernetes.client.ApiClient) -> kubernetes.client.CustomObjectsApi:
    return kubernetes.client.CustomObjectsApi(api)


def rv(obj: dict[str, Any]) -> int:
    return int(obj["metadata"]["resourceVersion"])


def test_configmap_create_get_list_patch_delete(
    kube: KubeEmulator, api: kubernetes.client.ApiClient
) -> None:
    core = kubernetes.client.CoreV1Api(api)
    created, status, _headers = core.create_namespaced_config_map_with_http_info(
        NS, {"metadata": {"name": "ct-triage-map"}, "data": {"map.json": "{}"}}
    )
    assert status == 201
    assert created is not None, "the client returns None unless create answers 201"
    assert created.metadata.namespace == NS, "namespace filled in from the URL"
    assert created.metadata.uid
    assert created.metadata.creation_timestamp is not None
    assert created.metadata.generation == 1
    assert created.kind == "ConfigMap"

    fetched = core.read_namespaced_config_map("ct-triage-map", NS)
    assert fetched.metadata.uid == created.metadata.uid

    listed = core.list_namespaced_config_map(NS)
    assert [item.metadata.name for item in listed.items] == ["ct-triage-map"]
    assert (listed.kind, listed.api_version) == ("ConfigMapList", "v1")

    patched = core.patch_namespaced_config_map(
        "ct-triage-map", NS, {"data": {"extra": "1"}}, _content_type=MERGE
    )
    assert patched.data == {"map.json": "{}", "extra": "1"}, "a merge patch merges"
    assert int(patched.metadata.resource_version) > int(created.metadata.resource_version)
    assert patched.metadata.uid == created.metadata.uid
    assert patched.metadata.creation_timestamp == created.metadata.creation_timestamp

    removed = core.patch_namespaced_config_map(
        "ct-triage-map", NS, {"data": {"extra": None}}, _content_type=MERGE
    )
    assert removed.data == {"map.json": "{}"}, "null deletes a key"

    unchanged = core.patch_namespaced_config_map(
        "ct-triage-map", NS, {"data": {"map.json": "{}"}}, _content_type=MERGE
    )
    assert unchanged.metadata.resource_version == removed.metadata.resource_version

    core.delete_namespaced_config_map("ct-triage-map", NS)
    with pytest.raises(ApiException) as missing:
        core.read_namespaced_config_map("ct-triage-map", NS)
    assert missing.value.status == 404
    assert kube.objects("ConfigMap", NS) == []


def test_statefulset_generation_follows_spec_not_status(
    kube: KubeEmulator, api: kubernetes.client.ApiClient
) -> None:
    apps = kubernetes.client.AppsV1Api(api)
    created = apps.create_namespaced_stateful_set(NS, statefulset("ct-triage-gw"))
    assert created.metadata.generation == 1
    assert created.status is None or created.status.ready_replicas is None

    scaled = apps.patch_namespaced_stateful_set(
        "ct-triage-gw", NS, {"spec": {"replicas": 4}}, _content_type=MERGE
    )
    assert scaled.spec.replicas == 4
    assert scaled.metadata.generation == 2

    # Playing the StatefulSet controller: status only, generation unchanged.
    written = kube.write_status(
        "apps", "v1", "statefulsets", NS, "ct-triage-gw", status={"readyReplicas": 4}
    )
    assert written["status"]["readyReplicas"] == 4
    assert written["metadata"]["generation"] == 2
    assert int(written["metadata"]["resourceVersion"]) > int(scaled.metadata.resource_version)

    via_status = apps.patch_namespaced_stateful_set_status(
        "ct-triage-gw",
        NS,
        {"status": {"replicas": 4, "observedGeneration": 2}},
        _content_type=MERGE,
    )
    assert via_status.status.replicas == 4
    assert via_status.status.ready_replicas == 4
    assert via_status.metadata.generation == 2

    # The main resource does not take status changes, as on a real server.
    apps.patch_namespaced_stateful_set(
        "ct-triage-gw", NS, {"status": {"readyReplicas": 0}}, _content_type=MERGE
    )
    stored = kube.get("StatefulSet", "ct-triage-gw", NS)
    assert stored is not None
    assert stored["status"]["readyReplicas"] == 4

    scale = apps.read_namespaced_stateful_set_scale("ct-triage-gw", NS)
    assert scale.spec.replicas == 4
    assert scale.status.selector == (
        "app.kubernetes.io/component=gateway,app.kubernetes.io/instance=ct-triage-gw"
    )


def test_gatewaypool_custom_objects_status_and_scale(
    kube: KubeEmulator, custom: kubernetes.client.CustomObjectsApi
) -> None:
    created = custom.create_namespaced_custom_object(
        GROUP, VERSION, NS, PLURAL, gatewaypool("ct-triage")
    )
    assert created["metadata"]["namespace"] == NS
    assert created["metadata"]["generation"] == 1
    assert created["metadata"]["uid"]
    assert created["metadata"]["creationTimestamp"]

    fetched = custom.get_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "ct-triage")
    assert fetched["spec"]["replicas"] == 3
    listed = custom.list_namespaced_custom_object(GROUP, VERSION, NS, PLURAL)
    assert listed["kind"] == "GatewayPoolList"
    assert listed["apiVersion"] == f"{GROUP}/{VERSION}"
    assert [item["metadata"]["name"] for item in listed["items"]] == ["ct-triage"]
    everywhere = custom.list_cluster_custom_object(GROUP, VERSION, PLURAL)
    assert len(everywhere["items"]) == 1

    spec_patched = custom.patch_namespaced_custom_object(
        GROUP, VERSION, NS, PLURAL, "ct-triage", {"spec": {"buckets": 4096}}
    )
    assert spec_patched["metadata"]["generation"] == 2
    assert spec_patched["spec"]["replicas"] == 3, "merge kept the other spec fields"

    status = {"replicas": 3, "readyReplicas": 2, "selector": "app.kubernetes.io/instance=ct-triage"}
    status_patched = custom.patch_namespaced_custom_object_status(
        GROUP, VERSION, NS, PLURAL, "ct-triage", {"status": status}
    )
    assert status_patched["status"] == status
    assert status_patched["metadata"]["generation"] == 2, "status writes keep the generation"
    assert rv(status_patched) > rv(spec_patched)

    # A status write ignores everything but status, and vice versa.
    custom.patch_namespaced_custom_object_status(
        GROUP, VERSION, NS, PLURAL, "ct-triage", {"spec": {"replicas": 0}}
    )
    custom.patch_namespaced_custom_object(
        GROUP, VERSION, NS, PLURAL, "ct-triage", {"status": {"readyReplicas": 0}}
    )
    stored = kube.get("GatewayPool", "ct-triage", NS)
    assert stored is not None
    assert stored["spec"]["replicas"] == 3
    assert stored["status"]["readyReplicas"] == 2

    scaled = custom.patch_namespaced_custom_object_scale(
        GROUP, VERSION, NS, PLURAL, "ct-triage", {"spec": {"replicas": 5}}
    )
    assert scaled["kind"] == "Scale"
    assert scaled["spec"]["replicas"] == 5
    after_scale = kube.get("GatewayPool", "ct-triage", NS)
    assert after_scale is not None
    assert after_scale["spec"]["replicas"] == 5
    assert after_scale["metadata"]["generation"] == 3

    scale = custom.get_namespaced_custom_object_scale(GROUP, VERSION, NS, PLURAL, "ct-triage")
    assert scale["apiVersion"] == "autoscaling/v1"
    assert scale["kind"] == "Scale"
    assert scale["spec"] == {"replicas": 5}
    assert scale["status"] == {"replicas": 3, "selector": "app.kubernetes.io/instance=ct-triage"}
    assert scale["metadata"]["name"] == "ct-triage"

    custom.delete_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "ct-triage")
    with pytest.raises(ApiException) as missing:
        custom.get_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "ct-triage")
    assert missing.value.status == 404
    assert kube.objects("GatewayPool") == []


def test_api_errors_kopf_and_the_client_rely_on(
    custom: kubernetes.client.CustomObjectsApi,
) -> None:
    created = custom.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, gatewaypool("a"))

    def status_of(call: Callable[[], Any]) -> int:
        with pytest.raises(ApiException) as error:
            call()
        return int(error.value.status)

    assert (
        status_of(
            lambda: custom.create_namespaced_custom_object(
                GROUP, VERSION, NS, PLURAL, gatewaypool("a")
            )
        )
        == 409
    )
    stale = {"metadata": {"resourceVersion": "1"}, "spec": {"replicas": 1}}
    assert (
        status_of(
            lambda: custom.patch_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "a", stale)
        )
        == 409
    )
    # kopf's optimistic JSON patch: "test" the resourceVersion, then change.
    failed_test = [
        {"op": "test", "path": "/metadata/resourceVersion", "value": "1"},
        {"op": "add", "path": "/metadata/finalizers", "value": ["x"]},
    ]
    assert (
        status_of(
            lambda: custom.patch_namespaced_custom_object(
                GROUP, VERSION, NS, PLURAL, "a", failed_test, _content_type=JSON_PATCH
            )
        )
        == 422
    )
    assert (
        status_of(
            lambda: custom.patch_namespaced_custom_object(
                GROUP,
                VERSION,
                NS,
                PLURAL,
                "a",
                {"spec": {}},
                _content_type="application/strategic-merge-patch+json",
            )
        )
        == 415
    )
    assert (
        status_of(lambda: custom.get_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "absent"))
        == 404
    )

    passing_test = [
        {"op": "test", "path": "/metadata/resourceVersion", "value": str(rv(created))},
        {"op": "add", "path": "/metadata/finalizers", "value": ["x"]},
    ]
    patched = custom.patch_namespaced_custom_object(
        GROUP, VERSION, NS, PLURAL, "a", passing_test, _content_type=JSON_PATCH
    )
    assert patched["metadata"]["finalizers"] == ["x"]
    assert patched["metadata"]["generation"] == 1, "metadata changes keep the generation"

    # Finalizers hold the deletion until they are removed.
    custom.delete_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "a")
    held = custom.get_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "a")
    assert held["metadata"]["deletionTimestamp"]
    custom.patch_namespaced_custom_object(
        GROUP, VERSION, NS, PLURAL, "a", {"metadata": {"finalizers": None}}
    )
    assert (
        status_of(lambda: custom.get_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "a"))
        == 404
    )


def test_label_and_field_selectors(api: kubernetes.client.ApiClient) -> None:
    core = kubernetes.client.CoreV1Api(api)
    for name, component in [("gw", "gateway"), ("router", "router"), ("map", "map")]:
        labels = {"app.kubernetes.io/instance": "ct", "app.kubernetes.io/component": component}
        core.create_namespaced_config_map(NS, {"metadata": {"name": name, "labels": labels}})

    def names(**selectors: str) -> list[str]:
        listed = core.list_namespaced_config_map(NS, **selectors)
        return sorted(item.metadata.name for item in listed.items)

    assert names(label_selector="app.kubernetes.io/component=gateway") == ["gw"]
    assert names(label_selector="app.kubernetes.io/component!=gateway") == ["map", "router"]
    assert names(label_selector="app.kubernetes.io/component in (map, router)") == [
        "map",
        "router",
    ]
    assert names(label_selector="app.kubernetes.io/instance,!missing") == ["gw", "map", "router"]
    assert names(label_selector="app.kubernetes.io/instance=other") == []
    assert names(field_selector="metadata.name=router") == ["router"]
    with pytest.raises(ApiException) as unsupported:
        names(field_selector="spec.nodeName=x")
    assert unsupported.value.status == 400


def test_namespaces_and_discovery(kube: KubeEmulator, api: kubernetes.client.ApiClient) -> None:
    core = kubernetes.client.CoreV1Api(api)
    created = core.create_namespace({"metadata": {"name": "cardiology"}})
    assert created.metadata.uid
    names = sorted(ns.metadata.name for ns in core.list_namespace().items)
    assert names == ["cardiology", NS]
    assert core.read_namespace("cardiology").metadata.uid == created.metadata.uid
    labelled = core.list_namespace(label_selector="kubernetes.io/metadata.name=cardiology")
    assert [ns.metadata.name for ns in labelled.items] == ["cardiology"]
    watch = kubernetes.watch.Watch()
    watched: list[tuple[str, str]] = []
    for event in watch.stream(core.list_namespace, timeout_seconds=5, _request_timeout=10):
        watched.append((event["type"], event["object"].metadata.name))
        if len(watched) == 2:
            watch.stop()
    assert sorted(watched) == [("ADDED", "cardiology"), ("ADDED", NS)]
    core.delete_namespace("cardiology")
    assert [ns.metadata.name for ns in core.list_namespace().items] == [NS]

    resources = core.get_api_resources()
    assert resources.group_version == "v1"
    assert {"configmaps", "namespaces", "pods", "pods/status"} <= {
        r.name for r in resources.resources
    }
    custom_resources = kubernetes.client.CustomObjectsApi(api).get_api_resources(GROUP, VERSION)
    by_name = {r.name: r for r in custom_resources.resources}
    assert {"gatewaypools", "gatewaypools/status", "gatewaypools/scale"} <= by_name.keys()
    assert by_name["gatewaypools"].kind == "GatewayPool"
    assert by_name["gatewaypools"].namespaced is True


def test_apply_crd_serves_the_resource_and_establishes_it(
    kube: KubeEmulator, api: kubernetes.client.ApiClient
) -> None:
    crd = kube.apply_crd(CRD_PATH) if CRD_PATH.exists() else kube.apply_crd(minimal_crd())
    assert crd["metadata"]["name"] == f"{PLURAL}.{GROUP}"
    conditions = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
    assert conditions["Established"] == "True"

    extensions = kubernetes.client.ApiextensionsV1Api(api)
    read = extensions.read_custom_resource_definition(f"{PLURAL}.{GROUP}")
    assert read.spec.names.kind == "GatewayPool"
    served = kube.resolve("gwp")
    assert served.scale is not None
    assert served.scale.spec_replicas == ("spec", "replicas")
    assert served.scale.selector_path == ("status", "selector")

    # Applying again replaces it: same object, new resourceVersion only if changed.
    again = kube.apply_crd(CRD_PATH) if CRD_PATH.exists() else kube.apply_crd(minimal_crd())
    assert again["metadata"]["uid"] == crd["metadata"]["uid"]


def test_watch_sees_added_and_modified(
    kube: KubeEmulator, custom: kubernetes.client.CustomObjectsApi
) -> None:
    custom.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, gatewaypool("ct-triage"))
    seen: list[tuple[str, int]] = []
    watch = kubernetes.watch.Watch()
    for event in watch.stream(
        custom.list_namespaced_custom_object,
        GROUP,
        VERSION,
        NS,
        PLURAL,
        timeout_seconds=5,
        _request_timeout=10,
    ):
        obj = event["object"]
        seen.append((event["type"], obj["spec"]["replicas"]))
        if event["type"] == "ADDED":
            custom.patch_namespaced_custom_object(
                GROUP, VERSION, NS, PLURAL, "ct-triage", {"spec": {"replicas": 7}}
            )
        elif event["type"] == "MODIFIED":
            assert obj["metadata"]["generation"] == 2
            watch.stop()
    assert seen == [("ADDED", 3), ("MODIFIED", 7)]


def test_watch_ends_at_its_timeout(custom: kubernetes.client.CustomObjectsApi) -> None:
    started = time.monotonic()
    events = list(
        kubernetes.watch.Watch().stream(
            custom.list_namespaced_custom_object,
            GROUP,
            VERSION,
            NS,
            PLURAL,
            timeout_seconds=1,
            _request_timeout=10,
        )
    )
    assert events == []
    assert time.monotonic() - started < 5, "the server ended the watch after timeoutSeconds"


def test_stop_ends_open_watches_promptly() -> None:
    emulator = KubeEmulator()
    emulator.start()
    connection = http.client.HTTPConnection("127.0.0.1", emulator.port, timeout=10)
    try:
        connection.request("GET", "/api/v1/namespaces/x/configmaps?watch=true")
        response = connection.getresponse()
        assert response.status == 200
        started = time.monotonic()
        emulator.stop()
        assert time.monotonic() - started < 3, "stop() waited for the open watch"
        assert response.read() == b"", "the watch ended cleanly, with no events"
    finally:
        connection.close()
        emulator.stop()


def test_reactions_answer_writes_and_starting_twice_fails(
    kube: KubeEmulator, api: kubernetes.client.ApiClient
) -> None:
    core = kubernetes.client.CoreV1Api(api)
    core.create_namespaced_config_map(NS, {"metadata": {"name": "m"}})
    kube.emulator["patch configmaps"] << 500  # a test injecting an API failure
    with pytest.raises(ApiException) as failed:
        core.patch_namespaced_config_map("m", NS, {"data": {"k": "v"}}, _content_type=MERGE)
    assert failed.value.status == 500
    stored = kube.get("ConfigMap", "m", NS)
    assert stored is not None
    assert stored["data"] == {"k": "v"}, "kmock's rule: a write is done even if a reaction answers"
    with pytest.raises(RuntimeError, match="starts once"):
        kube.start()


def test_store_helpers(kube: KubeEmulator) -> None:
    pod = kube.create("Pod", {"metadata": {"name": "ct-triage-gw-0"}}, namespace=NS)
    assert pod["metadata"]["uid"]
    assert [p["metadata"]["name"] for p in kube.objects("pods", NS)] == ["ct-triage-gw-0"]
    assert kube.objects("v1/pods", "elsewhere") == []
    assert kube.get("Namespace", NS) is not None
    with pytest.raises(KeyError, match="2 served resources"):
        kube.resolve("Event")  # core v1 and events.k8s.io/v1


OPERATOR = """
import kopf


@kopf.on.login()
def login(**kwargs):
    # Reads $KUBECONFIG when called; the kubernetes client read it at import.
    return kopf.login_with_kubeconfig(**kwargs)


@kopf.on.create("gatewaypool.io", "v1alpha1", "gatewaypools")
def created(spec, patch, **_):
    patch.status["seenReplicas"] = spec["replicas"]
"""


def test_kopf_handles_a_gatewaypool(
    kube: KubeEmulator,
    custom: kubernetes.client.CustomObjectsApi,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    operator = tmp_path / "tiny_operator.py"
    operator.write_text(OPERATOR)
    monkeypatch.setenv("KUBECONFIG", str(kube.kubeconfig_path))
    args = ["run", "--standalone", "-A", "--verbose", str(operator)]
    with KopfRunner(args, registry=kopf.OperatorRegistry(), timeout=10) as runner:
        custom.create_namespaced_custom_object(
            GROUP, VERSION, NS, PLURAL, gatewaypool("ct-triage", replicas=3)
        )

        def handled() -> bool:
            pool = kube.get("GatewayPool", "ct-triage", NS) or {}
            return (pool.get("status") or {}).get("seenReplicas") == 3

        wait_until(handled, timeout=15, what="kopf's status patch")
    assert runner.exception is None
    assert runner.exit_code == 0, runner.output
    assert "Handler 'created' succeeded" in runner.output
    assert "Traceback" not in runner.output, runner.output


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is optional")
def test_kubectl_lists_and_scales(kube: KubeEmulator) -> None:
    kube.apply_crd(CRD_PATH if CRD_PATH.exists() else minimal_crd())
    kube.create("GatewayPool", gatewaypool("ct-triage"), namespace=NS)

    def kubectl(*args: str) -> str:
        done = subprocess.run(
            ["kubectl", "--kubeconfig", str(kube.kubeconfig_path), *args],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    listed = json.loads(kubectl("get", "gwp", "-n", NS, "-o", "json"))
    assert [item["metadata"]["name"] for item in listed["items"]] == ["ct-triage"]
    kubectl("scale", "gwp", "ct-triage", "-n", NS, "--replicas=2")
    pool = kube.get("GatewayPool", "ct-triage", NS)
    assert pool is not None
    assert pool["spec"]["replicas"] == 2
