"""A pool on the real cluster, as the end-to-end tests drive and inspect it.

The pool is created through the API like ``kubectl apply``, scaled through
its scale subresource like ``kubectl scale``, and sent studies at its router
Service's ClusterIP like a modality. What each gateway stored is read from
the volume the kubelet stand-in gave its pod (every pod ever run, so a
scaled-down gateway still counts).
"""

from __future__ import annotations

import json
import urllib.request
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import kubernetes.client
from kubernetes.client.exceptions import ApiException

from gatewaypool.contract import API_GROUP, API_VERSION, PLURAL
from gatewaypool_local.peers.process import wait_until
from support.realcluster import Cluster

GATEWAY_IMAGE = "registry.example.org/test/pynetdicom-gateway:1"
GATEWAY_AE = "TRIAGE"
GATEWAY_PORT = 104
ROUTER_AE = "GATEWAYPOOL"


def gateway_spec(*extra_args: str) -> dict[str, Any]:
    """A pynetdicom gateway that keeps what it receives under /tmp/received (its emptyDir)."""
    return {
        "image": GATEWAY_IMAGE,
        "aeTitle": GATEWAY_AE,
        "port": GATEWAY_PORT,
        "args": [
            "--port",
            str(GATEWAY_PORT),
            "-aet",
            GATEWAY_AE,
            "-od",
            "/tmp/received",
            "--host",
            "0.0.0.0",
            *extra_args,
        ],
    }


def pool_body(namespace: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": "GatewayPool",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


@dataclass(frozen=True)
class ServiceTarget:
    """A router Service's ClusterIP and DICOM port: where modalities send."""

    host: str
    port: int
    ae_title: str = ROUTER_AE


class RealPool:
    """One GatewayPool on `cluster`, in `namespace`."""

    def __init__(self, cluster: Cluster, namespace: str, name: str = "ct") -> None:
        self.cluster = cluster
        self.namespace = namespace
        self.name = name
        # Bodies are plain dicts, as kubectl sends them.
        self.custom: Any = kubernetes.client.CustomObjectsApi(cluster.api())
        self.core: Any = kubernetes.client.CoreV1Api(cluster.api())
        self.apps: Any = kubernetes.client.AppsV1Api(cluster.api())

    def create(self, spec: dict[str, Any]) -> None:
        self.custom.create_namespaced_custom_object(
            API_GROUP,
            API_VERSION,
            self.namespace,
            PLURAL,
            pool_body(self.namespace, self.name, spec),
        )

    def delete(self) -> None:
        """Delete the pool (its children go with it); gone already is fine."""
        try:
            self.custom.delete_namespaced_custom_object(
                API_GROUP, API_VERSION, self.namespace, PLURAL, self.name
            )
        except ApiException as exc:
            if exc.status != 404:
                raise

    def patch_spec(self, spec: dict[str, Any]) -> None:
        """A merge patch of the pool's spec, as ``kubectl patch --type merge`` sends it."""
        self.custom.patch_namespaced_custom_object(
            API_GROUP, API_VERSION, self.namespace, PLURAL, self.name, {"spec": spec}
        )

    def get(self) -> dict[str, Any]:
        found: dict[str, Any] = self.custom.get_namespaced_custom_object(
            API_GROUP, API_VERSION, self.namespace, PLURAL, self.name
        )
        return found

    def status(self) -> dict[str, Any]:
        return dict(self.get().get("status") or {})

    def scale(self, replicas: int) -> None:
        """``kubectl scale gwp/NAME --replicas=N``: through the scale subresource."""
        self.custom.patch_namespaced_custom_object_scale(
            API_GROUP,
            API_VERSION,
            self.namespace,
            PLURAL,
            self.name,
            {"spec": {"replicas": replicas}},
        )

    def settled(self, replicas: int, routers: int) -> bool:
        """`replicas` gateways Ready and owning buckets, nothing moving, all routers confirmed.

        And `routers` router pods Ready: a router reports its map before it
        listens, and the router Service sends only to Ready pods.
        """
        status = self.status()
        counts = status.get("bucketCounts") or {}
        return (
            status.get("replicas") == replicas
            and status.get("readyReplicas") == replicas
            and not status.get("movingBuckets")
            # Each owns some (the counts list a gateway that owns none too: one Ready
            # a pass after the first map, whose share is still to move).
            and len(counts) == replicas
            and all(count > 0 for count in counts.values())
            and status.get("routers") == f"{routers}/{routers}"
            and self.routers_ready() == routers
        )

    def routers_ready(self) -> int:
        """Ready router pods, as the router Deployment (or, with a spool, StatefulSet) counts
        them: those not being deleted."""
        listed = self.core.list_namespaced_pod(
            self.namespace,
            label_selector=f"app.kubernetes.io/instance={self.name},"
            "app.kubernetes.io/component=router",
        )
        return sum(
            1
            for pod in listed.items
            if pod.metadata.deletion_timestamp is None
            and any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])
        )

    def wait_settled(self, replicas: int, routers: int, *, timeout: float) -> None:
        """Wait until `settled`; the error shows the pool's last status."""
        try:
            wait_until(
                lambda: self.settled(replicas, routers),
                timeout=timeout,
                what=f"{self.name} settled at {replicas} gateways and {routers} routers",
            )
        except TimeoutError as exc:
            status = {k: v for k, v in self.status().items() if k != "bucketCounts"}
            counts = self.status().get("bucketCounts")
            raise TimeoutError(f"{exc}\nstatus: {status}\nbucket counts: {counts}") from None

    def router_service(self) -> ServiceTarget:
        service = self.core.read_namespaced_service(f"{self.name}-router", self.namespace)
        port = next(p.port for p in service.spec.ports if p.name == "dicom")
        return ServiceTarget(str(service.spec.cluster_ip), int(port))

    def router_addresses(self) -> dict[str, str]:
        """Running router pods: name -> pod address."""
        listed = self.core.list_namespaced_pod(
            self.namespace,
            label_selector=f"app.kubernetes.io/instance={self.name},"
            "app.kubernetes.io/component=router",
        )
        return {
            pod.metadata.name: pod.status.pod_ip
            for pod in listed.items
            if pod.status.phase == "Running" and pod.status.pod_ip
        }

    def operator_address(self) -> str:
        """The address of the running operator pod (the chart's Deployment)."""
        [pod] = [
            p
            for p in self.cluster.kubelet.pods(self.namespace)
            if not p.name.startswith(f"{self.name}-") and not p.done
        ]
        return pod.address

    @staticmethod
    def metric(
        address: str, name: str, *, port: int = 8080, labels: dict[str, str] | None = None
    ) -> float:
        """The sum of the samples of `name` (with those `labels`) on a pod's /metrics."""
        from prometheus_client.parser import text_string_to_metric_families

        with urllib.request.urlopen(f"http://{address}:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
        wanted = labels or {}
        return sum(
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == name and all(sample.labels.get(k) == v for k, v in wanted.items())
        )

    def operator_log(self) -> str:
        """The log of the operator pod watching this namespace (the chart's Deployment)."""
        pods = [p for p in self.cluster.kubelet.pods(self.namespace) if "-gw-" not in p.name]
        return "".join(
            self.cluster.kubelet.log(p) for p in pods if not p.name.startswith(f"{self.name}-")
        )

    def resyncs(self) -> int:
        """How many periodic drift checks the operator has made so far."""
        return self.operator_log().count("pools checked")

    def map_text(self) -> str:
        """The bucket map as the operator published it (``map.json``)."""
        found = self.core.read_namespaced_config_map(f"{self.name}-map", self.namespace)
        return str(found.data["map.json"])

    def events(self) -> list[str]:
        listed = self.core.list_namespaced_event(self.namespace)
        return [str(event.reason) for event in listed.items]

    def stored(self) -> dict[str, dict[str, str]]:
        """What each gateway stored: pod name -> SOP instance -> study, over every pod ever run."""
        held: dict[str, dict[str, str]] = defaultdict(dict)
        prefix = f"{self.name}-gw-"
        for pod in self.cluster.kubelet.pods(self.namespace):
            if not pod.name.startswith(prefix):
                continue
            index = self.cluster.kubelet.volume(pod, "tmp") / "received" / "index.jsonl"
            if not index.exists():
                continue
            for line in index.read_text(encoding="ascii").splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:  # a line torn by a killed gateway
                    continue
                held[pod.name][record["sop_instance_uid"]] = record["study_uid"]
        return dict(held)

    def gateways_of_studies(self) -> dict[str, set[str]]:
        """Study -> the gateways (pod names) holding any of its instances."""
        holders: dict[str, set[str]] = defaultdict(set)
        for pod, instances in self.stored().items():
            for study in instances.values():
                holders[study].add(pod)
        return dict(holders)


class ModuleOperator(Protocol):
    """A test module's namespace and operator, and the pools its running test made."""

    cluster: Cluster
    namespace: str
    #: The prefix of the operator's pod names.
    operator: str
    pools: list[RealPool]


def clear_test_pools(operated: ModuleOperator, *, failed: bool) -> None:
    """After a test on a module's operator: the logs of its pools and of the operator if it
    failed, then its pools deleted."""
    pools = operated.pools
    if failed:
        prefixes = (*(f"{pool.name}-" for pool in pools), f"{operated.operator}-")
        operated.cluster.print_pod_logs(operated.namespace, prefixes=prefixes, lines=40)
    for pool in pools:
        pool.delete()
    pools.clear()


@contextmanager
def operated_pool(
    cluster: Cluster,
    namespace: str,
    spec: dict[str, Any],
    *,
    name: str = "ct",
    values: dict[str, Any] | None = None,
) -> Iterator[RealPool]:
    """The chart installed into `namespace` (with `values`) and pool `name` created there
    with `spec`.

    Yields as soon as the pool is created; the chart's cluster-wide objects
    are removed afterwards (the namespace takes the rest).
    """
    installed = cluster.install(namespace, values=values)
    try:
        pool = RealPool(cluster, namespace, name)
        pool.create(spec)
        yield pool
    finally:
        cluster.uninstall(installed)
