"""TLS to the gateways, end to end: from spec.gateway.tls to bytes over TLS.

The operator renders the gateway StatefulSet with the certificate of
``serverCertSecretName`` mounted and the router Deployment with the CA of
``caSecretName``; the kubelet harness mounts those Secrets from the API as a
kubelet does and starts each gateway serving TLS with the mounted files; the
router runs with the TLS options the operator rendered, its paths mapped to
the files the same Secrets became. Studies sent to the router arrive whole,
byte-identical, at gateways that speak nothing but TLS, so every instance
passed the router's check of the gateway's chain and of its DNS name (one
wildcard certificate for the pool). A gateway added by a scale-up mounts the
same certificate. A gateway whose Secret is missing does not start until it
appears, as with ``FailedMount``.
"""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from typing import Any

from gatewaypool_local.peers import wait_until
from gatewaypool_local.synth import dataset_bytes, generate_study
from support import secretvolumes
from support.certs import TestCA
from support.cluster import GROUP, NS, PLURAL, VERSION
from support.kubeemu import KubeEmulator
from support.pool import operated, pool_spec, settled
from support.pool import router as make_router
from support.traffic import Traffic

TLS_OPTIONS = ("--gateway-tls-ca", "--gateway-tls-cert", "--gateway-tls-key")


def secret(name: str, data: dict[str, bytes], kind: str = "Opaque") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": NS},
        "type": kind,
        "data": {key: base64.b64encode(value).decode() for key, value in data.items()},
    }


def rendered_tls_options(kube: KubeEmulator, work: Path) -> list[str]:
    """The router's gateway TLS options as the operator rendered them, paths made local."""
    deployment = kube.get("Deployment", "ct-router", NS)
    assert deployment is not None
    pod = deployment["spec"]["template"]["spec"]
    mounted = secretvolumes.mount(kube, NS, pod, work / "router-volumes")
    assert mounted is not None, "the router's Secrets are all there"
    command = secretvolumes.local_paths(pod["containers"][0]["command"], mounted)
    options: list[str] = []
    for index, argument in enumerate(command):
        if argument in TLS_OPTIONS:
            options += [argument, command[index + 1]]
    return options


def test_gateways_serve_the_pools_certificate_and_the_router_verifies_it(
    kube: KubeEmulator, tmp_path: Path
) -> None:
    ca = TestCA(tmp_path / "pki")
    serving = ca.issue("gateways", f"*.ct-gw.{NS}.svc.cluster.local")
    kube.create("Secret", secret("gw-ca", {"ca.crt": ca.bundle.read_bytes()}), NS)
    spec = pool_spec(replicas=2, quiet_seconds=1, max_drain_seconds=30)
    spec["gateway"]["tls"] = {"caSecretName": "gw-ca", "serverCertSecretName": "gw-serving"}
    studies = [
        generate_study(tmp_path / "data", study_index=i, instances=6, rows=16, columns=16)
        for i in range(24)
    ]
    with operated(kube, tmp_path, spec=spec, max_gateways=3, resync=2) as pool:
        kubelet = pool.kubelet
        # No serving certificate yet: the gateway pods cannot start.
        wait_until(lambda: kubelet.failed_mounts >= {0, 1}, timeout=30, what="FailedMount")
        assert not kubelet.running_ordinals()
        kube.create(
            "Secret",
            secret(
                "gw-serving",
                {"tls.crt": serving.cert.read_bytes(), "tls.key": serving.key.read_bytes()},
                "kubernetes.io/tls",
            ),
            NS,
        )
        wait_until(lambda: settled(kube, kubelet, 2), timeout=60, what="two gateways serving TLS")
        options = rendered_tls_options(kube, tmp_path)
        assert [options[0], Path(options[1]).read_bytes()] == [
            "--gateway-tls-ca",
            ca.bundle.read_bytes(),
        ]
        router = make_router(kube, kubelet, tmp_path, "ct-router-0", extra_args=options)
        try:
            router.start()
            traffic = Traffic([router], studies[:12], seed=0, senders=2)
            traffic.start()
            first = traffic.finish(drain=True)
            # kubectl scale gwp/ct --replicas=3: the new gateway mounts the same certificate.
            pool.api.patch_namespaced_custom_object_scale(
                GROUP, VERSION, NS, PLURAL, "ct", {"spec": {"replicas": 3}}
            )
            wait_until(lambda: settled(kube, kubelet, 3), timeout=90, what="three gateways")
            traffic = Traffic([router], studies[12:], seed=1, senders=2)
            traffic.start()
            second = traffic.finish(drain=True)
            tls_failures = router.metric(
                "gatewaypool_router_gateway_failures_total", reason="gateway_tls_failed"
            )
        finally:
            router.stop()

    for outcome in (first, second):
        assert not outcome.failed and not outcome.unanswered
        assert len(outcome.studies) == 12
    assert tls_failures == 0
    stored = {
        item.sop_instance_uid: item.dataset_sha256()
        for sink in kubelet.gateways.values()
        for item in sink.received()
    }
    for study in studies:
        for sop, path in zip(study.sop_instance_uids, study.files, strict=True):
            assert stored.get(sop) == hashlib.sha256(dataset_bytes(path)).hexdigest()
    assert set(kubelet.gateways) == {0, 1, 2}
    assert any(sink.received() for sink in kubelet.gateways.values()), "nothing stored"
