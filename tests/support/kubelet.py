"""A kubelet and StatefulSet controller for a pool's gateways, with real timing.

The emulator runs no controllers, so end-to-end tests play them. A harness
that makes every pod Ready the instant it is asked for hides every ordering
bug (a map naming a gateway that does not listen yet), so this one keeps the
timing of a real cluster:

- a pod appears (Pending, not Ready) as soon as the StatefulSet asks for it
  (``podManagementPolicy: Parallel``, as the operator sets);
- its gateway process starts listening ``listen_after`` seconds later
  (image pull, container start; default 1.5 s);
- the readiness probe passes ``ready_after`` seconds after that (default
  0.5 s): only then is the pod Ready and counted in ``readyReplicas``;
- a pod the StatefulSet no longer wants (the highest ordinals first) is
  stopped at once, as SIGTERM to a gateway that exits on it, and its Pod
  object is deleted;
- pods are made from the StatefulSet's template; when the template changes,
  a rolling update replaces one pod at a time, highest ordinal first, each
  only once every pod is Ready.

- Secret volumes are mounted as a kubelet does (:mod:`support.secretvolumes`):
  a pod whose Secret or key is missing does not start until it appears.

Each gateway is a :class:`~gatewaypool_local.peers.PynetdicomSink` on its
own loopback port (with ``processes=False``, for tests of the operator
alone, no process is started: the pod "listens" when its delay is over);
``connect_to`` gives the router the rules that reach the pods' cluster DNS
names there. Every gateway ever started is kept, so a test
can count what each one received after it was removed. The gateway "image"
serves DICOM over TLS when its pod mounts a certificate at
`GATEWAY_CERT_FOLDER`, as ``spec.gateway.tls.serverCertSecretName`` has the
operator mount one (the documented folder, written here as a gateway image
would have it, not imported from the operator).
"""

from __future__ import annotations

import copy
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gatewaypool_local.peers import PeerTls, PynetdicomSink, free_port
from support import secretvolumes
from support.kubeemu import KubeEmulator

log = logging.getLogger(__name__)

_TICK = 0.05  # the controller loop's period, not a synchronisation
#: Where the stand-in gateway image reads the certificate it serves (docs/security.md).
GATEWAY_CERT_FOLDER = "/etc/gatewaypool/tls/server"


@dataclass
class _Pod:
    ordinal: int
    created: float
    template: str = ""
    listening: float | None = None
    ready: float | None = None
    starting: threading.Thread | None = None


@dataclass
class GatewayKubelet:
    """Plays StatefulSet controller and kubelet for ``<pool>-gw`` in ``namespace``."""

    kube: KubeEmulator
    work: Path
    namespace: str
    pool: str
    ae_title: str
    port: int
    max_gateways: int
    listen_after: float = 1.5
    ready_after: float = 0.5
    processes: bool = True
    sink_options: dict[str, Any] = field(default_factory=dict)
    ports: list[int] = field(init=False)
    gateways: dict[int, PynetdicomSink] = field(init=False, default_factory=dict)
    _pods: dict[int, _Pod] = field(init=False, default_factory=dict)
    _stop: threading.Event = field(init=False, default_factory=threading.Event)
    _thread: threading.Thread | None = field(init=False, default=None)
    _lock: threading.Lock = field(init=False, default_factory=threading.Lock)
    errors: list[str] = field(init=False, default_factory=list)
    #: Ordinals of pods that could not start because a Secret or key was missing.
    failed_mounts: set[int] = field(init=False, default_factory=set)
    _tls: dict[int, PeerTls | None] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.ports = [free_port() for _ in range(self.max_gateways)]

    # -- what tests use --------------------------------------------------------

    @property
    def statefulset(self) -> str:
        return f"{self.pool}-gw"

    def pod_name(self, ordinal: int) -> str:
        return f"{self.pool}-gw-{ordinal}"

    def dns_name(self, ordinal: int) -> str:
        return f"{self.pod_name(ordinal)}.{self.statefulset}.{self.namespace}.svc.cluster.local"

    def connect_to(self) -> list[str]:
        """``--connect-to`` rules that take a router to each pod's loopback port."""
        return [
            f"{self.dns_name(i)}:{self.port}:127.0.0.1:{self.ports[i]}"
            for i in range(self.max_gateways)
        ]

    def ready_ordinals(self) -> set[int]:
        with self._lock:
            return {o for o, pod in self._pods.items() if pod.ready is not None}

    def running_ordinals(self) -> set[int]:
        with self._lock:
            return {o for o, pod in self._pods.items() if pod.listening is not None}

    def rolled_out(self) -> bool:
        """Every wanted pod exists, on the StatefulSet's current template, and is Ready.

        The StatefulSet is read now, not as the loop last saw it: a change
        written a moment ago is not rolled out yet.
        """
        statefulset = self.kube.get("StatefulSet", self.statefulset, self.namespace)
        if statefulset is None:
            return False
        spec = statefulset.get("spec") or {}
        wanted = int(spec.get("replicas") or 0)
        template = json.dumps(spec.get("template") or {}, sort_keys=True)
        with self._lock:
            return len(self._pods) == wanted and all(
                pod.template == template and pod.ready is not None for pod in self._pods.values()
            )

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="kubelet", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        for pod in list(self._pods.values()):
            if pod.starting is not None:
                pod.starting.join(timeout=30)
        for sink in self.gateways.values():
            sink.stop()

    def __enter__(self) -> GatewayKubelet:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    # -- the controller loop ---------------------------------------------------

    def _run(self) -> None:
        while not self._stop.wait(_TICK):
            try:
                self._sync(time.monotonic())
            except Exception as exc:  # reported to the test, never silent
                log.exception("kubelet sync failed")
                self.errors.append(repr(exc))

    def _sync(self, now: float) -> None:
        statefulset = self.kube.get("StatefulSet", self.statefulset, self.namespace)
        if statefulset is None:
            return
        wanted = int((statefulset.get("spec") or {}).get("replicas") or 0)
        if wanted > self.max_gateways:
            raise RuntimeError(f"{wanted} replicas asked, the harness has {self.max_gateways}")
        template = (statefulset.get("spec") or {}).get("template") or {}
        owner = {
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "name": self.statefulset,
            "uid": statefulset["metadata"]["uid"],
            "controller": True,
            "blockOwnerDeletion": True,
        }
        self._adopt(owner)
        for ordinal in range(wanted):
            if ordinal not in self._pods:
                self._create_pod(ordinal, template, owner, now)
        for ordinal in sorted((o for o in self._pods if o >= wanted), reverse=True):
            self._remove_pod(ordinal)
        self._roll(template, owner, now)
        for pod in list(self._pods.values()):
            self._advance(pod, now)
        self._write_status(statefulset, wanted)

    def _roll(self, template: dict[str, Any], owner: dict[str, Any], now: float) -> None:
        """RollingUpdate: replace one outdated pod at a time, highest ordinal first.

        As the StatefulSet controller does, only while every pod is Ready.
        """
        current = json.dumps(template, sort_keys=True)
        outdated = sorted((o for o, pod in self._pods.items() if pod.template != current))
        if not outdated or any(pod.ready is None for pod in self._pods.values()):
            return
        ordinal = outdated[-1]
        self._remove_pod(ordinal)
        self._create_pod(ordinal, template, owner, now)

    def _adopt(self, owner: dict[str, Any]) -> None:
        """A StatefulSet recreated with its pods orphaned takes them back."""
        for ordinal in list(self._pods):
            pod = self.kube.get("Pod", self.pod_name(ordinal), self.namespace)
            if pod is None:
                with self._lock:
                    self._pods.pop(ordinal, None)  # deleted behind our back: made again
                continue
            refs = pod["metadata"].get("ownerReferences") or []
            if [ref.get("uid") for ref in refs] != [owner["uid"]]:
                self.kube.write_metadata(
                    "Pod", self.pod_name(ordinal), self.namespace, ownerReferences=[owner]
                )

    def _create_pod(
        self, ordinal: int, template: dict[str, Any], owner: dict[str, Any], now: float
    ) -> None:
        labels = {
            **((template.get("metadata") or {}).get("labels") or {}),
            "statefulset.kubernetes.io/pod-name": self.pod_name(ordinal),
        }
        self.kube.create(
            "Pod",
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": self.pod_name(ordinal),
                    "namespace": self.namespace,
                    "labels": labels,
                    "ownerReferences": [owner],
                },
                "spec": copy.deepcopy(template.get("spec") or {}),
            },
        )
        self._write_pod_status(ordinal, phase="Pending", ready=False)
        with self._lock:
            self._pods[ordinal] = _Pod(
                ordinal=ordinal, created=now, template=json.dumps(template, sort_keys=True)
            )

    def _advance(self, pod: _Pod, now: float) -> None:
        if (
            pod.listening is None
            and pod.starting is None
            and now - pod.created >= self.listen_after
        ):
            pod.starting = threading.Thread(
                target=self._start_gateway, args=(pod,), name=f"start-gw-{pod.ordinal}"
            )
            pod.starting.start()
        if (
            pod.listening is not None
            and pod.ready is None
            and now - pod.listening >= self.ready_after
        ):
            self._write_pod_status(pod.ordinal, phase="Running", ready=True)
            with self._lock:
                pod.ready = now

    def _start_gateway(self, pod: _Pod) -> None:
        if not self.processes:
            with self._lock:
                pod.listening = time.monotonic()
            return
        spec = json.loads(pod.template).get("spec") or {}
        folder = self.work / self.pod_name(pod.ordinal) / "volumes"
        mounted = secretvolumes.mount(self.kube, self.namespace, spec, folder)
        if mounted is None:  # FailedMount: tried again on a later tick
            with self._lock:
                self.failed_mounts.add(pod.ordinal)
                pod.starting = None
            return
        certificate = mounted.get(GATEWAY_CERT_FOLDER)
        tls = (
            None
            if certificate is None
            else PeerTls(certificate / "tls.crt", certificate / "tls.key")
        )
        sink = self.gateways.get(pod.ordinal)
        if sink is not None and self._tls.get(pod.ordinal) != tls:
            self.errors.append(f"{self.pod_name(pod.ordinal)}: its TLS changed, not played here")
            return
        self._tls[pod.ordinal] = tls
        if sink is None:
            sink = PynetdicomSink(
                self.work / self.pod_name(pod.ordinal),
                ae_title=self.ae_title,
                port=self.ports[pod.ordinal],
                tls=tls,
                **self.sink_options,
            )
            self.gateways[pod.ordinal] = sink
        sink.start()  # returns once it answers C-ECHO
        with self._lock:
            pod.listening = time.monotonic()

    def _remove_pod(self, ordinal: int) -> None:
        with self._lock:
            pod = self._pods.pop(ordinal)
        if pod.starting is not None:
            pod.starting.join(timeout=30)
        sink = self.gateways.get(ordinal)
        if sink is not None and sink.is_running():
            sink.stop()
        # In process, like status writes: the request log keeps to what the system does.
        self.kube.delete("Pod", self.pod_name(ordinal), self.namespace)

    # -- status ----------------------------------------------------------------

    def _write_pod_status(self, ordinal: int, *, phase: str, ready: bool) -> None:
        condition = {
            "type": "Ready",
            "status": "True" if ready else "False",
            "lastTransitionTime": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        self.kube.write_status(
            "",
            "v1",
            "pods",
            self.namespace,
            self.pod_name(ordinal),
            status={"phase": phase, "conditions": [condition]},
        )

    def _write_status(self, statefulset: dict[str, Any], wanted: int) -> None:
        with self._lock:
            existing = len(self._pods)
            ready = sum(1 for pod in self._pods.values() if pod.ready is not None)
        status = {
            "observedGeneration": (statefulset.get("metadata") or {}).get("generation"),
            "replicas": existing,
            "readyReplicas": ready,
            "availableReplicas": ready,
            "currentReplicas": existing,
            "updatedReplicas": existing,
        }
        if (statefulset.get("status") or {}) != status:
            self.kube.write_status(
                "apps", "v1", "statefulsets", self.namespace, self.statefulset, status=status
            )
