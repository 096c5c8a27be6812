"""The cluster every operator test starts from: the API emulator with the CRD and a namespace.

One copy of what the tests otherwise each spelled out: the namespace pools
live in, the custom resource's coordinates (from the product's own
contract), and the emulator with the GatewayPool CRD installed.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import kubernetes.client

from gatewaypool.contract import API_GROUP as GROUP
from gatewaypool.contract import API_VERSION as VERSION
from gatewaypool.contract import PLURAL
from support.crd import CRD_PATH, ROOT
from support.kubeemu import KubeEmulator

__all__ = [
    "CRD_PATH",
    "GROUP",
    "IMAGE",
    "NS",
    "PLURAL",
    "REPO",
    "VERSION",
    "custom",
    "pool_cluster",
]

REPO = ROOT
#: The namespace the tests' pools live in.
NS = "radiology"
#: The image the operator under test names for routers (nothing pulls it).
IMAGE = "registry.example.org/gatewaypool:0.1.0"


@contextmanager
def pool_cluster(*, keep_requests: bool = False) -> Iterator[KubeEmulator]:
    """An API emulator serving the GatewayPool CRD, with namespace `NS` created."""
    with KubeEmulator(keep_requests=keep_requests) as emulator:
        emulator.apply_crd(CRD_PATH)
        emulator.create_namespace(NS)
        yield emulator


def custom(kube: KubeEmulator) -> Any:
    """The GatewayPool API (``CustomObjectsApi``) of `kube`, as kubectl and an HPA use it."""
    return kubernetes.client.CustomObjectsApi(kube.api_client())
