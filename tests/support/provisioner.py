"""A volume provisioner for the test cluster: a folder per PersistentVolumeClaim, as a real PV.

There is no storage here, so this plays what a cluster's CSI driver and
external-provisioner do for a StorageClass (rancher's local-path-provisioner
is the closest real one): for every claim of the class :data:`STORAGE_CLASS`
that is not bound, it creates a PersistentVolume of the claim's size and
access modes, with a ``claimRef`` to the claim, backed by a folder of its own
(``hostPath``). The real PersistentVolume controller then binds the two,
and the real scheduler places a pod only once its claims are bound, as it
does with a real provisioner. The kubelet stand-in (:mod:`support.podruntime`)
mounts the PV's folder into the pod.

What a real volume keeps, this keeps: the folder outlives the pod, its
restarts and its deletion, and the claim's deletion too (the class's
reclaim policy is ``Retain``), so a router that starts again on the same
claim finds what the last one left. The folder is on this machine, where
the pods of both Nodes run, so a volume is reachable from either Node, as a
network volume is; size is not enforced (no quota), nor are access modes.

Claims of any other class are left alone: a class no provisioner serves
keeps its claims Pending, as it would in a real cluster.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any, Final

import kubernetes.client
import urllib3
from kubernetes.client.exceptions import ApiException

log = logging.getLogger(__name__)

STORAGE_CLASS: Final = "test-local"
"""The StorageClass this provisioner serves; tests name it in their specs."""
PROVISIONER: Final = "gatewaypool.test/local-path"
_POLL_SECONDS: Final = 0.5


class Provisioner:
    """Creates a folder-backed PersistentVolume for every unbound claim of `STORAGE_CLASS`."""

    def __init__(self, api: kubernetes.client.ApiClient, folder: Path) -> None:
        # Bodies are plain dicts, as the API takes them.
        self._core: Any = kubernetes.client.CoreV1Api(api)
        self._storage: Any = kubernetes.client.StorageV1Api(api)
        self.folder = folder
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="provisioner", daemon=True)
        self.errors: list[str] = []

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        body = {
            "apiVersion": "storage.k8s.io/v1",
            "kind": "StorageClass",
            "metadata": {"name": STORAGE_CLASS},
            "provisioner": PROVISIONER,
            # Bound at once: the scheduler then places the pod where the volume is.
            "volumeBindingMode": "Immediate",
            "reclaimPolicy": "Retain",
        }
        try:
            self._storage.create_storage_class(body)
        except ApiException as exc:
            if exc.status != 409:
                raise
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def volume_folder(self, claim_uid: str) -> Path:
        """The folder backing the volume of the claim of that uid."""
        return self.folder / f"pvc-{claim_uid}"

    def _run(self) -> None:
        while not self._stop.wait(_POLL_SECONDS):
            try:
                claims = self._core.list_persistent_volume_claim_for_all_namespaces()
                for claim in claims.items:
                    if (
                        claim.spec.storage_class_name == STORAGE_CLASS
                        and not claim.spec.volume_name
                    ):
                        self._provision(claim)
            except (ApiException, urllib3.exceptions.HTTPError) as exc:
                # The API server restarting: try again on the next round.
                log.info("provisioner: %s; trying again", exc)
            except Exception as exc:
                log.exception("provisioner")
                self.errors.append(repr(exc))

    def _provision(self, claim: Any) -> None:
        uid = claim.metadata.uid
        folder = self.volume_folder(uid)
        folder.mkdir(parents=True, exist_ok=True)
        volume = {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {
                "name": f"pvc-{uid}",
                "annotations": {"pv.kubernetes.io/provisioned-by": PROVISIONER},
            },
            "spec": {
                "capacity": {"storage": claim.spec.resources.requests["storage"]},
                "accessModes": list(claim.spec.access_modes or ["ReadWriteOnce"]),
                "storageClassName": STORAGE_CLASS,
                "persistentVolumeReclaimPolicy": "Retain",
                "volumeMode": "Filesystem",
                "hostPath": {"path": str(folder), "type": "DirectoryOrCreate"},
                # Pre-bound, as external-provisioner makes it: only this claim may take it.
                "claimRef": {
                    "apiVersion": "v1",
                    "kind": "PersistentVolumeClaim",
                    "namespace": claim.metadata.namespace,
                    "name": claim.metadata.name,
                    "uid": uid,
                },
            },
        }
        try:
            self._core.create_persistent_volume(volume)
        except ApiException as exc:
            if exc.status != 409:  # made on an earlier round, not yet bound
                raise
