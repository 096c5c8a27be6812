"""The operator's API client gives up on an API server that never answers."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import kubernetes.client
import pytest
import yaml
from urllib3.exceptions import MaxRetryError, ReadTimeoutError

from gatewaypool_operator.apiclient import api_client


@contextmanager
def silent_server() -> Iterator[tuple[int, list[socket.socket]]]:
    """A hung API server: it accepts connections and never answers; yields its port and them."""
    accepted: list[socket.socket] = []
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(0.1)
        stop = threading.Event()

        def accept() -> None:
            while not stop.is_set():
                try:
                    accepted.append(listener.accept()[0])
                except TimeoutError:
                    continue

        thread = threading.Thread(target=accept, daemon=True)
        thread.start()
        try:
            yield listener.getsockname()[1], accepted
        finally:
            stop.set()
            thread.join()
            for connection in accepted:
                connection.close()


def _use_server(folder: Path, port: int, monkeypatch: pytest.MonkeyPatch) -> None:
    path = folder / "kubeconfig"
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    monkeypatch.setenv("KUBECONFIG", str(path))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)


def test_a_hung_request_times_out_and_is_tried_once_more(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with silent_server() as (port, accepted):
        _use_server(tmp_path, port, monkeypatch)
        core = kubernetes.client.CoreV1Api(api_client(request_timeout=(1.0, 0.5)))
        with pytest.raises(MaxRetryError) as raised:
            core.read_namespace("default")
        assert isinstance(raised.value.reason, ReadTimeoutError)
        # One retry on a fresh connection, not urllib3's default three.
        assert len(accepted) == 2


def test_a_timeout_given_by_the_caller_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with silent_server() as (port, _accepted):
        _use_server(tmp_path, port, monkeypatch)
        # A default the test would not outlive: the call's own timeout must apply.
        core = kubernetes.client.CoreV1Api(api_client(request_timeout=(3600.0, 3600.0)))
        with pytest.raises(MaxRetryError) as raised:
            core.read_namespace("default", _request_timeout=(1.0, 0.5))
        assert isinstance(raised.value.reason, ReadTimeoutError)
