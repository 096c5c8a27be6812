"""Every example's pods are admitted by the real API server at the Pod Security level it claims.

Each file in ``examples/`` says, in a comment line ``# Pod Security level:
LEVEL``, the strictest Pod Security Standard its pods meet. The pods the
operator would make for it (the gateway StatefulSet's and the router
Deployment's templates, from the operator's own builders) are created as
Pods with a server-side dry run in a namespace that enforces that level, so
the real PodSecurity admission plugin decides. One level stricter must
refuse them, or the claim is not the strictest (``privileged`` claims none).
"""

from __future__ import annotations

import contextlib
import copy
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes.client
import pytest
import yaml
from kubernetes.client.exceptions import ApiException

from gatewaypool_operator.children.desired import build_children
from gatewaypool_operator.spec.parse import parse_spec
from support.crd import ROOT
from support.realcluster import IMAGE_REPOSITORY, Cluster

EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
LEVELS = ("restricted", "baseline", "privileged")
_CLAIM = re.compile(r"^# Pod Security level: (restricted|baseline|privileged)$", re.MULTILINE)


def claimed_level(path: Path) -> str:
    found = _CLAIM.search(path.read_text())
    assert found, f"{path.name} claims no Pod Security level ('# Pod Security level: ...')"
    return found.group(1)


def pools(path: Path) -> Iterator[dict[str, Any]]:
    for document in yaml.safe_load_all(path.read_text()):
        if document and document.get("kind") == "GatewayPool":
            yield document


def children_of(pool: dict[str, Any]) -> list[dict[str, Any]]:
    spec = parse_spec(pool["spec"], default_router_image=f"{IMAGE_REPOSITORY}:test")
    return build_children(
        name=pool["metadata"]["name"],
        namespace="examples",
        spec=spec,
        map_data=None,
        gateway_replicas=spec.replicas,
    )


def pod_templates(children: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """The workloads' pod templates, with the claim volumes a StatefulSet's pods get."""
    found = []
    for child in children:
        if child["kind"] not in ("StatefulSet", "Deployment"):
            continue
        template = copy.deepcopy(child["spec"]["template"])
        for claim in child["spec"].get("volumeClaimTemplates") or []:
            name = claim["metadata"]["name"]
            template["spec"].setdefault("volumes", []).append(
                {
                    "name": name,
                    "persistentVolumeClaim": {"claimName": f"{name}-{child['metadata']['name']}-0"},
                }
            )
        found.append((f"{child['kind']}/{child['metadata']['name']}", template))
    return found


def prerequisites(
    core: Any, scheduling: Any, namespace: str, children: list[dict[str, Any]]
) -> None:
    """What admission looks up before Pod Security decides: ServiceAccounts, PriorityClasses."""
    for child in children:
        if child["kind"] == "ServiceAccount":
            body = {"metadata": {"name": child["metadata"]["name"]}}
            with contextlib.suppress(ApiException):
                core.create_namespaced_service_account(namespace, body)
    for _, template in pod_templates(children):
        priority = template["spec"].get("priorityClassName")
        if priority:
            with contextlib.suppress(ApiException):
                scheduling.create_priority_class({"metadata": {"name": priority}, "value": 1000})


def admitted(core: Any, namespace: str, template: dict[str, Any]) -> str | None:
    """None if the Pod is admitted (dry run), else the server's refusal."""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"generateName": "example-", **template.get("metadata", {})},
        "spec": template["spec"],
    }
    try:
        core.create_namespaced_pod(namespace, pod, dry_run="All")
    except ApiException as exc:
        if exc.status != 403 or "violates PodSecurity" not in str(exc.body):
            raise
        return str(exc.body)
    return None


@pytest.fixture(scope="module")
def enforcing(cluster: Cluster) -> Iterator[dict[str, str]]:
    """A namespace per level, enforcing it."""
    core: Any = kubernetes.client.CoreV1Api(cluster.api())
    names = {}
    for level in LEVELS:
        name = f"psa-{level}"
        core.create_namespace(
            {
                "metadata": {
                    "name": name,
                    "labels": {"pod-security.kubernetes.io/enforce": level},
                }
            }
        )
        names[level] = name
        cluster.wait_default_service_account(name)
    yield names
    for name in names.values():
        core.delete_namespace(name)


def test_the_check_can_refuse(cluster: Cluster, enforcing: dict[str, str]) -> None:
    """A root, privileged pod is refused under baseline: the dry run does reach admission."""
    core: Any = kubernetes.client.CoreV1Api(cluster.api())
    template = {
        "spec": {
            "containers": [{"name": "x", "image": "x", "securityContext": {"privileged": True}}]
        }
    }
    assert admitted(core, enforcing["baseline"], template) is not None
    assert admitted(core, enforcing["privileged"], template) is None


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_pods_meet_the_level_they_claim(
    cluster: Cluster, enforcing: dict[str, str], path: Path
) -> None:
    core: Any = kubernetes.client.CoreV1Api(cluster.api())
    scheduling: Any = kubernetes.client.SchedulingV1Api(cluster.api())
    level = claimed_level(path)
    children = [child for pool in pools(path) for child in children_of(pool)]
    for namespace in enforcing.values():
        prerequisites(core, scheduling, namespace, children)
    templates = pod_templates(children)
    assert templates, f"{path.name} has no pool"
    for what, template in templates:
        refusal = admitted(core, enforcing[level], template)
        assert refusal is None, f"{path.name}: {what} refused at {level}: {refusal}"
    stricter = LEVELS[LEVELS.index(level) - 1] if level != "restricted" else None
    if stricter is not None:
        refusals = [admitted(core, enforcing[stricter], t) for _, t in templates]
        assert any(refusals), f"{path.name}: every pod meets {stricter}; claim that instead"
