"""``gatewaypool locate`` on a pool of the real control plane, with only the Role the docs list.

A pool of two gateways and two routers receives the first half of each of
a set of studies, is scaled to three (buckets move to the newcomer) and
then receives the second halves: a study whose bucket moved arrives on both
sides of the move. ``locate`` reads the map, the pool and every router's
record through the API server's pod proxy, with the token of a
ServiceAccount bound to ``docs/locate-rbac.yaml`` and nothing else, and must
agree with what each gateway pod actually stored. It must also catch a
bucket while it moves, and the Role must not be bigger than it needs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import kubernetes.client
import yaml

from gatewaypool.bucketmap import parse_map
from gatewaypool.hashing import study_bucket
from gatewaypool_local.peers.dcmtk import storescu
from gatewaypool_local.peers.process import wait_until
from gatewaypool_local.synth import Study, generate_study
from gatewaypool_operator.locate.answer import Location
from gatewaypool_operator.locate.sources import SourceError, pool_location
from support.realcluster import Cluster
from support.realpool import RealPool, gateway_spec, operated_pool

ROOT = Path(__file__).resolve().parents[2]
ROLE = yaml.safe_load((ROOT / "docs" / "locate-rbac.yaml").read_text())
#: Long enough that a bucket used just before the scale is seen moving.
QUIET_SECONDS = 6
UNSEEN_UID = "1.2.826.0.1.3680043.8.498.999999999"


def _locator(cluster: Cluster, namespace: str, rules: list[dict[str, Any]], name: str) -> Any:
    """A ServiceAccount bound to a Role of `rules`: its token's ApiClient and kubeconfig."""
    core: Any = kubernetes.client.CoreV1Api(cluster.api())
    rbac: Any = kubernetes.client.RbacAuthorizationV1Api(cluster.api())
    core.create_namespaced_service_account(namespace, {"metadata": {"name": name}})
    rbac.create_namespaced_role(namespace, {**ROLE, "metadata": {"name": name}, "rules": rules})
    rbac.create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}],
        },
    )
    token = core.create_namespaced_service_account_token(
        name, namespace, {"spec": {"expirationSeconds": 3600}}
    ).status.token
    endpoints = cluster.plane.endpoints
    configuration = kubernetes.client.Configuration()
    configuration.host = endpoints.server
    configuration.ssl_ca_cert = str(endpoints.ca)
    configuration.api_key = {"authorization": f"Bearer {token}"}
    kubeconfig = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "test",
                "cluster": {"server": endpoints.server, "certificate-authority": str(endpoints.ca)},
            }
        ],
        "users": [{"name": name, "user": {"token": token}}],
        "contexts": [{"name": name, "context": {"cluster": "test", "user": name}}],
        "current-context": name,
    }
    return kubernetes.client.ApiClient(configuration), kubeconfig


def _send(pool: RealPool, files: list[Path]) -> None:
    target = pool.router_service()
    result = storescu(target.host, target.port, files, called_ae=target.ae_title)
    assert result.returncode == 0, result.stdout + result.stderr


def _stored_by_study(pool: RealPool) -> dict[str, Counter[str]]:
    counts: dict[str, Counter[str]] = {}
    for gateway, instances in pool.stored().items():
        for study_uid in instances.values():
            counts.setdefault(study_uid, Counter())[gateway] += 1
    return counts


def _caught_moving(pool: RealPool, api: Any, studies: list[Study], seen: list[Location]) -> bool:
    """One consistent look at a moving bucket: the map unchanged around locate's answer."""
    before = parse_map(pool.map_text())
    moving = [s for s in studies if study_bucket(s.study_uid, before.buckets) in before.moving]
    if not moving:
        return False
    location = pool_location(moving[0].study_uid, namespace=pool.namespace, pool=pool.name, api=api)
    if parse_map(pool.map_text()).version != before.version or location.move is None:
        return False  # the move ended meanwhile: look again
    seen.append(location)
    return True


def test_locate_follows_studies_across_a_handover_with_the_documented_role(
    cluster: Cluster, cluster_namespace: str, tmp_path: Path
) -> None:
    spec = {
        "replicas": 2,
        "gateway": gateway_spec(),
        "router": {"replicas": 2},
        "handover": {"quietSeconds": QUIET_SECONDS, "maxDrainSeconds": 60},
    }
    with operated_pool(cluster, cluster_namespace, spec) as pool:
        api, kubeconfig = _locator(cluster, cluster_namespace, ROLE["rules"], "locator")
        # Made now, so that RBAC has them long before they are used.
        short = {
            index: _locator(
                cluster,
                cluster_namespace,
                [r for i, r in enumerate(ROLE["rules"]) if i != index],
                f"without-{index}",
            )[0]
            for index in range(len(ROLE["rules"]))
        }
        studies = [
            generate_study(tmp_path / "data", study_index=i, instances=4, rows=8, columns=8)
            for i in range(16)
        ]
        pool.wait_settled(2, 2, timeout=120)
        _send(pool, [f for s in studies for f in s.files[:2]])
        first = parse_map(pool.map_text())
        pool.scale(3)
        moves: list[Location] = []
        wait_until(
            lambda: _caught_moving(pool, api, studies, moves),
            timeout=60,
            what="locate showing a bucket on the move",
        )
        pool.wait_settled(3, 2, timeout=120)
        _send(pool, [f for s in studies for f in s.files[2:]])
        wait_until(
            lambda: sum(sum(c.values()) for c in _stored_by_study(pool).values()) == 64,
            timeout=60,
            what="every instance stored",
        )
        stored = _stored_by_study(pool)
        final = parse_map(pool.map_text())
        located = {
            s.study_uid: pool_location(
                s.study_uid, namespace=cluster_namespace, pool=pool.name, api=api
            )
            for s in studies
        }
        both_sides = [uid for uid, where in stored.items() if len(where) == 2]
        assert both_sides, "no study's bucket moved between its halves"
        env = {
            **os.environ,
            "KUBECONFIG": str(_write(tmp_path / "locator.kubeconfig", kubeconfig)),
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        }
        plugin = _kubectl_gwp(env, both_sides[0], cluster_namespace, "-o", "json")
        text = _kubectl_gwp(env, both_sides[0], cluster_namespace)
        unseen = _kubectl_gwp(env, UNSEEN_UID, cluster_namespace)
        malformed = _kubectl_gwp(env, "1.2.x", cluster_namespace)
        fewer = _needed_rules(short, cluster_namespace, studies[0].study_uid)

    # A bucket caught on the move: from its owner in the first map to the newcomer.
    [caught] = moves
    assert caught.move is not None and caught.move.since is not None
    assert caught.move.source.name == first.gateway_for(caught.bucket).name
    assert caught.move.target.name == final.gateway_for(caught.bucket).name == "ct-gw-2"
    # Every study where the gateways stored it, by every router's record.
    for uid, location in located.items():
        assert location.went_to == dict(stored[uid]), uid
        assert location.owner.name == final.gateway_for(study_bucket(uid, final.buckets)).name
        assert location.move is None
        assert all(answer.error is None for answer in location.routers), location.routers
        assert len(location.routers) == 2
    for uid in both_sides:
        versions = {
            name: use.map_versions
            for answer in located[uid].routers
            if answer.entry is not None
            for name, use in answer.entry.uses.items()
        }
        old = first.gateway_for(study_bucket(uid, first.buckets)).name
        new = final.gateway_for(study_bucket(uid, final.buckets)).name
        assert set(versions) == {old, new}
        assert max(versions[old]) < min(versions[new])
    # The kubectl plugin, as a user runs it with the documented Role.
    assert plugin.returncode == 0, plugin.stderr
    answer = json.loads(plugin.stdout)
    assert answer["wentTo"] == dict(stored[both_sides[0]])
    assert answer["owner"]["host"].startswith(
        f"{answer['owner']['pod']}.ct-gw.{cluster_namespace}.svc."
    )
    print(text.stdout)  # the README's pool example comes from here (pytest -s)
    assert text.returncode == 0, text.stderr
    went = ", ".join(f"{name} ({count})" for name, count in answer["wentTo"].items())
    assert f"went to   {went}, by " in text.stdout
    assert f"owner     {answer['owner']['pod']} (pod {answer['owner']['pod']}, " in text.stdout
    assert unseen.returncode == 0, unseen.stderr
    assert "not seen by any router (2 asked)" in unseen.stdout
    assert "owner     ct-gw-" in unseen.stdout
    assert malformed.returncode == 2 and "is not a StudyInstanceUID" in malformed.stderr
    assert fewer == {}, fewer


def _write(path: Path, kubeconfig: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(kubeconfig))
    return path


def _kubectl_gwp(env: dict[str, str], uid: str, namespace: str, *args: str) -> Any:
    kubectl = Path(sys.executable).parent / "kubectl"
    return subprocess.run(
        [str(kubectl), "gwp", "locate", uid, "-n", namespace, "--pool", "ct", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def _needed_rules(short: dict[int, Any], namespace: str, study_uid: str) -> dict[str, str]:
    """The Role is no bigger than needed: without any one rule, locate cannot answer whole.

    `short` holds, per rule, an ApiClient whose Role lacks it. Returns the
    rules whose absence went unnoticed (empty when each is needed), and how.
    """
    unnoticed: dict[str, str] = {}
    for index, api in short.items():
        resource = ROLE["rules"][index]["resources"][0]
        refused = f'cannot {ROLE["rules"][index]["verbs"][0]} resource "{resource}"'
        try:
            location = pool_location(study_uid, namespace=namespace, pool="ct", api=api)
        except SourceError as exc:
            if refused not in str(exc):
                unnoticed[resource] = f"failed otherwise: {exc}"
            continue
        errors = [answer.error or "" for answer in location.routers]
        if not errors or not all(refused in error for error in errors):
            unnoticed[resource] = f"answered: {location.to_json()}"
    return unnoticed
