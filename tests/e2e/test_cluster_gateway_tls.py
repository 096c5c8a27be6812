"""TLS to the gateways on the real control plane: from spec.gateway.tls to bytes over TLS.

The Secrets are created through the API. The operator (the chart's
Deployment) renders the gateway StatefulSet with the certificate of
``serverCertSecretName`` mounted and the router Deployment with the CA of
``caSecretName`` and the option naming it; the kubelet stand-in mounts those
Secrets as a kubelet does. Each gateway is the pynetdicom Storage SCP
serving nothing but TLS with the mounted files, as its own ``args`` say.
Studies sent to the router Service arrive whole and byte-identical, so
every instance passed the router's check of the gateway's chain and of its
DNS name in the map (one wildcard certificate for the pool). A gateway
added by a scale-up mounts the same certificate. A gateway whose Secret is
missing does not start until it appears (``FailedMount``).
"""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from typing import Any

import kubernetes.client

from gatewaypool_local.peers.dcmtk import echoscu
from gatewaypool_local.peers.process import wait_until
from gatewaypool_local.sink import instance_file_name
from gatewaypool_local.synth import dataset_bytes, generate_study
from gatewaypool_operator.children.podparts import GATEWAY_CERT_DIRECTORY
from support.certs import TestCA
from support.realcluster import Cluster
from support.realpool import GATEWAY_AE, GATEWAY_PORT, RealPool, gateway_spec, operated_pool
from support.traffic import Traffic

TLS_FAILURES = "gatewaypool_router_gateway_failures_total"


def _secret(name: str, data: dict[str, bytes], kind: str = "Opaque") -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "type": kind,
        "data": {key: base64.b64encode(value).decode() for key, value in data.items()},
    }


def _failed_mounts(core: Any, namespace: str) -> set[str]:
    """The pods the kubelet reported a FailedMount for."""
    events = core.list_namespaced_event(namespace, field_selector="reason=FailedMount").items
    return {str(e.involved_object.name) for e in events}


def test_gateways_serve_the_pools_certificate_and_the_router_verifies_it(
    cluster: Cluster, cluster_namespace: str, tmp_path: Path
) -> None:
    ns = cluster_namespace
    core: Any = kubernetes.client.CoreV1Api(cluster.api())
    ca = TestCA(tmp_path / "pki")
    serving = ca.issue("gateways", f"*.ct-gw.{ns}.svc.cluster.local")
    core.create_namespaced_secret(ns, _secret("gw-ca", {"ca.crt": ca.bundle.read_bytes()}))
    certificate = f"{GATEWAY_CERT_DIRECTORY}/tls.crt"
    spec = {
        "replicas": 2,
        "gateway": {
            **gateway_spec(
                "--tls-cert", certificate, "--tls-key", f"{GATEWAY_CERT_DIRECTORY}/tls.key"
            ),
            "tls": {"caSecretName": "gw-ca", "serverCertSecretName": "gw-serving"},
        },
        "router": {"replicas": 1},
        "handover": {"quietSeconds": 1, "maxDrainSeconds": 30},
    }
    studies = [
        generate_study(tmp_path / "data", study_index=i, instances=6, rows=16, columns=16)
        for i in range(16)
    ]
    with operated_pool(cluster, ns, spec) as pool:
        # No serving certificate yet: the gateway pods cannot start.
        wait_until(
            lambda: _failed_mounts(core, ns) >= {"ct-gw-0", "ct-gw-1"},
            timeout=60,
            what="FailedMount for both gateways",
        )
        assert not [p for p in cluster.kubelet.pods(ns) if "-gw-" in p.name and p.started]
        core.create_namespaced_secret(
            ns,
            _secret(
                "gw-serving",
                {"tls.crt": serving.cert.read_bytes(), "tls.key": serving.key.read_bytes()},
                "kubernetes.io/tls",
            ),
        )
        pool.wait_settled(2, 1, timeout=120)
        [(router_name, router_address)] = pool.router_addresses().items()
        router_pod = core.read_namespaced_pod(router_name, ns)
        command = router_pod.spec.containers[0].command
        ca_path = command[command.index("--gateway-tls-ca") + 1]
        mounted = cluster.kubelet.pod(ns, router_name)
        assert mounted is not None
        ca_volume = cluster.kubelet.volume(mounted, "gateway-tls-ca")
        assert (ca_volume / Path(ca_path).name).read_bytes() == ca.bundle.read_bytes()
        # The gateways speak nothing but TLS: a plain association gets nowhere.
        gateway_address = core.read_namespaced_pod("ct-gw-0", ns).status.pod_ip
        plain = echoscu(gateway_address, GATEWAY_PORT, called_ae=GATEWAY_AE, timeout=30)
        assert plain.returncode != 0, plain.stdout + plain.stderr

        target = pool.router_service()
        traffic = Traffic([target], studies[:8], seed=0, senders=2)
        traffic.start()
        first = traffic.finish(drain=True)
        # kubectl scale gwp/ct --replicas=3: the new gateway mounts the same certificate.
        pool.scale(3)
        pool.wait_settled(3, 1, timeout=120)
        traffic = Traffic([target], studies[8:], seed=1, senders=2)
        traffic.start()
        second = traffic.finish(drain=True)
        tls_failures = RealPool.metric(
            router_address, TLS_FAILURES, labels={"reason": "gateway_tls_failed"}
        )
        gateway_pods = [
            p for p in cluster.kubelet.pods(ns) if p.name.startswith("ct-gw-") and p.started
        ]

    for outcome in (first, second):
        assert not outcome.failed and not outcome.unanswered
        assert len(outcome.studies) == 8
    assert tls_failures == 0
    assert {p.name for p in gateway_pods} == {"ct-gw-0", "ct-gw-1", "ct-gw-2"}
    for pod in gateway_pods:
        mounted_cert = cluster.kubelet.volume(pod, "tls-server") / Path(certificate).name
        assert mounted_cert.read_bytes() == serving.cert.read_bytes(), pod.name
    # What each gateway stored: the exact data set bytes, by SOP instance.
    stored = {
        path.name: hashlib.sha256(path.read_bytes()).hexdigest()
        for pod in gateway_pods
        for path in (cluster.kubelet.volume(pod, "tmp") / "received").glob("*.dcm")
    }
    for study in studies:
        for sop, path in zip(study.sop_instance_uids, study.files, strict=True):
            sent = hashlib.sha256(dataset_bytes(path)).hexdigest()
            assert stored.get(instance_file_name(sop)) == sent, sop
