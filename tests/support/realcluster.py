"""One real cluster per test session: control plane, pod network, DNS, Service proxy, kubelet.

The tests that need Kubernetes run against :class:`Cluster`: the real
kube-apiserver, etcd, kube-controller-manager and kube-scheduler
(:mod:`support.controlplane`), with the stand-ins for what a machine without
a container runtime lacks: the kubelet (:mod:`support.nodes`), the pod
network (:mod:`support.podnet`), cluster DNS (:mod:`support.clusterdns`)
and kube-proxy (:mod:`support.serviceproxy`). The tests that need
``metrics.k8s.io`` deploy metrics-server (:mod:`support.metrics`).

The API server keeps an audit log (:mod:`support.audit` reads it) of the
requests service accounts make, outside ``kube-system``: what the operator
and the routers asked, as whom, and whether RBAC allowed it. Everything else
goes unlogged, so the log costs little. The
``OwnerReferencesPermissionEnforcement`` admission plugin is on, as in many
hardened clusters: an ownerReference with ``blockOwnerDeletion`` needs the
right to update the owner's finalizers.

Each test gets a namespace of its own (:meth:`Cluster.namespace`) and, when
it needs the operator, installs the chart into it as a user would
(:meth:`Cluster.install`): rendered by the real Helm engine, then applied
server-side with ``kubectl``. The operator then runs as the chart's
Deployment, in a pod of the kubelet, with its ServiceAccount's token.

The suite runs in the sandbox of ``tests/sandbox.sh`` (a user, network and
mount namespace of its own): the pod network lives there and nothing of it
reaches the machine.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes.client
import yaml
from kubernetes.client.exceptions import ApiException

from gatewaypool_local.peers.process import wait_until
from support import chart, images
from support.clusterdns import ClusterDNS
from support.controlplane import ControlPlane, ControlPlaneUnavailableError
from support.crd import ROOT
from support.informer import Informer
from support.nodes import Kubelet
from support.podnet import GATEWAY, SERVICE_CIDR, PodNetwork
from support.serviceproxy import ServiceProxy

#: The image the chart's operator and the pools' routers run (the kubelet runs it from the venv).
IMAGE_REPOSITORY = "registry.example.org/gatewaypool/gatewaypool"
IMAGE_TAG = "test"
#: The `kubernetes` Service's ClusterIP, where pods reach the API server.
KUBERNETES_SERVICE = ("10.96.0.1", 443)
NODES = ("node-a", "node-b")
#: What the API server audits: service accounts' requests (not the controllers'
#: in kube-system), at Metadata level (who, what, the decision; no bodies),
#: once each (a watch also when it starts). Deletes also keep their body, the
#: DeleteOptions: whether dependents were orphaned.
AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "rules": [
        {"level": "None", "userGroups": ["system:serviceaccounts:kube-system"]},
        {"level": "Request", "userGroups": ["system:serviceaccounts"], "verbs": ["delete"]},
        {"level": "Metadata", "userGroups": ["system:serviceaccounts"]},
        {"level": "None"},
    ],
}


def session_folder() -> Path:
    """A fresh folder for this session's cluster, under ``.cluster/`` (folders of dead runs go)."""
    root = ROOT / ".cluster"
    root.mkdir(exist_ok=True)
    for old in root.iterdir():
        if old.name.isdigit() and not Path(f"/proc/{old.name}").exists():
            shutil.rmtree(old, ignore_errors=True)
    folder = root / str(os.getpid())
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    return folder


def in_sandbox() -> bool:
    return os.environ.get("GATEWAYPOOL_SANDBOX") == "1"


def kubectl() -> str:
    return str(Path(sys.executable).parent / "kubectl")


@dataclass
class Cluster:
    """The running cluster and the stand-ins around it."""

    plane: ControlPlane
    network: PodNetwork
    kubelet: Kubelet
    services: Informer
    slices: Informer
    dns: ClusterDNS
    proxy: ServiceProxy
    folder: Path
    #: The API server's audit log (JSON lines; see :data:`AUDIT_POLICY`).
    audit_log: Path

    def api(self) -> kubernetes.client.ApiClient:
        """An admin client (system:masters)."""
        return self.plane.api_client()

    @property
    def kubeconfig(self) -> Path:
        return self.plane.endpoints.kubeconfig

    def kubectl(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        """``kubectl`` as the admin; raises with its output when it fails."""
        result = subprocess.run(
            [kubectl(), "--kubeconfig", str(self.kubeconfig), *args],
            input=stdin,
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        if result.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)}: {result.stderr or result.stdout}")
        return result

    # -- namespaces and the chart --------------------------------------------------------------

    @contextmanager
    def namespace(self, name: str) -> Iterator[str]:
        """A fresh namespace, deleted (with everything in it) afterwards."""
        core: Any = kubernetes.client.CoreV1Api(self.api())
        core.create_namespace({"metadata": {"name": name}})
        try:
            self.wait_default_service_account(name)
            yield name
        finally:
            try:
                core.delete_namespace(name)
            except ApiException as exc:
                if exc.status != 404:
                    raise

    def wait_default_service_account(self, namespace: str) -> None:
        """Until the controller manager has made the namespace's ``default`` ServiceAccount.

        Admission refuses a pod that names no ServiceAccount until then (as on
        any cluster in the first moments of a namespace).
        """
        core: Any = kubernetes.client.CoreV1Api(self.api())

        def made() -> bool:
            try:
                core.read_namespaced_service_account("default", namespace)
            except ApiException as exc:
                if exc.status != 404:
                    raise
                return False
            return True

        wait_until(made, timeout=30, what=f"the default ServiceAccount of {namespace}")

    def render(
        self, namespace: str, release: str, values: Mapping[str, Any]
    ) -> list[dict[str, Any]]:
        """``helm template`` of the chart with `values` (the real Helm engine)."""
        return chart.render(values, release=release, namespace=namespace)

    def apply(self, objects: list[dict[str, Any]], *, field_manager: str = "helm") -> None:
        """``kubectl apply --server-side`` of `objects`, as a user installs a rendered chart."""
        text = yaml.safe_dump_all(objects)
        self.kubectl(
            "apply", "--server-side", f"--field-manager={field_manager}", "-f", "-", stdin=text
        )

    def install(
        self, namespace: str, *, values: Mapping[str, Any] | None = None, release: str = "gwp"
    ) -> list[dict[str, Any]]:
        """The chart installed into `namespace`, watching only it; returns what was applied.

        The operator's pod is Ready when this returns.
        """
        chosen: dict[str, Any] = {
            "image": {"repository": IMAGE_REPOSITORY, "tag": IMAGE_TAG},
            "watchNamespaces": [namespace],
            "rbac": {"scope": "namespaces"},
            "fullnameOverride": f"{release}-{namespace}",
            "operator": {"resyncSeconds": 5, "logLevel": "debug"},
        }
        _merge(chosen, dict(values or {}))
        objects = self.render(namespace, release, chosen)
        self.apply(objects)
        deployment = next(o for o in objects if o["kind"] == "Deployment")
        name = deployment["metadata"]["name"]
        wait_until(
            lambda: _deployment_ready(self.api(), namespace, name),
            timeout=90,
            what=f"operator Deployment {namespace}/{name} ready",
        )
        return objects

    def uninstall(self, objects: list[dict[str, Any]]) -> None:
        """Delete the cluster-scoped objects of an install (the namespace takes the rest)."""
        rbac = kubernetes.client.RbacAuthorizationV1Api(self.api())
        for obj in objects:
            try:
                if obj["kind"] == "ClusterRole":
                    rbac.delete_cluster_role(obj["metadata"]["name"])
                elif obj["kind"] == "ClusterRoleBinding":
                    rbac.delete_cluster_role_binding(obj["metadata"]["name"])
            except ApiException as exc:
                if exc.status != 404:
                    raise

    def pod_log(self, namespace: str, name: str) -> str:
        pod = self.kubelet.pod(namespace, name)
        return self.kubelet.log(pod) if pod is not None else ""

    def print_pod_logs(
        self, namespace: str, *, prefixes: tuple[str, ...] = ("",), lines: int
    ) -> None:
        """The last `lines` of the log of each pod in `namespace` named with one of `prefixes`."""
        for pod in self.kubelet.pods(namespace):
            if pod.name.startswith(prefixes):
                print(f"--- pod {pod.name} ({pod.uid[:8]}) ---")
                print("\n".join(self.kubelet.log(pod).splitlines()[-lines:]))

    def pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        core = kubernetes.client.CoreV1Api(self.api())
        listed = core.list_namespaced_pod(namespace, label_selector=selector)
        serialize: Any = self.api().sanitize_for_serialization
        return [serialize(p) for p in listed.items]


def _merge(into: dict[str, Any], extra: Mapping[str, Any]) -> None:
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


def _deployment_ready(api: kubernetes.client.ApiClient, namespace: str, name: str) -> bool:
    found = kubernetes.client.AppsV1Api(api).read_namespaced_deployment(name, namespace)
    status = found.status
    return bool(
        status and status.ready_replicas and status.ready_replicas >= (found.spec.replicas or 1)
    )


def namespace_for(test_name: str) -> str:
    """A namespace name for a test: DNS-1123, short, unique enough."""
    base = re.sub(r"[^a-z0-9-]+", "-", test_name.lower()).strip("-")
    return f"t-{base[-40:].strip('-')}-{os.urandom(2).hex()}"


@contextmanager
def running_cluster(folder: Path) -> Iterator[Cluster]:
    """Start everything, in order; stop it all afterwards."""
    if not in_sandbox():
        raise ControlPlaneUnavailableError(
            "the cluster tests run in the test sandbox: ./dev.sh test, or ./dev.sh pytest ARGS"
        )
    images.project_venv()  # built, or say how to build it before anything starts
    with ExitStack() as stack:
        network = PodNetwork()
        network.setup()
        policy = folder / "audit-policy.yaml"
        policy.write_text(yaml.safe_dump(AUDIT_POLICY))
        audit_log = folder / "audit.log"
        plane = ControlPlane(
            folder / "controlplane",
            # Dual-stack Services, as many hospital clusters now have (the pods stay IPv4).
            extra_args=[
                "--hpa-sync-period",
                "2s",
                "--service-cluster-ip-range",
                f"{SERVICE_CIDR},fd00:10:96::/112",
                f"--apiserver-arg=--audit-policy-file={policy}",
                f"--apiserver-arg=--audit-log-path={audit_log}",
                "--apiserver-arg=--audit-log-format=json",
                "--apiserver-arg=--enable-admission-plugins=OwnerReferencesPermissionEnforcement",
            ],
        )
        plane.start()
        stack.callback(plane.stop)
        api = plane.api_client()
        _install_crds(plane)
        services = Informer(api, "/api/v1/services")
        slices = Informer(api, "/apis/discovery.k8s.io/v1/endpointslices")
        apiserver = re.match(r"https://([^:]+):(\d+)", plane.endpoints.server)
        assert apiserver is not None
        proxy = ServiceProxy(services, slices, apiserver=(apiserver[1], int(apiserver[2])))
        services._on_change = proxy.sync  # the proxy opens listeners as Services appear
        for informer in (services, slices):
            informer.start()
            stack.callback(informer.stop)
        services.wait_synced()
        slices.wait_synced()
        proxy.sync()
        stack.callback(proxy.close)
        dns = ClusterDNS(services, slices)
        dns.start(GATEWAY)
        stack.callback(dns.stop)
        kubelet = Kubelet(
            api,
            network,
            folder / "pods",
            nodes=list(NODES),
            apiserver_service=KUBERNETES_SERVICE,
        )
        kubelet.start()
        stack.callback(kubelet.stop)
        yield Cluster(plane, network, kubelet, services, slices, dns, proxy, folder, audit_log)


def _install_crds(plane: ControlPlane) -> None:
    """The chart's CRDs (``crds/``, which Helm installs before the templates), server-side."""
    for path in sorted((chart.CHART / "crds").glob("*.yaml")):
        subprocess.run(
            [
                kubectl(),
                "--kubeconfig",
                str(plane.endpoints.kubeconfig),
                "apply",
                "--server-side",
                "--field-manager=helm",
                "-f",
                str(path),
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
    api = kubernetes.client.ApiextensionsV1Api(plane.api_client())

    def established() -> bool:
        for crd in api.list_custom_resource_definition().items:
            status = crd.status
            conditions = {c.type: c.status for c in (status.conditions if status else None) or []}
            if conditions.get("Established") != "True":
                return False
        return True

    wait_until(established, timeout=30, what="CRDs established")
