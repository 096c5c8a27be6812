"""The thread-hosted server and its test-facing API."""

from __future__ import annotations

import asyncio
import copy
import logging
import shutil
import tempfile
import threading
from collections.abc import Callable, Coroutine, Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self, TypeVar

import kmock
import kubernetes.client
import kubernetes.config
import yaml

from .kinds import RESOURCES, ResourceKind
from .objects import JSONObject, Write, without
from .server import Emulator

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

#: How long the test thread waits for the server's loop to answer one call.
_CALL_TIMEOUT_S: Final = 10.0
#: How long starting and stopping the server may take before it is an error.
_START_STOP_TIMEOUT_S: Final = 10.0


class KubeEmulatorError(RuntimeError):
    """The emulator could not start, stop, or answer a call from the test thread."""


def _kubeconfig(server_url: str) -> JSONObject:
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "kubeemu", "cluster": {"server": server_url}}],
        "users": [{"name": "kubeemu", "user": {}}],
        "contexts": [
            {
                "name": "kubeemu",
                "context": {"cluster": "kubeemu", "user": "kubeemu", "namespace": "default"},
            }
        ],
        "current-context": "kubeemu",
    }


# kubernetes.config is untyped: one typed name for the one function used.
_load_kube_config: Callable[..., None] = kubernetes.config.load_kube_config


class KubeEmulator:
    """A Kubernetes API server on 127.0.0.1, served from a background thread.

    The server runs its own event loop in a daemon thread, so it keeps
    answering while the test thread blocks in a synchronous client call, a
    watch, or a ``KopfRunner``; subprocesses reach it through
    :attr:`kubeconfig_path`. A thread and not a process: the test can look into
    the store directly (:meth:`objects`) and play the controllers
    (:meth:`write_status`) with no second API.

    Parameters
    ----------
    port
        TCP port on 127.0.0.1; ``None`` picks a free one.
    resources
        What to serve; by default :data:`RESOURCES`.
    keep_requests
        Keep kmock's log of every request (:attr:`emulator` ``.requests``) for
        assertions on what clients sent. Off by default: kmock scans the whole
        log for every request, so each request costs more the longer it runs
        (70 ms per request after 1000) -- fine for a short test, not for kopf
        running for minutes.
    history_size
        How many watch events are kept: a watch that resumes from a
        resourceVersion older than these gets 410 Gone, as from a real server
        whose watch cache moved on (:meth:`compact_history` forgets them all).
    bookmark_interval
        Seconds between the BOOKMARK events of a watch that allows them (the
        API server's is a minute); one also comes 2 s before a watch's
        ``timeoutSeconds`` ends it, as from a real server.

    Notes
    -----
    Read the module's docstring for what the emulator does not do.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        resources: Iterable[ResourceKind] = RESOURCES,
        keep_requests: bool = False,
        history_size: int = 1000,
        orphan_delay: float = 0.5,
        bookmark_interval: float = 60.0,
    ) -> None:
        self._requested_port = port
        self._emulator = Emulator(
            keep_requests=keep_requests,
            history_size=history_size,
            orphan_delay=orphan_delay,
            bookmark_interval=bookmark_interval,
        )
        for kind in resources:
            self._emulator.declare(kind)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self._port: int | None = None
        self._workdir: Path | None = None

    # -- lifecycle ----------------------------------------------------------

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Start serving; return when the port accepts connections.

        Raises
        ------
        KubeEmulatorError
            If the server did not come up within 10 s, or failed to.
        """
        if self._ready.is_set() or self._thread is not None:
            # Its store, watches and kmock's handler are one server's: no restarts.
            raise KubeEmulatorError("an emulator starts once; make a new one")
        self._workdir = Path(tempfile.mkdtemp(prefix="kubeemu-"))
        self._thread = threading.Thread(target=self._run, name="kubeemu", daemon=True)
        self._thread.start()
        started = self._ready.wait(_START_STOP_TIMEOUT_S)
        if started and self._startup_error is None:
            self._write_kubeconfig()
            return
        error = self._startup_error
        self.stop()  # __exit__ is not called when __enter__ raises
        if not started:
            raise KubeEmulatorError("the emulator did not start in time")
        raise KubeEmulatorError(f"the emulator failed to start: {error}") from error

    def stop(self) -> None:
        """End open watches, stop the server, and remove the kubeconfig.

        Raises
        ------
        KubeEmulatorError
            If the server thread did not end within 10 s.
        """
        thread, loop, stop = self._thread, self._loop, self._stop
        if thread is None:
            return
        if loop is not None and stop is not None and thread.is_alive():
            loop.call_soon_threadsafe(self._emulator.close_watches)
            loop.call_soon_threadsafe(stop.set)
        thread.join(_START_STOP_TIMEOUT_S)
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
        self._thread = None
        if thread.is_alive():
            raise KubeEmulatorError("the emulator did not stop in time")

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # reported to start() or logged: a thread has no caller
            if not self._ready.is_set():
                self._startup_error = exc
                self._ready.set()
            else:
                logger.exception("the emulator's server failed")

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        server = kmock.Server(self._emulator, port=self._requested_port)
        async with self._emulator, server:
            self._port = server.port
            self._ready.set()
            await self._stop.wait()

    def _call(self, make: Callable[[], Coroutine[Any, Any, _T]]) -> _T:
        """Run a coroutine on the server's loop and wait for its result."""
        if self._loop is None or self._thread is None:
            raise KubeEmulatorError("the emulator is not started")
        future = asyncio.run_coroutine_threadsafe(make(), self._loop)
        return future.result(_CALL_TIMEOUT_S)

    # -- connection ---------------------------------------------------------

    @property
    def port(self) -> int:
        """The TCP port the server listens on (127.0.0.1)."""
        if self._port is None:
            raise KubeEmulatorError("the emulator is not started")
        return self._port

    @property
    def url(self) -> str:
        """The API server's URL, ``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def kubeconfig_path(self) -> Path:
        """A kubeconfig for the server (no TLS, no credentials), removed on stop."""
        if self._workdir is None or self._thread is None:
            raise KubeEmulatorError("the emulator is not started")
        return self._workdir / "kubeconfig.yaml"

    def _write_kubeconfig(self) -> None:
        self.kubeconfig_path.write_text(yaml.safe_dump(_kubeconfig(self.url)), encoding="utf-8")

    def api_client(self) -> kubernetes.client.ApiClient:
        """A ``kubernetes`` client for this server, whatever ``$KUBECONFIG`` says.

        It loads :attr:`kubeconfig_path` into a fresh ``Configuration``: the
        client's global default configuration, and the default kubeconfig path
        it read from ``$KUBECONFIG`` at import time, are left alone.

        Returns
        -------
        kubernetes.client.ApiClient
            The caller closes it (``with kube.api_client() as api: ...``).
        """
        configuration = kubernetes.client.Configuration()
        _load_kube_config(
            config_file=str(self.kubeconfig_path),
            client_configuration=configuration,
            persist_config=False,
        )
        return kubernetes.client.ApiClient(configuration)

    def requests(self) -> list[kmock.Request]:
        """Every request served so far, in order (with ``keep_requests``; else none).

        Read it when clients are quiet: the log grows on the server's thread.
        """
        return list(self._emulator.request_log)

    @property
    def emulator(self) -> kmock.KubernetesEmulator:
        """The kmock emulator, for its reactions.

        A reaction answers matching requests its own way, e.g. to inject a
        failure: ``kube.emulator["patch statefulsets"] << 500`` (the write is
        still done, as kmock does). The emulator lives on the server's thread:
        add reactions before clients start, and read ``.requests`` only when
        they are quiet.
        """
        return self._emulator

    # -- store access for tests ---------------------------------------------

    def resolve(self, kind: str) -> ResourceKind:
        """Find a served resource by kind, plural, short name, or kmock address.

        Parameters
        ----------
        kind
            ``"StatefulSet"``, ``"statefulsets"``, ``"sts"``,
            ``"apps/v1/statefulsets"`` or ``"statefulsets.v1.apps"``.

        Raises
        ------
        KeyError
            If no served resource or more than one matches
            (``"Event"`` is both ``v1`` and ``events.k8s.io/v1``).
        """
        kinds = self._emulator.kinds
        if "/" in kind or "." in kind:
            wanted = kmock.resource(kind)
            matches = [k for k in kinds if wanted.check(k.resource)]
        else:
            matches = [
                k
                for k in kinds
                if kind in {k.kind, k.plural, k.kind.lower()} or kind in k.shortnames
            ]
        if len(matches) != 1:
            found = ", ".join(sorted(f"{k.api_version}/{k.plural}" for k in matches)) or "none"
            raise KeyError(f"{kind!r} names {len(matches)} served resources: {found}")
        return matches[0]

    def objects(self, kind: str, namespace: str | None = None) -> list[JSONObject]:
        """The stored objects of a resource, as the server holds them now.

        Parameters
        ----------
        kind
            As :meth:`resolve` takes it.
        namespace
            Only this namespace; ``None`` for all (and for cluster-scoped kinds).

        Returns
        -------
        list of dict
            Copies, in creation order; deleted objects are left out.
        """
        resolved = self.resolve(kind)

        async def read() -> list[JSONObject]:
            async with self._emulator._lock:
                return [
                    copy.deepcopy(obj.raw)
                    for (resource, ns, _), obj in self._emulator.objects.items()
                    if resource == resolved.resource
                    and not obj.deleted
                    and (namespace is None or ns == namespace)
                ]

        return self._call(read)

    def get(self, kind: str, name: str, namespace: str | None = None) -> JSONObject | None:
        """One stored object (a copy), or ``None`` if there is none."""
        for obj in self.objects(kind, namespace):
            if obj["metadata"]["name"] == name:
                return obj
        return None

    def _run_write(
        self, write: Callable[[Emulator], Write], resource: kmock.resource
    ) -> JSONObject:
        async def apply() -> JSONObject:
            async with self._emulator._lock:
                done = write(self._emulator)
                await self._emulator.publish(done.events)
            return copy.deepcopy(done.answer)

        try:
            return self._call(apply)
        except kmock.KubernetesError as exc:
            raise KubeEmulatorError(f"{exc.status} {exc.reason}: {exc.message}") from exc

    def create(
        self, kind: str, body: Mapping[str, Any], namespace: str | None = None
    ) -> JSONObject:
        """Create an object directly in the store, as a POST would (watchers see it).

        Returns
        -------
        dict
            The stored object, with uid, resourceVersion and so on.

        Raises
        ------
        KubeEmulatorError
            With the status the API would answer (409 if it exists).
        """
        resolved = self.resolve(kind)
        return self._run_write(
            lambda emu: emu.write_create(resolved, namespace, body), resolved.resource
        )

    def delete(self, kind: str, name: str, namespace: str | None = None) -> JSONObject:
        """Delete an object directly in the store, as a DELETE would (dependents too).

        For test stand-ins of controllers (a kubelet removing a pod): their
        writes stay out of the request log, which then shows what the
        operator and the routers did.

        Raises
        ------
        KubeEmulatorError
            404 if it does not exist.
        """
        resolved = self.resolve(kind)
        return self._run_write(
            lambda emu: emu.write_delete(resolved, namespace, name), resolved.resource
        )

    def write_metadata(
        self, kind: str, name: str, namespace: str | None = None, **metadata: Any
    ) -> JSONObject:
        """Merge ``metadata`` fields into an object, as a controller would (in process).

        For example a StatefulSet controller adopting an orphaned pod
        (``ownerReferences``). A merge patch: lists given replace the old.
        """
        resolved = self.resolve(kind)
        return self._run_write(
            lambda emu: emu.write_update(
                resolved,
                namespace,
                name,
                patch={"metadata": dict(metadata)},
                manager="kube-controller-manager",
            ),
            resolved.resource,
        )

    def compact_history(self) -> int:
        """Forget every watch event so far, as an etcd compaction does.

        A watch resuming from any resourceVersion up to now gets 410 Gone.

        Returns
        -------
        int
            The resourceVersion compacted to.
        """

        async def compact() -> int:
            async with self._emulator._lock:
                revision = self._emulator.revision
                self._emulator.history.compact(revision)
                return revision

        return self._call(compact)

    def create_namespace(self, name: str) -> JSONObject:
        """Create a Namespace (the emulator does not require them; kopf and kubectl may)."""
        return self.create("v1/namespaces", {"metadata": {"name": name}})

    def apply_crd(self, source: str | Path | Mapping[str, Any]) -> JSONObject:
        """Create or replace a CRD from a YAML file (or its parsed object), and serve it.

        The CRD is Established at once; its resource is (re)declared from it,
        so a CRD's scale paths and scope win over :data:`RESOURCES`.

        Returns
        -------
        dict
            The stored CRD.
        """
        if isinstance(source, Mapping):
            crd: JSONObject = dict(source)
        else:
            loaded = yaml.safe_load(Path(source).read_text(encoding="utf-8"))
            if not isinstance(loaded, dict):
                raise KubeEmulatorError(f"{source}: not one YAML object")
            crd = loaded
        crds = self.resolve("apiextensions.k8s.io/v1/customresourcedefinitions")

        def apply(emu: Emulator) -> Write:
            name = crd["metadata"]["name"]
            key = (crds.resource, None, name)
            if key in emu.objects and not emu.objects[key].deleted:
                return emu.write_update(crds, None, name, replacement=without(crd, "status"))
            return emu.write_create(crds, None, crd)

        return self._run_write(apply, crds.resource)

    def write_status(
        self,
        group: str,
        version: str,
        plural: str,
        namespace: str | None,
        name: str,
        *,
        status: Mapping[str, Any],
    ) -> JSONObject:
        """Merge ``status`` into an object's status, as a controller would.

        For example, set a StatefulSet's ``readyReplicas``, which nothing else
        in the emulator ever does. It is a ``/status`` merge patch: a new
        resourceVersion and a MODIFIED event, no new generation.

        Returns
        -------
        dict
            The object after the write.

        Raises
        ------
        KubeEmulatorError
            404 if the object does not exist.
        """
        resolved = self.resolve(f"{group}/{version}/{plural}" if group else f"{version}/{plural}")
        patch = {"status": dict(status)}
        subresource = "status" if "status" in resolved.subresources else None
        return self._run_write(
            lambda emu: emu.write_update(
                resolved,
                namespace,
                name,
                subresource=subresource,
                patch=patch,
                manager="kube-controller-manager",
            ),
            resolved.resource,
        )
