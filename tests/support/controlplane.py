"""The real Kubernetes control plane, as a process the tests start once per session.

``tests/controlplane`` is a small Go module that builds etcd, kube-apiserver,
kube-controller-manager and kube-scheduler from Kubernetes' own modules into
one binary; ``./dev.sh`` builds it once into a cache folder keyed by its
``go.sum`` and names it in ``$GATEWAYPOOL_CONTROLPLANE``. ``controlplane up``
starts everything on loopback ports and writes ``ready.json`` once the API
server answers ``/readyz``; this module starts it, waits for that file, and
hands out clients.

Two faults a real server does not show on demand are asked of the binary's
control port instead of emulated: restarting the API server (its watch cache
starts afresh, so old resourceVersions get 410 Gone) and compacting etcd.
"""

from __future__ import annotations

import json
import os
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes.client
import kubernetes.config

from gatewaypool_local.peers.process import ManagedProcess

#: The environment variable naming the built binary (set by ./dev.sh).
BINARY_VARIABLE = "GATEWAYPOOL_CONTROLPLANE"


class ControlPlaneUnavailableError(RuntimeError):
    """The binary was not built or the tests do not run in the sandbox."""


def binary() -> Path:
    """The control-plane binary ``./dev.sh`` built, or an error saying how to get it."""
    path = os.environ.get(BINARY_VARIABLE)
    if not path or not Path(path).is_file():
        raise ControlPlaneUnavailableError(
            f"${BINARY_VARIABLE} names no built control plane ({path!r}): run the tests "
            "through ./dev.sh test (or ./dev.sh pytest ARGS), which builds it"
        )
    return Path(path)


@dataclass(frozen=True)
class Endpoints:
    """What ``ready.json`` says: where the API server is and how to log in as admin."""

    server: str
    kubeconfig: Path
    ca: Path
    token: str
    control: str


class ControlPlane(ManagedProcess):
    """``controlplane up`` in a subprocess; its logs stay in `folder`."""

    kind = "controlplane"

    def __init__(self, folder: Path, *, extra_args: list[str] | None = None) -> None:
        # The first start writes certificates: it may take minutes.
        super().__init__(folder, start_timeout=240.0, stop_timeout=60.0)
        self._extra = list(extra_args or [])
        self._endpoints: Endpoints | None = None

    def __repr__(self) -> str:
        return f"ControlPlane({self.folder})"

    @property
    def folder(self) -> Path:
        return self.work_dir

    @property
    def endpoints(self) -> Endpoints:
        if self._endpoints is None:
            raise RuntimeError("the control plane is not running")
        return self._endpoints

    @property
    def _ready_file(self) -> Path:
        return self.folder / "ready.json"

    def _command(self) -> list[str]:
        return [str(binary()), "up", "--dir", str(self.folder), *self._extra]

    def _prepare(self) -> None:
        self._ready_file.unlink(missing_ok=True)

    def _is_ready(self) -> bool:
        return self._ready_file.exists()

    def start(self, *, timeout: float | None = None) -> None:
        """Start it and wait until the API server is ready (``ready.json`` is written)."""
        super().start(timeout=timeout)
        data = json.loads(self._ready_file.read_text())
        self._endpoints = Endpoints(
            server=data["server"],
            kubeconfig=Path(data["kubeconfig"]),
            ca=Path(data["ca"]),
            token=data["token"],
            control=data["control"],
        )

    def stop(self, *, timeout: float | None = None) -> int | None:
        self._endpoints = None
        return super().stop(timeout=timeout)

    # -- faults on demand ------------------------------------------------------

    def _control(self, path: str, *, timeout: float = 240.0) -> str:
        request = urllib.request.Request(f"{self.endpoints.control}{path}", method="POST")
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return str(response.read().decode())

    def restart_apiserver(self) -> None:
        """Stop kube-apiserver and start it again; returns once it is ready."""
        self._control("/restart/kube-apiserver")

    def compact(self) -> int:
        """Compact etcd up to its current revision; returns that revision."""
        return int(self._control("/compact").split()[-1])

    # -- clients -----------------------------------------------------------------

    def api_client(self) -> kubernetes.client.ApiClient:
        """An admin ApiClient (system:masters)."""
        configuration = kubernetes.client.Configuration()
        loader: Any = kubernetes.config.load_kube_config
        loader(config_file=str(self.endpoints.kubeconfig), client_configuration=configuration)
        return kubernetes.client.ApiClient(configuration)
