"""A kubelet for the real control plane: Nodes, their Leases, and the pods bound to them.

No container runtime exists here, so this plays the kubelet of one or more
Nodes against the real API server, and runs each container as a local
process through :mod:`support.podruntime` (its own network, mounts, host
name and environment). What it does, as the kubelet does it:

- registers each Node (Ready, with capacity), renews its Lease in
  ``kube-node-lease`` every `LEASE_RENEW` seconds and its Ready condition's
  heartbeat, so the node lifecycle controller neither taints nor evicts;
- takes the pods the real scheduler binds to its Nodes; a pod's container
  starts `start_after` seconds later (image pull, container start) and the
  pod becomes Ready only when its real readiness probe passes;
- runs startup, readiness and liveness probes (``tcpSocket``, ``httpGet``,
  ``exec``) with the pod's own thresholds, readiness and liveness only once
  the startup probe (if any) has passed; `probe_period_cap` caps the
  readiness period (the one time compression here, so a 5 s period does
  not make every test wait for Ready); liveness keeps its real period, as a
  compressed one would kill a process still starting;
- a pod whose Secret or ConfigMap volume cannot be mounted (the object or a
  key is missing), or whose PersistentVolumeClaim is not bound, waits, with
  a ``FailedMount`` Warning Event, and starts once it can be;
- volumes for the claims of the StorageClass ``test-local``, from a
  provisioner that runs beside it (:mod:`support.provisioner`: a folder per
  claim that outlives its pods, as a real PersistentVolume does);
- restarts exited containers by ``restartPolicy``, with back-off;
- a pod being deleted gets SIGTERM, then SIGKILL after its
  ``terminationGracePeriodSeconds``, and is then removed from the API;
- faults on demand: `crash` (the process dies), `hold` (the process dies
  and is not restarted until `release`: a gateway down for as long as a
  test says, refusing connections, not Ready), `evict` (phase Failed,
  reason Evicted, as node-pressure eviction leaves it) and `lose_node`
  (every process killed at once, Lease and status no longer renewed).

Pod folders stay after the pod is gone, so a test can read what a gateway
stored or a router logged.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import kubernetes.client
import urllib3
from kubernetes.client.exceptions import ApiException

import gatewaypool
from support import images, kubeletserver, podruntime
from support.informer import Informer
from support.podnet import PodNetwork
from support.provisioner import Provisioner

log = logging.getLogger(__name__)

#: The project's source folder (an editable install runs from it).
_SOURCES = Path(gatewaypool.__file__).resolve().parents[2]
LEASE_SECONDS = 40
LEASE_RENEW = 5.0
_TICK = 0.1
#: The probes a startup probe holds back until it has passed.
_AFTER_STARTUP = ("readinessProbe", "livenessProbe")


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _micro_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class Container:
    """One container's process and what the kubelet reports of it."""

    spec: dict[str, Any]
    process: subprocess.Popen[bytes] | None = None
    started_at: str | None = None
    ready: bool = False
    restarts: int = 0
    waiting: str | None = "ContainerCreating"
    terminated: dict[str, Any] | None = None
    last_terminated: dict[str, Any] | None = None
    next_start: float = 0.0
    probes_due: dict[str, float] = field(default_factory=dict)
    probe_results: dict[str, tuple[int, int]] = field(default_factory=dict)


@dataclass
class Pod:
    """A pod this kubelet runs."""

    uid: str
    namespace: str
    name: str
    node: str
    bound_at: float
    folder: Path
    netns: str = ""
    address: str = ""
    containers: dict[str, Container] = field(default_factory=dict)
    phase: str = "Pending"
    reason: str | None = None
    message: str | None = None
    #: Set (under the lock) by `evict` before it kills the pod's processes: the pod
    #: worker then leaves the pod alone, lest it take their deaths for exits of their own.
    stopping: bool = False
    done: bool = False
    started: bool = False
    manifest: dict[str, Any] = field(default_factory=dict)
    #: A status write that did not reach the API server (it was restarting): sent again.
    unsent: bool = False
    #: Its containers are not restarted (see `Kubelet.hold`).
    held: bool = False


class Kubelet:
    """Plays the kubelet of `nodes` against the API of `api` (see the module doc)."""

    def __init__(
        self,
        api: kubernetes.client.ApiClient,
        network: PodNetwork,
        folder: Path,
        *,
        nodes: list[str],
        apiserver_service: tuple[str, int],
        start_after: float = 1.0,
        probe_period_cap: float = 1.0,
        crash_backoff: float = 10.0,
        cluster_domain: str = "cluster.local",
    ) -> None:
        self._api = api
        # Bodies are plain dicts, as the API takes them: the clients are used untyped.
        self._core: Any = kubernetes.client.CoreV1Api(api)
        self._coordination: Any = kubernetes.client.CoordinationV1Api(api)
        self._network = network
        self.folder = folder
        self.nodes = list(nodes)
        self._service = apiserver_service
        self.start_after = start_after
        self.probe_period_cap = probe_period_cap
        self.crash_backoff = crash_backoff
        self.cluster_domain = cluster_domain
        self._pods: dict[str, Pod] = {}
        self._lost: set[str] = set()
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self.errors: list[str] = []
        self._informer = Informer(api, "/api/v1/pods")
        self._threads: list[threading.Thread] = []
        self._node_addresses = {node: f"10.244.{200 + i}.1" for i, node in enumerate(nodes)}
        self._servers: dict[str, kubeletserver.KubeletServer] = {}
        #: The volumes of claims of the test StorageClass, beside the pods' folders.
        self.provisioner = Provisioner(api, folder.parent / "volumes")

    # -- what tests use ----------------------------------------------------------------

    def start(self) -> None:
        for node in self.nodes:
            self._servers[node] = kubeletserver.KubeletServer(
                node, self._node_addresses[node], functools.partial(self._running, node)
            )
            self._servers[node].start()
            self._register(node)
        self._informer.start()
        self._informer.wait_synced()
        self.provisioner.start()
        for target, name in ((self._lease_loop, "kubelet leases"), (self._sync_loop, "kubelet")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        self.provisioner.stop()
        for thread in self._threads:
            thread.join(timeout=10)
        for server in self._servers.values():
            server.close()
        self._informer.stop()
        with self._lock:
            pods = list(self._pods.values())
        stoppers = [
            threading.Thread(target=self._kill_all, args=(pod,), kwargs={"grace": 2.0})
            for pod in pods
        ]
        for thread in stoppers:
            thread.start()
        for thread in stoppers:
            thread.join()
        for pod in pods:
            self._teardown(pod)

    def pod(self, namespace: str, name: str) -> Pod | None:
        """The newest pod of that name this kubelet ran (it may be gone from the API)."""
        with self._lock:
            found = [p for p in self._pods.values() if (p.namespace, p.name) == (namespace, name)]
        return max(found, key=lambda p: p.bound_at) if found else None

    def pods(self, namespace: str) -> list[Pod]:
        """Every pod of `namespace` this kubelet ran, running or gone, oldest first."""
        with self._lock:
            return sorted(
                (p for p in self._pods.values() if p.namespace == namespace),
                key=lambda p: p.bound_at,
            )

    def volume(self, pod: Pod, volume: str) -> Path:
        """The folder of one of the pod's volumes, as its containers saw it."""
        return pod.folder / "volumes" / volume

    def log(self, pod: Pod, container: str | None = None) -> str:
        name = container or next(iter(pod.containers), "")
        path = pod.folder / "containers" / name / "log"
        return path.read_text(errors="replace") if path.exists() else ""

    def crash(self, namespace: str, name: str) -> None:
        """The pod's main process dies (SIGKILL); the restart policy decides what follows."""
        pod = self._require(namespace, name)
        for container in pod.containers.values():
            if container.process is not None and container.process.poll() is None:
                _signal_group(container.process, signal.SIGKILL)

    def hold(self, namespace: str, name: str) -> None:
        """The pod's processes die (SIGKILL) and stay down until `release`.

        The pod stays Running and bound, its restart pending: the probes
        fail, it turns not Ready, and its address refuses connections, as a
        container in a long crash loop does.
        """
        pod = self._require(namespace, name)
        with self._lock:
            pod.held = True
        for container in pod.containers.values():
            if container.process is not None and container.process.poll() is None:
                _signal_group(container.process, signal.SIGKILL)

    def release(self, namespace: str, name: str) -> None:
        """Undo `hold`: the pod's containers start again at once."""
        pod = self._require(namespace, name)
        with self._lock:
            pod.held = False
            for container in pod.containers.values():
                if container.process is None and container.next_start:
                    container.next_start = time.monotonic()

    def evict(
        self, namespace: str, name: str, message: str = "The node was low on memory."
    ) -> None:
        """Node-pressure eviction: processes killed, the pod left Failed with reason Evicted."""
        pod = self._require(namespace, name)
        with self._lock:
            pod.stopping = True
            pod.phase, pod.reason, pod.message = "Failed", "Evicted", message
        self._kill_all(pod, grace=0.0)
        self._write_status(pod)
        with self._lock:
            pod.done = True
        self._teardown(pod)

    def lose_node(self, node: str) -> None:
        """The node goes dark: every process killed, nothing more written for it."""
        with self._lock:
            self._lost.add(node)
            pods = [p for p in self._pods.values() if p.node == node]
        self._servers[node].close()
        for pod in pods:
            self._kill_all(pod, grace=0.0)
            with self._lock:
                pod.done = True

    def servers(self) -> dict[str, kubeletserver.KubeletServer]:
        """Each Node's HTTPS port (``/metrics/resource``), by Node name."""
        return dict(self._servers)

    def _running(self, node: str) -> list[kubeletserver.RunningContainer]:
        """The running containers of `node`'s pods, for its metrics endpoint."""
        with self._lock:
            return [
                kubeletserver.RunningContainer(pod.namespace, pod.name, name, process.pid)
                for pod in self._pods.values()
                if pod.node == node and not pod.done
                for name, container in pod.containers.items()
                if (process := container.process) is not None
            ]

    def _require(self, namespace: str, name: str) -> Pod:
        pod = self.pod(namespace, name)
        if pod is None or pod.done:
            raise LookupError(f"no running pod {namespace}/{name} on this kubelet")
        return pod

    # -- nodes ----------------------------------------------------------------------------

    def _register(self, node: str) -> None:
        body = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": node,
                "labels": {
                    "kubernetes.io/hostname": node,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    "topology.kubernetes.io/zone": "zone-a",
                },
            },
            "spec": {},
        }
        with contextlib.suppress(ApiException):
            self._core.create_node(body)
        self._write_node_status(node)
        self._renew_lease(node)

    def _write_node_status(self, node: str) -> None:
        stamp = now()
        conditions = [
            {
                "type": kind,
                "status": "False",
                "reason": f"KubeletHas{reason}",
                "message": "",
                "lastHeartbeatTime": stamp,
                "lastTransitionTime": stamp,
            }
            for kind, reason in (
                ("MemoryPressure", "SufficientMemory"),
                ("DiskPressure", "NoDiskPressure"),
                ("PIDPressure", "SufficientPID"),
            )
        ]
        conditions.append(
            {
                "type": "Ready",
                "status": "True",
                "reason": "KubeletReady",
                "message": "kubelet is posting ready status",
                "lastHeartbeatTime": stamp,
                "lastTransitionTime": stamp,
            }
        )
        capacity = {"cpu": "16", "memory": "64Gi", "pods": "110", "ephemeral-storage": "100Gi"}
        status = {
            "conditions": conditions,
            "capacity": capacity,
            "allocatable": capacity,
            "addresses": [
                {"type": "InternalIP", "address": self._node_addresses[node]},
                {"type": "Hostname", "address": node},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": kubeletserver.PORT}},
            "nodeInfo": {
                "machineID": node,
                "systemUUID": node,
                "bootID": node,
                "kernelVersion": os.uname().release,
                "osImage": "GatewayPool test kubelet",
                "containerRuntimeVersion": "local://1.0",
                "kubeletVersion": "v1.37.2",
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": "amd64",
            },
        }
        self._core.patch_node_status(node, {"status": status})

    def _lease_loop(self) -> None:
        while not self._stop.wait(LEASE_RENEW):
            for node in self.nodes:
                if node in self._lost:
                    continue
                try:
                    self._renew_lease(node)
                    self._write_node_status(node)
                except Exception as exc:  # an API restart: the next turn renews
                    log.debug("lease of %s: %s", node, exc)

    def _renew_lease(self, node: str) -> None:
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": node, "namespace": "kube-node-lease"},
            "spec": {
                "holderIdentity": node,
                "leaseDurationSeconds": LEASE_SECONDS,
                "renewTime": _micro_now(),
            },
        }
        try:
            self._coordination.patch_namespaced_lease(
                node, "kube-node-lease", {"spec": body["spec"]}
            )
        except ApiException as exc:
            if exc.status != 404:
                raise
            self._coordination.create_namespaced_lease("kube-node-lease", body)

    # -- pods ----------------------------------------------------------------------------------

    def _sync_loop(self) -> None:
        while not self._stop.wait(_TICK):
            for manifest in self._informer.items():
                node = (manifest.get("spec") or {}).get("nodeName")
                if node not in self.nodes or node in self._lost:
                    continue
                try:
                    self._sync_pod(manifest, node)
                except Exception as exc:
                    log.exception("kubelet: pod %s", manifest["metadata"].get("name"))
                    self.errors.append(f"{manifest['metadata'].get('name')}: {exc!r}")

    def _sync_pod(self, manifest: dict[str, Any], node: str) -> None:
        metadata = manifest["metadata"]
        uid = metadata["uid"]
        with self._lock:
            pod = self._pods.get(uid)
            if pod is None:
                if (manifest.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
                    return
                pod = Pod(
                    uid=uid,
                    namespace=metadata["namespace"],
                    name=metadata["name"],
                    node=node,
                    bound_at=time.monotonic(),
                    folder=self.folder / f"{metadata['namespace']}.{metadata['name']}.{uid[:8]}",
                    manifest=manifest,
                )
                self._pods[uid] = pod
                thread = threading.Thread(
                    target=self._pod_worker, args=(pod,), name=f"pod {pod.name}", daemon=True
                )
                thread.start()
            pod.manifest = manifest
            stale = pod.started and not pod.done and self._ready(pod) != _api_ready(manifest)
        if stale:
            # As the kubelet's status manager does: what another writer changed
            # (the node lifecycle controller marks pods not ready) is set back.
            self._write_status(pod)

    @staticmethod
    def _ready(pod: Pod) -> bool:
        return (
            pod.started
            and not pod.done
            and pod.phase not in ("Failed", "Succeeded")
            and all(c.ready for c in pod.containers.values())
        )

    def _pod_worker(self, pod: Pod) -> None:
        """One pod's life, as the kubelet's pod worker runs it."""
        try:
            self._write_status(pod)
            deadline = pod.bound_at + self.start_after
            while time.monotonic() < deadline and not self._deleting(pod):
                self._stop.wait(_TICK)
            while not self._stop.is_set() and not pod.done:
                if self._deleting(pod):
                    self._terminate(pod)
                    return
                if pod.unsent:
                    self._write_status(pod)
                try:
                    if not pod.started:
                        self._try_start(pod)
                    else:
                        self._tend(pod)
                except (ApiException, urllib3.exceptions.HTTPError) as exc:
                    # The API server restarting: the kubelet goes on and tries again.
                    log.info("kubelet: pod %s: %s; trying again", pod.name, exc)
                    self._stop.wait(0.5)
                self._stop.wait(_TICK)
        except Exception as exc:
            log.exception("kubelet: pod worker %s", pod.name)
            self.errors.append(f"{pod.name}: {exc!r}")

    def _deleting(self, pod: Pod) -> bool:
        current = self._informer.get(pod.namespace, pod.name)
        if current is None or current["metadata"]["uid"] != pod.uid:
            return True
        return current["metadata"].get("deletionTimestamp") is not None

    def _context(self, pod: Pod) -> podruntime.PodContext:
        return podruntime.PodContext(
            pod=pod.manifest,
            address=pod.address,
            host_address=self._node_addresses[pod.node],
            folder=pod.folder,
            service_host=self._service[0],
            service_port=self._service[1],
            cluster_domain=self.cluster_domain,
            keep=(_SOURCES, self.folder, Path(sys.prefix), Path(sys.base_prefix)),
        )

    def _try_start(self, pod: Pod) -> None:
        spec = pod.manifest.get("spec") or {}
        for container in spec.get("containers") or []:
            if images.pull(container["image"]) is None:
                pod.containers.setdefault(
                    container["name"], Container(container)
                ).waiting = "ErrImagePull"
                pod.message = f"image {container['image']!r} is not known to the test kubelet"
                self._write_status(pod)
                return
        if not pod.address:
            pod.address = self._network.allocate()
            pod.netns = f"pod-{pod.uid[:8]}"
            self._network.attach(pod.netns, pod.address)
        try:
            volumes = podruntime.make_volumes(self._api, self._context(pod))
        except podruntime.MountFailedError as exc:
            if pod.message != str(exc):
                pod.message = str(exc)
                self._write_status(pod)
                self._warn(pod, "FailedMount", f"MountVolume.SetUp failed: {exc}")
            self._stop.wait(1.0)  # the kubelet retries mounts on its next sync
            return
        try:
            prepared = []
            for spec_container in spec.get("containers") or []:
                env = podruntime.environment(
                    self._api, self._context(pod), spec_container, _image(spec_container).env
                )
                prepared.append((spec_container, env))
        except podruntime.MountFailedError as exc:
            if pod.message != str(exc):
                pod.message = str(exc)
                self._write_status(pod)
            self._stop.wait(1.0)  # the kubelet retries mounts on its next sync
            return
        pod.message = None
        for spec_container, env in prepared:
            container = pod.containers.setdefault(spec_container["name"], Container(spec_container))
            container.spec = spec_container
            self._launch(pod, container, volumes, env)
        pod.started = True
        pod.phase = "Running"
        self._write_status(pod)

    def _warn(self, pod: Pod, reason: str, message: str) -> None:
        """A Warning Event about the pod, as the kubelet records one (``kubectl describe``)."""
        event = {
            "metadata": {"generateName": f"{pod.name}.", "namespace": pod.namespace},
            "involvedObject": {
                "apiVersion": "v1",
                "kind": "Pod",
                "name": pod.name,
                "namespace": pod.namespace,
                "uid": pod.uid,
            },
            "reason": reason,
            "message": message,
            "type": "Warning",
            "source": {"component": "kubelet", "host": pod.node},
            "firstTimestamp": now(),
            "lastTimestamp": now(),
            "count": 1,
        }
        try:
            self._core.create_namespaced_event(pod.namespace, event)
        except (ApiException, urllib3.exceptions.HTTPError) as exc:
            log.info("event %s for pod %s not recorded: %s", reason, pod.name, exc)

    def _launch(
        self, pod: Pod, container: Container, volumes: dict[str, Path], env: dict[str, str]
    ) -> None:
        spec = container.spec
        image = _image(spec)
        argv = images.command_line(
            image,
            [podruntime.expand(a, env) for a in spec.get("command") or []],
            [podruntime.expand(a, env) for a in spec.get("args") or []],
        )
        script = podruntime.launch_script(
            self._context(pod), spec, volumes, argv, env, image.workdir
        )
        work = pod.folder / "containers" / spec["name"]
        (work / "start.sh").write_text(script)
        with (work / "log").open("ab") as log_file:
            container.process = subprocess.Popen(
                [
                    "ip",
                    "netns",
                    "exec",
                    pod.netns,
                    "unshare",
                    "--uts",
                    "--",
                    "sh",
                    str(work / "start.sh"),
                ],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        container.started_at = now()
        container.waiting = None
        container.terminated = None
        container.ready = False
        started = time.monotonic()
        # A startup probe holds the other two back until it has passed.
        first = ("startupProbe",) if spec.get("startupProbe") else _AFTER_STARTUP
        container.probes_due = {
            kind: started + float((spec.get(kind) or {}).get("initialDelaySeconds", 0))
            for kind in first
            if spec.get(kind)
        }
        container.probe_results = {}
        if not spec.get("readinessProbe") and not spec.get("startupProbe"):
            container.ready = True

    def _tend(self, pod: Pod) -> None:
        if pod.stopping:
            return  # being evicted: `evict` kills it and writes its phase
        changed = False
        restart_policy = (pod.manifest.get("spec") or {}).get("restartPolicy", "Always")
        for container in pod.containers.values():
            process = container.process
            if process is not None and process.poll() is not None:
                code = process.returncode
                container.terminated = {
                    "exitCode": code if code >= 0 else 128 - code,
                    "reason": "Completed" if code == 0 else "Error",
                    "startedAt": container.started_at,
                    "finishedAt": now(),
                }
                container.process = None
                container.ready = False
                changed = True
                if restart_policy == "Always" or (restart_policy == "OnFailure" and code != 0):
                    backoff = min(self.crash_backoff * 2 ** min(container.restarts, 5), 300)
                    container.next_start = time.monotonic() + backoff
                    container.waiting = "CrashLoopBackOff" if container.restarts else None
            if container.process is None and container.next_start and not pod.held:
                if time.monotonic() >= container.next_start and not pod.stopping:
                    container.next_start = 0.0
                    container.last_terminated = container.terminated
                    container.restarts += 1
                    volumes = podruntime.make_volumes(self._api, self._context(pod))
                    env = podruntime.environment(
                        self._api, self._context(pod), container.spec, _image(container.spec).env
                    )
                    self._launch(pod, container, volumes, env)
                    changed = True
            elif container.process is not None:
                changed |= self._probe(pod, container)
        if pod.stopping:
            return  # evicted meanwhile: its processes died of that, not of their own
        if all(c.process is None and not c.next_start for c in pod.containers.values()):
            failed = any((c.terminated or {}).get("exitCode") for c in pod.containers.values())
            pod.phase = "Failed" if failed else "Succeeded"
            pod.done = True
            changed = True
        if changed:
            self._write_status(pod)
        if pod.done:
            self._teardown(pod)

    def _probe(self, pod: Pod, container: Container) -> bool:
        changed = False
        moment = time.monotonic()
        for kind, due in list(container.probes_due.items()):
            if moment < due:
                continue
            probe = container.spec[kind]
            period = float(probe.get("periodSeconds", 10))
            if kind == "readinessProbe":
                # Liveness keeps its real period: compressed, it kills slow starters.
                period = min(period, self.probe_period_cap)
            container.probes_due[kind] = moment + period
            passed = self._run_probe(pod, container, probe)
            successes, failures = container.probe_results.get(kind, (0, 0))
            successes, failures = (successes + 1, 0) if passed else (0, failures + 1)
            container.probe_results[kind] = (successes, failures)
            if kind == "readinessProbe":
                if not container.ready and successes >= int(probe.get("successThreshold", 1)):
                    container.ready, changed = True, True
                elif container.ready and failures >= int(probe.get("failureThreshold", 3)):
                    container.ready, changed = False, True
            elif kind == "startupProbe" and successes >= int(probe.get("successThreshold", 1)):
                del container.probes_due[kind]
                for later in _AFTER_STARTUP:
                    if container.spec.get(later):
                        delay = float(container.spec[later].get("initialDelaySeconds", 0))
                        container.probes_due[later] = moment + delay
                if not container.spec.get("readinessProbe"):
                    container.ready, changed = True, True
            elif failures >= int(probe.get("failureThreshold", 3)) and container.process:
                log.info("kubelet: %s failed its %s; restarting", pod.name, kind)
                _signal_group(container.process, signal.SIGKILL)
        return changed

    def _run_probe(self, pod: Pod, container: Container, probe: dict[str, Any]) -> bool:
        timeout = float(probe.get("timeoutSeconds", 1))
        if "tcpSocket" in probe:
            port = _port(container.spec, probe["tcpSocket"]["port"])
            try:
                with socket.create_connection((pod.address, port), timeout=timeout):
                    return True
            except OSError:
                return False
        if "httpGet" in probe:
            get = probe["httpGet"]
            port = _port(container.spec, get["port"])
            scheme = str(get.get("scheme", "HTTP")).lower()
            url = f"{scheme}://{pod.address}:{port}{get.get('path', '/')}"
            # The kubelet does not verify an HTTPS probe's certificate.
            unverified = ssl._create_unverified_context() if scheme == "https" else None
            try:
                with urllib.request.urlopen(url, timeout=timeout, context=unverified) as response:
                    return bool(200 <= response.status < 400)
            except OSError:
                return False
        if "exec" in probe and container.process is not None:
            result = subprocess.run(
                [
                    "nsenter",
                    "-t",
                    str(container.process.pid),
                    "-m",
                    "-n",
                    "-u",
                    "--",
                    *probe["exec"]["command"],
                ],
                capture_output=True,
                timeout=timeout + 5,
                check=False,
            )
            return result.returncode == 0
        return False

    def _terminate(self, pod: Pod) -> None:
        current = self._informer.get(pod.namespace, pod.name)
        grace = 30.0
        if current is not None and current["metadata"]["uid"] == pod.uid:
            grace = float(current["metadata"].get("deletionGracePeriodSeconds", 30))
        self._kill_all(pod, grace=grace)
        with self._lock:
            pod.done = True
        self._teardown(pod)
        if current is not None and current["metadata"]["uid"] == pod.uid:
            self._write_status(pod)
            try:
                # In the body: a DELETE with a body takes its options from there alone.
                self._core.delete_namespaced_pod(
                    pod.name,
                    pod.namespace,
                    body={"gracePeriodSeconds": 0, "preconditions": {"uid": pod.uid}},
                )
            except ApiException as exc:
                if exc.status not in (404, 409):  # gone, or another pod of that name now
                    self.errors.append(f"{pod.name}: final delete refused: {exc.status}")

    def _kill_all(self, pod: Pod, *, grace: float) -> None:
        processes = [c.process for c in pod.containers.values() if c.process is not None]
        for process in processes:
            if process.poll() is None:
                _signal_group(process, signal.SIGTERM if grace > 0 else signal.SIGKILL)
        deadline = time.monotonic() + grace
        for process in processes:
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(process, signal.SIGKILL)
                process.wait()
        for container in pod.containers.values():
            container.process = None
            container.ready = False  # a killed container is not ready
            container.next_start = 0.0

    def _teardown(self, pod: Pod) -> None:
        if pod.netns:
            with contextlib.suppress(RuntimeError):
                self._network.detach(pod.netns)
            pod.netns = ""

    # -- status ------------------------------------------------------------------------------------

    def _write_status(self, pod: Pod) -> None:
        if pod.node in self._lost:
            return
        stamp = now()
        ready = self._ready(pod)
        statuses = []
        for name, container in pod.containers.items():
            state: dict[str, Any]
            if container.process is not None:
                state = {"running": {"startedAt": container.started_at}}
            elif container.waiting:
                state = {"waiting": {"reason": container.waiting}}
            elif container.terminated:
                state = {"terminated": container.terminated}
            else:
                state = {"waiting": {"reason": "ContainerCreating"}}
            entry: dict[str, Any] = {
                "name": name,
                "image": container.spec["image"],
                "imageID": "",
                "containerID": f"local://{pod.uid[:8]}-{name}-{container.restarts}",
                "ready": container.ready,
                "started": container.process is not None,
                "restartCount": container.restarts,
                "state": state,
            }
            if container.last_terminated:
                entry["lastState"] = {"terminated": container.last_terminated}
            statuses.append(entry)

        def condition(kind: str, value: bool) -> dict[str, Any]:
            return {"type": kind, "status": str(value), "lastTransitionTime": stamp}

        status: dict[str, Any] = {
            "phase": pod.phase,
            "hostIP": self._node_addresses[pod.node],
            "hostIPs": [{"ip": self._node_addresses[pod.node]}],
            "conditions": [
                condition("PodReadyToStartContainers", bool(pod.address)),
                condition("Initialized", True),
                condition("ContainersReady", ready),
                condition("Ready", ready),
            ],
            "containerStatuses": statuses,
        }
        if pod.address and not pod.done:
            status["podIP"] = pod.address
            status["podIPs"] = [{"ip": pod.address}]
        if pod.started:
            status["startTime"] = (
                stamp
                if "startTime" not in pod.manifest.get("status", {})
                else (pod.manifest["status"]["startTime"])
            )
        if pod.reason:
            status["reason"] = pod.reason
        if pod.message:
            status["message"] = pod.message
        pod.unsent = False
        try:
            self._core.patch_namespaced_pod_status(
                pod.name,
                pod.namespace,
                {"metadata": {"uid": pod.uid}, "status": status},
                _content_type="application/strategic-merge-patch+json",
            )
        except urllib3.exceptions.HTTPError as exc:  # the API server restarting
            log.info("pod %s status not sent: %s", pod.name, exc)
            pod.unsent = True
        except ApiException as exc:
            if exc.status == 404:  # deleted meanwhile
                return
            if exc.status >= 500 or exc.status == 429:
                pod.unsent = True
                return
            self.errors.append(f"{pod.name}: status refused: {exc.status} {exc.body}")
            log.warning("pod %s status: %s %s", pod.name, exc.status, exc.body)


def _api_ready(manifest: dict[str, Any]) -> bool:
    conditions = (manifest.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def _image(container: dict[str, Any]) -> images.Image:
    image = images.pull(container["image"])
    if image is None:
        raise LookupError(f"image {container['image']!r} was not pulled")
    return image


def _port(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int) or str(port).isdigit():
        return int(port)
    for item in container.get("ports") or []:
        if item.get("name") == port:
            return int(item["containerPort"])
    raise ValueError(f"no container port named {port!r}")


def _signal_group(process: subprocess.Popen[bytes], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)
