"""The operator's Kubernetes API client: every request bounded in time.

The ``kubernetes`` client sets no timeout of its own, so a request whose
connection hangs (an API server restarting behind a load balancer, a NAT
entry dropped without a RST) waits for the kernel's keep-alive, hours later.
The operator makes these requests inside a pool's pass, which holds the
pool's lock (see :mod:`gatewaypool_operator.runner`), so one hung request
would stop that pool's reconciliation. Here every request without a timeout
of its own gets `REQUEST_TIMEOUT`, and a read that times out is retried once
(urllib3's default would try it four times): a request that still gets no
answer fails like any other, the pass reports it, and the next pass tries
again.
"""

from __future__ import annotations

import os
from typing import Any, Final

#: (connect, read) seconds. A read covers one request: the operator opens no
#: watches through this client (kopf keeps its own, with their own timeouts).
REQUEST_TIMEOUT: Final = (10.0, 60.0)


class _BoundedRequests:
    """The client's REST client, with a default timeout on every request."""

    def __init__(self, inner: Any, timeout: tuple[float, float]) -> None:
        self._inner = inner
        self._timeout = timeout

    def request(
        self,
        method: str,
        url: str,
        headers: Any = None,
        body: Any = None,
        post_params: Any = None,
        _request_timeout: Any = None,
    ) -> Any:
        return self._inner.request(
            method,
            url,
            headers=headers,
            body=body,
            post_params=post_params,
            _request_timeout=_request_timeout or self._timeout,
        )

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def api_client(*, request_timeout: tuple[float, float] = REQUEST_TIMEOUT) -> Any:
    """An ApiClient from the in-cluster service account, else from $KUBECONFIG."""
    from kubernetes import client, config
    from urllib3.util.retry import Retry

    configuration = client.Configuration()
    # The kubernetes client is untyped: its loaders are called through Any.
    load_incluster: Any = config.load_incluster_config
    load_kube: Any = config.load_kube_config
    try:
        load_incluster(client_configuration=configuration)
    except config.ConfigException:
        load_kube(config_file=os.environ.get("KUBECONFIG"), client_configuration=configuration)
    configuration.retries = Retry(total=3, read=1)
    made: Any = client.ApiClient(configuration)
    made.rest_client = _BoundedRequests(made.rest_client, request_timeout)
    return made
