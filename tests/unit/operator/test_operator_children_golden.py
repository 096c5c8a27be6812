"""The children of the sample pools, whole, against the golden files in tests/golden/children/.

A golden file shows a reviewer every object a pool owns at once, so a change
of a builder is read in the diff of its output; the invariant tests in
test_operator_children.py say what must hold for any spec. After an intended
change, rewrite the files with ``./dev.sh unit --update-golden`` (or pytest's
``--update-golden`` on this module) and review ``git diff tests/golden``.
"""

from __future__ import annotations

import difflib
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from gatewaypool_operator.children.desired import build_children, routers_configmap
from gatewaypool_operator.spec.parse import parse_spec
from support import specs

GOLDEN = Path(__file__).resolve().parents[2] / "golden" / "children"
OPERATOR_IMAGE = "registry.example.org/gatewaypool:0.1.0"
MAP_DATA = {"map.json": '{"version":1}'}  # opaque to the builders
POOLS: dict[str, Callable[[], dict[str, Any]]] = {
    "minimal": specs.minimal,
    "full": specs.full,
    "tls": specs.tls,
}
HEADER = (
    "# What the operator's children builders make of tests/support/specs.py's {pool}() pool.\n"
    "# Generated: rewrite with ./dev.sh unit --update-golden, and review the diff.\n"
)


def render(pool: str) -> str:
    """The pool's children as YAML documents: in the order they are applied, keys sorted."""
    spec = parse_spec(POOLS[pool](), default_router_image=OPERATOR_IMAGE)
    objects = [
        *build_children(
            name=specs.POOL_NAME,
            namespace=specs.POOL_NAMESPACE,
            spec=spec,
            map_data=MAP_DATA,
            gateway_replicas=spec.replicas,
        ),
        routers_configmap(name=specs.POOL_NAME, namespace=specs.POOL_NAMESPACE),
    ]
    body = yaml.safe_dump_all(objects, sort_keys=True, default_flow_style=False, width=100)
    return HEADER.format(pool=pool) + body


def difference(expected: str, actual: str, *, name: str) -> str:
    """A unified diff from the golden text to the rendered one; empty when they agree."""
    return "".join(
        difflib.unified_diff(
            expected.splitlines(keepends=True),
            actual.splitlines(keepends=True),
            fromfile=f"golden/{name}",
            tofile=f"rendered/{name}",
        )
    )


@pytest.mark.parametrize("pool", sorted(POOLS))
def test_the_children_match_the_golden_file(pool: str, request: pytest.FixtureRequest) -> None:
    path = GOLDEN / f"{pool}.yaml"
    rendered = render(pool)
    if request.config.getoption("--update-golden"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(rendered, encoding="utf-8")
        return
    assert path.exists(), f"{path} is missing: write it with ./dev.sh unit --update-golden"
    diff = difference(path.read_text(encoding="utf-8"), rendered, name=path.name)
    assert not diff, (
        f"the children of the {pool} pool differ from {path}; if the change is "
        f"intended, run ./dev.sh unit --update-golden and review git diff:\n{diff}"
    )


def test_a_changed_object_is_noticed() -> None:
    """The comparison reads the objects for real: one changed value makes a diff."""
    rendered = render("minimal")
    changed = rendered.replace("maxUnavailable: 1", "maxUnavailable: 2", 1)
    assert changed != rendered
    assert "maxUnavailable: 2" in difference(rendered, changed, name="minimal.yaml")


def test_the_rendering_does_not_depend_on_the_process() -> None:
    """Another interpreter, with another hash seed, renders the same text: no set order,
    time or random name leaks into a golden file."""
    script = (
        "import sys; sys.path[:0] = [sys.argv[1], sys.argv[2]]\n"
        "import test_operator_children_golden as golden\n"
        "sys.stdout.write(''.join(golden.render(pool) for pool in sorted(golden.POOLS)))\n"
    )
    here = Path(__file__).resolve().parent
    environment = os.environ | {"PYTHONHASHSEED": "12345"}
    other = subprocess.run(
        [sys.executable, "-c", script, str(here), str(here.parents[1])],
        capture_output=True,
        text=True,
        check=True,
        env=environment,
        timeout=120,
    ).stdout
    assert other == "".join(render(pool) for pool in sorted(POOLS))
