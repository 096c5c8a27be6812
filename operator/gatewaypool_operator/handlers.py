"""kopf handlers: translate between Kubernetes events and the reconcile pass.

Every handler runs the same level-based pass (:func:`gatewaypool_operator.reconcile.reconcile`):
on creation, on each spec change (``kubectl scale`` and an HPA change
``spec.replicas`` through the scale subresource) and when the operator
resumes; a periodic resync (:mod:`gatewaypool_operator.resync`) repairs
drift and re-creates deleted children.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import kopf

from gatewaypool.contract import API_GROUP as GROUP
from gatewaypool.contract import API_VERSION as VERSION
from gatewaypool.contract import PLURAL
from gatewaypool_operator.apiclient import api_client
from gatewaypool_operator.kubeapply import Cluster
from gatewaypool_operator.metrics import OperatorMetrics
from gatewaypool_operator.options import Options
from gatewaypool_operator.peering import Peering
from gatewaypool_operator.resync import Schedule, resync_forever
from gatewaypool_operator.runner import PoolLocks, run_pass


def _options(memo: kopf.Memo) -> Options:
    """The command line's settings; the defaults when kopf runs the module by itself."""
    options = memo.get("options")
    return options if isinstance(options, Options) else Options()


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    """Settings and the shared API client, once per operator process.

    ``memo.options`` is the command line's `Options`, given to ``kopf.run``.
    """
    options = _options(memo)
    settings.persistence.finalizer = "gatewaypool.io/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    settings.posting.level = logging.INFO
    settings.watching.server_timeout = 300
    settings.execution.max_workers = 8
    memo["cluster"] = Cluster(api_client())
    # One pass of a pool at a time, handlers and resync alike (see runner).
    memo["locks"] = PoolLocks()
    memo["router_image"] = options.router_image
    memo["cluster_domain"] = options.cluster_domain
    memo["schedule"] = Schedule(options.resync_seconds)
    metrics = OperatorMetrics()
    memo["metrics"] = metrics
    if options.metrics:
        from prometheus_client import start_http_server

        address, _colon, port = options.metrics.rpartition(":")
        start_http_server(int(port), addr=address or "0.0.0.0", registry=metrics.registry)


@kopf.on.startup()
async def start_resync(memo: kopf.Memo, **_: Any) -> None:
    """Start the periodic drift check (see :mod:`gatewaypool_operator.resync`)."""
    options = _options(memo)
    peering = None
    if options.peering:
        peering = Peering(
            name=options.peering, identity=options.identity, priority=options.priority
        )
    memo["resync"] = asyncio.create_task(
        resync_forever(
            memo["cluster"],
            namespaces=options.namespaces,
            interval=options.resync_seconds,
            router_image=memo["router_image"],
            cluster_domain=memo["cluster_domain"],
            locks=memo["locks"],
            schedule=memo["schedule"],
            peering=peering,
            metrics=memo["metrics"],
        )
    )


@kopf.on.cleanup()
async def stop_resync(memo: kopf.Memo, **_: Any) -> None:
    task = memo.get("resync")
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
def on_change(body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
    """A pool appeared, changed its spec, or the operator (re)started.

    The pass reads the pool afresh under its lock and writes status and
    Events itself (see :mod:`gatewaypool_operator.runner`): ``body`` only
    names the pool, its snapshot may already be older than the newest spec.
    """
    key = (str(body.metadata.namespace), str(body.metadata.name))
    outcome = run_pass(
        memo["cluster"],
        memo["locks"],
        namespace=key[0],
        name=key[1],
        router_image=memo["router_image"],
        metrics=memo["metrics"],
        cluster_domain=memo["cluster_domain"],
    )
    # A scale change is carried out over many passes: the resync takes it on.
    memo["schedule"].after(key, outcome)
    if outcome is not None:
        logger.debug("pass done: %d events", len(outcome.events))
