"""Running a pod's container as a local process, with what a container runtime gives it.

The kubelet stand-in (:mod:`support.nodes`) calls this to make a pod's
sandbox and start its containers. What a container gets, and how:

- **Its own network**: the pod's network namespace (:mod:`support.podnet`),
  entered with ``ip netns exec``.
- **Its volumes at their mount paths**: the process runs in a mount namespace
  of its own. A mount path that does not exist on this machine is made in an
  overlay of its nearest existing folder (``/etc``, ``/var``, ...), so the
  machine's files are never written; the volume's folder is then bound there.
  Volumes: ``emptyDir``, ``secret``, ``configMap``, ``downwardAPI``,
  ``projected`` (the service-account token the ServiceAccount admission
  plugin adds, from the TokenRequest API and bound to the pod) and
  ``persistentVolumeClaim``: the folder of the claim's bound PersistentVolume
  (``hostPath``, as :mod:`support.provisioner` makes them), bound into the
  container itself, so what the container writes there outlives the pod; an
  unbound claim fails the mount, and the kubelet tries again.
- **Cluster DNS**: ``/etc/resolv.conf`` names :mod:`support.clusterdns`, with
  the pod's search path.
- **Its host name**: a UTS namespace named after the pod (``hostname`` and
  ``subdomain`` give the StatefulSet pod's), ``HOSTNAME`` set.
- **Its environment**: ``env`` and ``envFrom`` with ``fieldRef``,
  ``resourceFieldRef``, ``secretKeyRef`` and ``configMapKeyRef``, ``$(VAR)``
  expanded in env, command and args, and ``KUBERNETES_SERVICE_HOST``/``PORT``
  naming the ``kubernetes`` Service.

Not played: users and groups (processes run as the test's user), resource
limits, ``readOnlyRootFilesystem``, image layers.
"""

from __future__ import annotations

import base64
import math
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes.client
from kubernetes.client.exceptions import ApiException

from gatewaypool import quantity
from support.podnet import GATEWAY

#: Where the ServiceAccount admission plugin mounts the token (``kube-api-access-*``).
SERVICE_ACCOUNT_FOLDER = "/var/run/secrets/kubernetes.io/serviceaccount"
TOKEN_SECONDS = 3607


class MountFailedError(RuntimeError):
    """A volume's Secret or ConfigMap is missing (FailedMount): the kubelet tries again."""


@dataclass(frozen=True)
class PodContext:
    """The facts about a pod that its containers' set-up needs."""

    pod: dict[str, Any]
    address: str
    host_address: str
    folder: Path
    service_host: str
    service_port: int
    cluster_domain: str = "cluster.local"
    #: Host folders the container's programs live in (the virtualenv, the
    #: cluster folder): kept visible at their paths even under a volume
    #: mounted over a parent of theirs (an emptyDir on /tmp with the
    #: repository under /tmp).
    keep: tuple[Path, ...] = ()

    @property
    def namespace(self) -> str:
        return str(self.pod["metadata"]["namespace"])

    @property
    def name(self) -> str:
        return str(self.pod["metadata"]["name"])

    @property
    def spec(self) -> dict[str, Any]:
        return dict(self.pod.get("spec") or {})


# -- volumes ---------------------------------------------------------------------


def make_volumes(api: kubernetes.client.ApiClient, context: PodContext) -> dict[str, Path]:
    """Write every volume of the pod into its folder; their folders by volume name."""
    # Bodies are plain dicts, as the API takes them; the client's types are not needed.
    core: Any = kubernetes.client.CoreV1Api(api)
    folders: dict[str, Path] = {}
    for volume in context.spec.get("volumes") or []:
        folder = context.folder / "volumes" / volume["name"]
        if "persistentVolumeClaim" in volume:
            folders[volume["name"]] = _claimed(core, context, folder, volume)
            continue
        folder.mkdir(parents=True, exist_ok=True)
        if "emptyDir" in volume:
            pass
        elif "secret" in volume:
            source = volume["secret"]
            data = _secret(core, context.namespace, source["secretName"], source.get("optional"))
            _write_items(folder, data, source.get("items"), source.get("defaultMode"))
        elif "configMap" in volume:
            source = volume["configMap"]
            data = _config_map(core, context.namespace, source["name"], source.get("optional"))
            _write_items(folder, data, source.get("items"), source.get("defaultMode"))
        elif "downwardAPI" in volume:
            for item in volume["downwardAPI"].get("items") or []:
                _write(folder / item["path"], _field(context, item["fieldRef"]["fieldPath"]))
        elif "projected" in volume:
            for source in volume["projected"].get("sources") or []:
                _project(core, context, folder, source)
        else:
            kinds = sorted(set(volume) - {"name"})
            raise MountFailedError(f"volume {volume['name']}: {kinds} is not played here")
        folders[volume["name"]] = folder
    return folders


def _claimed(core: Any, context: PodContext, link: Path, volume: dict[str, Any]) -> Path:
    """The folder of the PersistentVolume bound to the volume's claim; `link` is made to point
    at it, so the pod's folder shows the volume as it shows the others."""
    name = volume["persistentVolumeClaim"]["claimName"]
    try:
        claim = core.read_namespaced_persistent_volume_claim(name, context.namespace)
    except ApiException as exc:
        raise MountFailedError(f"persistentvolumeclaim {name!r} not found") from exc
    if claim.status.phase != "Bound" or not claim.spec.volume_name:
        raise MountFailedError(f"persistentvolumeclaim {name!r} is not bound")
    source = core.read_persistent_volume(claim.spec.volume_name).spec.host_path
    if source is None:
        raise MountFailedError(f"volume {claim.spec.volume_name}: only hostPath is played here")
    folder = Path(source.path)
    folder.mkdir(parents=True, exist_ok=True)
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.is_symlink():
        link.symlink_to(folder, target_is_directory=True)
    return folder


def _project(core: Any, context: PodContext, folder: Path, source: dict[str, Any]) -> None:
    if "serviceAccountToken" in source:
        token = source["serviceAccountToken"]
        request = {
            "spec": {
                "audiences": [token["audience"]] if token.get("audience") else None,
                "expirationSeconds": token.get("expirationSeconds", TOKEN_SECONDS),
                "boundObjectRef": {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "name": context.name,
                    "uid": context.pod["metadata"]["uid"],
                },
            }
        }
        answer = core.create_namespaced_service_account_token(
            context.spec.get("serviceAccountName") or "default", context.namespace, request
        )
        _write(folder / token["path"], answer.status.token)
    elif "configMap" in source:
        ref = source["configMap"]
        data = _config_map(core, context.namespace, ref["name"], ref.get("optional"))
        _write_items(folder, data, ref.get("items"), None)
    elif "secret" in source:
        ref = source["secret"]
        data = _secret(core, context.namespace, ref["name"], ref.get("optional"))
        _write_items(folder, data, ref.get("items"), None)
    elif "downwardAPI" in source:
        for item in source["downwardAPI"].get("items") or []:
            _write(folder / item["path"], _field(context, item["fieldRef"]["fieldPath"]))


def _secret(core: Any, namespace: str, name: str, optional: bool | None) -> dict[str, bytes]:
    try:
        secret = core.read_namespaced_secret(name, namespace)
    except ApiException as exc:
        if exc.status == 404 and optional:
            return {}
        raise MountFailedError(f"secret {name!r} not found") from exc
    return {key: base64.b64decode(value) for key, value in (secret.data or {}).items()}


def _config_map(core: Any, namespace: str, name: str, optional: bool | None) -> dict[str, bytes]:
    try:
        found = core.read_namespaced_config_map(name, namespace)
    except ApiException as exc:
        if exc.status == 404 and optional:
            return {}
        raise MountFailedError(f"configmap {name!r} not found") from exc
    return {key: value.encode() for key, value in (found.data or {}).items()}


def _write_items(
    folder: Path, data: Mapping[str, bytes], items: list[dict[str, Any]] | None, mode: int | None
) -> None:
    chosen = [(i["key"], i["path"], i.get("mode", mode)) for i in items] if items else None
    if chosen is None:
        chosen = [(key, key, mode) for key in data]
    for key, path, file_mode in chosen:
        if key not in data:
            raise MountFailedError(f"key {key!r} is missing")
        _write(folder / path, data[key], file_mode)


def _write(path: Path, value: str | bytes, mode: int | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(value.encode() if isinstance(value, str) else value)
    path.chmod(mode if mode is not None else 0o644)


# -- environment ---------------------------------------------------------------------


def _field(context: PodContext, path: str) -> str:
    metadata = context.pod["metadata"]
    match = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
    if match:
        return str((metadata.get(match.group(1)) or {}).get(match.group(2), ""))
    values = {
        "metadata.name": metadata["name"],
        "metadata.namespace": metadata["namespace"],
        "metadata.uid": metadata["uid"],
        "metadata.labels": "\n".join(
            f'{k}="{v}"' for k, v in sorted((metadata.get("labels") or {}).items())
        ),
        "spec.nodeName": context.spec.get("nodeName", ""),
        "spec.serviceAccountName": context.spec.get("serviceAccountName", ""),
        "status.podIP": context.address,
        "status.podIPs": context.address,
        "status.hostIP": context.host_address,
    }
    if path not in values:
        raise MountFailedError(f"fieldRef {path!r} is not played here")
    return str(values[path])


def _resource(container: dict[str, Any], ref: dict[str, Any]) -> str:
    kind, _, resource = ref["resource"].partition(".")
    resources = container.get("resources") or {}
    text = (resources.get(kind) or {}).get(resource)
    if text is None and kind == "requests":
        text = (resources.get("limits") or {}).get(resource)
    if text is None:  # no limit: the node's allocatable, as the kubelet answers
        text = "2" if resource == "cpu" else "24Gi"
    value, _ = quantity.parse(text)
    divisor, _ = quantity.parse(ref.get("divisor") or "1")
    return str(math.ceil(value / divisor))


def environment(
    api: kubernetes.client.ApiClient,
    context: PodContext,
    container: dict[str, Any],
    image_env: Mapping[str, str],
) -> dict[str, str]:
    """The container's environment, as the runtime and the kubelet make it: the image's first."""
    core: Any = kubernetes.client.CoreV1Api(api)
    env: dict[str, str] = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        **image_env,
        "HOSTNAME": context.spec.get("hostname") or context.name,
        "KUBERNETES_SERVICE_HOST": context.service_host,
        "KUBERNETES_SERVICE_PORT": str(context.service_port),
        "KUBERNETES_SERVICE_PORT_HTTPS": str(context.service_port),
        "KUBERNETES_PORT": f"tcp://{context.service_host}:{context.service_port}",
    }
    for source in container.get("envFrom") or []:
        prefix = source.get("prefix", "")
        if "configMapRef" in source:
            ref = source["configMapRef"]
            data = _config_map(core, context.namespace, ref["name"], ref.get("optional"))
        else:
            ref = source["secretRef"]
            data = _secret(core, context.namespace, ref["name"], ref.get("optional"))
        env.update({prefix + key: value.decode() for key, value in data.items()})
    for item in container.get("env") or []:
        if "valueFrom" not in item:
            env[item["name"]] = expand(item.get("value", ""), env)
            continue
        source = item["valueFrom"]
        if "fieldRef" in source:
            env[item["name"]] = _field(context, source["fieldRef"]["fieldPath"])
        elif "resourceFieldRef" in source:
            env[item["name"]] = _resource(container, source["resourceFieldRef"])
        elif "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            data = _secret(core, context.namespace, ref["name"], ref.get("optional"))
            if ref["key"] in data:
                env[item["name"]] = data[ref["key"]].decode()
            elif not ref.get("optional"):
                raise MountFailedError(f"secret {ref['name']!r} has no key {ref['key']!r}")
        elif "configMapKeyRef" in source:
            ref = source["configMapKeyRef"]
            data = _config_map(core, context.namespace, ref["name"], ref.get("optional"))
            if ref["key"] in data:
                env[item["name"]] = data[ref["key"]].decode()
            elif not ref.get("optional"):
                raise MountFailedError(f"configmap {ref['name']!r} has no key {ref['key']!r}")
    return env


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion: known names replaced, ``$$`` escapes, others kept."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env.get(name, match.group(0))

    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)", replace, text)


# -- the launch script -------------------------------------------------------------------


def resolv_conf(context: PodContext) -> str:
    domain = context.cluster_domain
    search = f"{context.namespace}.svc.{domain} svc.{domain} {domain}"
    return f"nameserver {GATEWAY}\nsearch {search}\noptions ndots:5 timeout:1 attempts:3\n"


def launch_script(
    context: PodContext,
    container: dict[str, Any],
    volumes: Mapping[str, Path],
    argv: list[str],
    env: Mapping[str, str],
    workdir: str = "/",
) -> str:
    """A shell script, run in the pod's namespaces, that mounts and then execs the container.

    Kept in the pod's folder, so a failing start can be read and rerun by hand.
    """
    name = container["name"]
    work = context.folder / "containers" / name
    etc = work / "etc"
    etc.mkdir(parents=True, exist_ok=True)
    (etc / "resolv.conf").write_text(resolv_conf(context))
    hostname = context.spec.get("hostname") or context.name
    subdomain = context.spec.get("subdomain")
    fqdn = (
        f"{hostname}.{subdomain}.{context.namespace}.svc.{context.cluster_domain}"
        if subdomain
        else hostname
    )
    (etc / "hosts").write_text(
        f"127.0.0.1\tlocalhost\n::1\tlocalhost\n{context.address}\t{fqdn} {hostname}\n"
    )
    q = shlex.quote
    lines = [
        "#!/bin/sh",
        "set -e",
        "mount --make-rprivate /",
        f"hostname {q(hostname)}",
    ]
    # Held open before any mount: /proc/self/fd/N still reaches a folder
    # that a mount over its parent hides from its path.
    kept = [path for path in context.keep if path.is_dir()][:6]
    lines += [f"exec {3 + n}<{q(str(path))}" for n, path in enumerate(kept)]

    def uncover(target: str) -> None:
        for n, path in enumerate(kept):
            if str(path) == target or str(path).startswith(target.rstrip("/") + "/"):
                # --no-canonicalize: mount(8) would resolve the fd's link to
                # the path, which is the very one now hidden.
                lines.append(f"mkdir -p {q(str(path))}")
                lines.append(f"mount --no-canonicalize --bind /proc/self/fd/{3 + n} {q(str(path))}")

    mounts = sorted(container.get("volumeMounts") or [], key=lambda m: m["mountPath"].count("/"))
    overlays: list[str] = []
    for number, mount in enumerate(mounts):
        target = mount["mountPath"].rstrip("/") or "/"
        source = volumes[mount["name"]] / mount.get("subPath", "")
        if not any(target == root or target.startswith(root + "/") for root in overlays):
            existing = _nearest_existing(Path(target))
            if existing != Path(target):
                upper = work / "overlay" / str(number)
                (upper / "upper").mkdir(parents=True, exist_ok=True)
                (upper / "work").mkdir(parents=True, exist_ok=True)
                lines.append(
                    "mount -t overlay overlay -o "
                    + q(f"lowerdir={existing},upperdir={upper / 'upper'},workdir={upper / 'work'}")
                    + f" {q(str(existing))}"
                )
                uncover(str(existing))
                overlays.append(str(existing))
        if source.is_dir():
            lines.append(f"mkdir -p {q(target)}")
        else:
            lines.append(f"mkdir -p {q(str(Path(target).parent))} && touch {q(target)}")
        lines.append(f"mount --bind {q(str(source))} {q(target)}")
        if mount.get("readOnly"):
            lines.append(f"mount -o remount,bind,ro {q(target)}")
        uncover(target)
    # Last: an overlay of /etc made for a mount above would hide binds made before it.
    lines.append(f"mount --bind {q(str(etc / 'resolv.conf'))} /etc/resolv.conf")
    lines.append(f"mount --bind {q(str(etc / 'hosts'))} /etc/hosts")
    working = container.get("workingDir") or workdir
    lines.append(f"cd {q(working)}")
    lines += [f"exec {3 + n}<&-" for n in range(len(kept))]
    exported = " ".join(f"{q(k)}={q(v)}" for k, v in sorted(env.items()))
    lines.append(f"exec env -i {exported} {' '.join(q(a) for a in argv)}")
    return "\n".join(lines) + "\n"


def _nearest_existing(path: Path) -> Path:
    while not path.exists():
        path = path.parent
    return path
