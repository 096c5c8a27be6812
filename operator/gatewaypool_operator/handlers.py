"""kopf handlers: translate between Kubernetes events and the reconcile pass.

Every handler runs the same level-based pass (:func:`reconcile.reconcile`):
on creation, on each spec change (``kubectl scale`` and an HPA change
``spec.replicas`` through the scale subresource) and when the operator
resumes; a periodic resync (:mod:`gatewaypool_operator.resync`) repairs
drift and re-creates deleted children.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from datetime import UTC, datetime
from typing import Any

import kopf

from gatewaypool_operator.kubeapply import Cluster
from gatewaypool_operator.peering import Peering
from gatewaypool_operator.reconcile import ACCEPTED_SPEC_ANNOTATION, reconcile
from gatewaypool_operator.resync import resync_forever
from gatewaypool_operator.status import merge_patch

GROUP = "gatewaypool.io"
VERSION = "v1alpha1"
PLURAL = "gatewaypools"

#: Seconds between drift checks of each pool (set by ``gatewaypool operator --resync``).
RESYNC_SECONDS = float(os.environ.get("GATEWAYPOOL_RESYNC_SECONDS", "30"))
#: The watched namespaces, comma-separated; empty for all (``--namespace``).
NAMESPACES = tuple(ns for ns in os.environ.get("GATEWAYPOOL_NAMESPACES", "").split(",") if ns)
#: kopf peering (``--peering``, ``--priority``) and this replica's identity in it.
PEERING_NAME = os.environ.get("GATEWAYPOOL_PEERING", "")
PRIORITY = int(os.environ.get("GATEWAYPOOL_PRIORITY", "0"))
IDENTITY = os.environ.get("GATEWAYPOOL_IDENTITY", "")


def _api_client() -> Any:
    """An ApiClient from the in-cluster service account, else from $KUBECONFIG."""
    from kubernetes import client, config

    configuration = client.Configuration()
    # The kubernetes client is untyped: its loaders are called through Any.
    load_incluster: Any = config.load_incluster_config
    load_kube: Any = config.load_kube_config
    try:
        load_incluster(client_configuration=configuration)
    except config.ConfigException:
        load_kube(config_file=os.environ.get("KUBECONFIG"), client_configuration=configuration)
    return client.ApiClient(configuration)


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    """Settings and the shared API client, once per operator process."""
    settings.persistence.finalizer = "gatewaypool.io/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="gatewaypool.io")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="gatewaypool.io", key="last-handled-configuration"
    )
    settings.posting.level = logging.INFO
    settings.watching.server_timeout = 300
    settings.execution.max_workers = 8
    memo["cluster"] = Cluster(_api_client())
    memo["router_image"] = os.environ.get("GATEWAYPOOL_IMAGE", "")


@kopf.on.startup()
async def start_resync(memo: kopf.Memo, **_: Any) -> None:
    """Start the periodic drift check (see :mod:`gatewaypool_operator.resync`)."""
    peering = None
    if PEERING_NAME:
        peering = Peering(name=PEERING_NAME, identity=IDENTITY, priority=PRIORITY)
    memo["resync"] = asyncio.create_task(
        resync_forever(
            memo["cluster"],
            namespaces=NAMESPACES,
            interval=RESYNC_SECONDS,
            router_image=memo["router_image"],
            peering=peering,
        )
    )


@kopf.on.cleanup()
async def stop_resync(memo: kopf.Memo, **_: Any) -> None:
    task = memo.get("resync")
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _pass(body: kopf.Body, memo: kopf.Memo, patch: kopf.Patch, logger: Any) -> None:
    outcome = reconcile(
        memo["cluster"],
        body=body,
        default_router_image=memo["router_image"],
        now=datetime.now(UTC),
    )
    # A merge patch that also deletes keys the new status no longer has
    # (a gateway gone from bucketCounts must not keep its count).
    patch.status.update(merge_patch(old=body.get("status") or {}, new=outcome.status))
    if outcome.accepted_spec is not None:
        patch.metadata.annotations[ACCEPTED_SPEC_ANNOTATION] = outcome.accepted_spec
    for event in outcome.events:
        kopf.event(body, type=event.type, reason=event.reason, message=event.message)
        level = logging.WARNING if event.type == "Warning" else logging.INFO
        logger.log(level, "%s: %s", event.reason, event.message)
    changed = [f"{a.kind}/{a.name} {a.action}" for a in outcome.applied if a.action != "unchanged"]
    if changed:
        logger.info("children: %s", ", ".join(changed))


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
def on_change(
    body: kopf.Body, memo: kopf.Memo, patch: kopf.Patch, logger: kopf.Logger, **_: Any
) -> None:
    """A pool appeared, changed its spec, or the operator (re)started."""
    _pass(body, memo, patch, logger)
