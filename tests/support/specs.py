"""Sample GatewayPool specs the tests share: a minimal pool, a full one, and one with TLS.

Each function returns a fresh copy, so a test may edit what it gets. The
operator's spec tests parse them, the children tests render them, and the
golden files in ``tests/golden/children/`` are what the children builders make
of them: a spec written once, so the spec tests and the rendered objects
speak of one pool.
"""

from __future__ import annotations

import copy
from typing import Any, Final

__all__ = ["POOL_NAME", "POOL_NAMESPACE", "full", "minimal", "tls"]

POOL_NAME: Final = "ct-triage"
POOL_NAMESPACE: Final = "radiology"

_MINIMAL: Final[dict[str, Any]] = {
    "replicas": 3,
    "gateway": {"image": "orthancteam/orthanc:24.1.2"},
}

_FULL: Final[dict[str, Any]] = {
    "replicas": 4,
    "buckets": 1024,
    "gateway": {
        "image": "orthancteam/orthanc:24.1.2",
        "imagePullPolicy": "Always",
        "command": ["Orthanc"],
        "args": ["/etc/orthanc/"],
        "port": 4242,
        "aeTitle": "ORTHANC",
        "env": [
            {"name": "ORTHANC__NAME", "value": "gw"},
            {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
        ],
        "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"cpu": 2}},
        "storage": {"size": "10Gi", "storageClassName": "fast", "mountPath": "/data"},
        "podTemplate": {
            "labels": {"team": "radiology"},
            "annotations": {"example.org/note": "free text"},
            "nodeSelector": {"node-role.example.org/phi": "true"},
            "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "phi"}],
            "affinity": {
                "podAntiAffinity": {
                    "preferredDuringSchedulingIgnoredDuringExecution": [
                        {
                            "weight": 100,
                            "podAffinityTerm": {
                                "topologyKey": "kubernetes.io/hostname",
                                "labelSelector": {
                                    "matchLabels": {"app.kubernetes.io/instance": POOL_NAME}
                                },
                            },
                        }
                    ]
                }
            },
            "priorityClassName": "clinical-critical",
            "serviceAccountName": "gateway",
            "topologySpreadConstraints": [
                {"maxSkew": 2, "topologyKey": "rack", "whenUnsatisfiable": "DoNotSchedule"}
            ],
        },
    },
    "networkPolicy": {
        "extraIngress": [
            {
                "from": [{"namespaceSelector": {"matchLabels": {"name": "monitoring"}}}],
                "ports": [{"protocol": "TCP", "port": 8042}],
            },
            {"from": [{"ipBlock": {"cidr": "10.20.0.0/16"}}]},
        ]
    },
    "router": {
        "replicas": 3,
        "image": "registry.example.org/router:1",
        "aeTitle": "ROUTER",
        "port": 104,
        "serviceType": "LoadBalancer",
        "allowedCallingAETitles": ["CT1", "MR ROOM 2"],
        "resources": {"limits": {"memory": "256Mi"}},
        "timeouts": {"gatewaySeconds": 8, "gatewayIdleReleaseSeconds": 4},
    },
    "handover": {"quietSeconds": 60, "maxDrainSeconds": 900},
    "autoscaling": {
        "minReplicas": 2,
        "maxReplicas": 8,
        "targets": {"cpuUtilization": 70, "studiesInFlight": 4},
        "scaleDown": {"stabilizationSeconds": 1200, "periodSeconds": 120},
    },
}

_TLS: Final[dict[str, Any]] = {
    **_MINIMAL,
    "router": {
        "allowedCallingAETitles": ["CT01", "MR1"],
        "tls": {
            "secretName": "router-tls",
            "clientCASecretName": "modality-ca",
            "callerSubjects": [
                {"aeTitle": "CT01", "subject": "CN=ct01.radiology.example.org,O=Example Hospital"},
                {"aeTitle": "MR1", "subject": "CN=mr1,O=Example Hospital"},
            ],
        },
    },
    "gateway": {
        **_MINIMAL["gateway"],
        "tls": {
            "caSecretName": "gw-ca",
            "clientCertSecretName": "router-to-gw",
            "serverCertSecretName": "gw-serving",
        },
    },
}


def minimal() -> dict[str, Any]:
    """Three gateways of an image, everything else left to its default."""
    return copy.deepcopy(_MINIMAL)


def full() -> dict[str, Any]:
    """Every section of the contract set, its fields away from their defaults."""
    return copy.deepcopy(_FULL)


def tls() -> dict[str, Any]:
    """The minimal pool with DICOM TLS both ways: senders to routers (mutual), routers to
    gateways (mutual), and the gateways serving a mounted certificate."""
    return copy.deepcopy(_TLS)
