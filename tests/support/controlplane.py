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
import signal
import subprocess
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import kubernetes.client
import kubernetes.config

from gatewaypool_local.peers.process import wait_until

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


class ControlPlane:
    """``controlplane up`` in a subprocess; its logs stay in `folder`."""

    def __init__(self, folder: Path, *, extra_args: list[str] | None = None) -> None:
        self.folder = folder
        self._extra = list(extra_args or [])
        self._proc: subprocess.Popen[bytes] | None = None
        self._endpoints: Endpoints | None = None

    @property
    def endpoints(self) -> Endpoints:
        if self._endpoints is None:
            raise RuntimeError("the control plane is not running")
        return self._endpoints

    def start(self, *, timeout: float = 240.0) -> None:
        """Start it and wait until the API server is ready (the first start writes certificates)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        ready = self.folder / "ready.json"
        ready.unlink(missing_ok=True)
        with (self.folder / "controlplane.log").open("ab") as log:
            self._proc = subprocess.Popen(
                [str(binary()), "up", "--dir", str(self.folder), *self._extra],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        wait_until(
            lambda: self._alive() and ready.exists(),
            timeout=timeout,
            what=f"control plane ready (logs in {self.folder})",
            interval=0.1,
        )
        data = json.loads(ready.read_text())
        self._endpoints = Endpoints(
            server=data["server"],
            kubeconfig=Path(data["kubeconfig"]),
            ca=Path(data["ca"]),
            token=data["token"],
            control=data["control"],
        )

    def _alive(self) -> bool:
        if self._proc is not None and self._proc.poll() is not None:
            raise RuntimeError(f"controlplane exited:\n{self.log_tail()}")
        return True

    def stop(self, *, timeout: float = 60.0) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._endpoints = None

    def log_tail(self, component: str = "controlplane", lines: int = 40) -> str:
        path = self.folder / f"{component}.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

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

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
