"""Secret volumes as the kubelet mounts them, for the stand-ins that play pods.

A real kubelet reads each Secret a pod's volumes name, writes the keys the
volume projects as files (``items``, or every key), and mounts the folder
at each container's ``mountPath``; a missing Secret or key keeps the pod
from starting (``FailedMount``) until it appears. :func:`mount` does the
same into a local folder, and :func:`local_paths` rewrites paths a command
names inside the container to where the files are here.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from support.kubeemu import KubeEmulator

__all__ = ["local_paths", "mount"]


def mount(
    kube: KubeEmulator,
    namespace: str,
    pod_spec: Mapping[str, Any],
    folder: Path,
    *,
    container: int = 0,
) -> dict[str, Path] | None:
    """Write the pod's Secret volumes under `folder`; map the container's mount paths to them.

    Returns ``{mountPath: local folder}`` for the Secret volumes the
    container mounts, or None when a Secret or a projected key is missing.
    """
    volumes = {volume["name"]: volume for volume in pod_spec.get("volumes") or []}
    mounts = (pod_spec.get("containers") or [{}])[container].get("volumeMounts") or []
    mounted: dict[str, Path] = {}
    for entry in mounts:
        source = (volumes.get(entry["name"]) or {}).get("secret")
        if source is None:
            continue
        secret = kube.get("Secret", source["secretName"], namespace)
        if secret is None:
            return None
        data: Mapping[str, str] = secret.get("data") or {}
        items = source.get("items") or [{"key": key, "path": key} for key in data]
        local = folder / entry["name"]
        local.mkdir(parents=True, exist_ok=True)
        for item in items:
            if item["key"] not in data:
                return None
            (local / item["path"]).write_bytes(base64.b64decode(data[item["key"]]))
        mounted[entry["mountPath"].rstrip("/")] = local
    return mounted


def local_paths(arguments: Sequence[str], mounted: Mapping[str, Path]) -> list[str]:
    """`arguments` with every path inside a mounted folder rewritten to the local file."""
    rewritten = []
    for argument in arguments:
        local_file = next(
            (
                str(local / argument[len(inside) + 1 :])
                for inside, local in mounted.items()
                if argument.startswith(inside + "/")
            ),
            argument,
        )
        rewritten.append(local_file)
    return rewritten
