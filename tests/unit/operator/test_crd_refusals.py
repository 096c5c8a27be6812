"""Every refusal the operator's spec parsing makes is one the CRD makes too, or a known gap.

The operator checks a spec itself (for CRDs installed without the schema, or
older ones), but a user should learn of a bad spec at ``kubectl apply``, not
from a SpecRejected condition. Each ``raise SpecError`` in the spec modules is
a refusal; each must be shown by a pool of ``support.specfaults.FAULTS``
(which the real API server refuses in
``tests/e2e/test_cluster_crd_validation.py``) or be listed in
``SCHEMA_CANNOT`` with the reason the schema cannot say it. A new operator
check without a CRD rule fails here.
"""

from __future__ import annotations

import ast
import functools
import re
import traceback
from pathlib import Path

import pytest

from gatewaypool_operator import exposure
from gatewaypool_operator.spec import fields, parse, pod, types
from gatewaypool_operator.spec.fields import SpecError
from gatewaypool_operator.spec.parse import check_name, parse_spec
from support.crd import apply_defaults, root_schema
from support.specfaults import FAULTS, SCHEMA_CANNOT, SCHEMA_PARTLY, Fault

#: The modules whose checks make up the operator's spec parsing.
MODULES = (parse, fields, pod, types, exposure)


def _own_raises(function: ast.FunctionDef) -> list[ast.Raise]:
    """The ``raise SpecError(...)`` statements of `function`, not of functions nested in it."""
    found: list[ast.Raise] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                continue
            if (
                isinstance(child, ast.Raise)
                and isinstance(child.exc, ast.Call)
                and isinstance(child.exc.func, ast.Name)
                and child.exc.func.id == "SpecError"
            ):
                found.append(child)
            visit(child)

    visit(function)
    return sorted(found, key=lambda node: node.lineno)


@functools.cache
def raise_sites() -> dict[tuple[str, int], str]:
    """Every operator refusal: (file, line of its ``raise``) -> ``module:function#n``."""
    sites = {}
    for module in MODULES:
        path = str(Path(module.__file__ or "").resolve())
        name = module.__name__.removeprefix("gatewaypool_operator.")
        tree = ast.parse(Path(path).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef):
                for number, statement in enumerate(_own_raises(node), start=1):
                    sites[(path, statement.lineno)] = f"{name}:{node.name}#{number}"
    return sites


def refusal(fault: Fault) -> SpecError:
    """What the operator says about the fault's pool (as the API server would have stored it)."""
    body = fault.pool()
    try:
        check_name(body["metadata"]["name"])
        defaulted = apply_defaults(body, root_schema())
        parse_spec(defaulted.get("spec"), default_router_image="gp:1")
    except SpecError as exc:
        return exc
    raise AssertionError(f"{fault.id}: the operator accepts it")


def site_of(error: SpecError) -> str:
    """The refusal `error` was raised by: its ``raise`` statement's site."""
    frame = traceback.extract_tb(error.__traceback__)[-1]
    key = (str(Path(frame.filename).resolve()), frame.lineno or 0)
    # A raise spread over several lines is reported at its first line.
    return raise_sites()[key]


def as_the_api_server_names_it(path: str) -> str:
    """``labels['team']`` as ``labels.team``: how the API server names a map's key."""
    return re.sub(r"\[('[^']*'|\"[^\"]*\")\]", lambda m: "." + m[1][1:-1], path)


@functools.cache
def shown() -> dict[str, list[str]]:
    """The table's faults by the operator refusal each shows."""
    by_site: dict[str, list[str]] = {}
    for fault in FAULTS:
        by_site.setdefault(site_of(refusal(fault)), []).append(fault.id)
    return by_site


def test_the_scan_finds_the_refusals() -> None:
    # The scan has teeth: it sees refusals of every module that makes them, nested ones too.
    sites = set(raise_sites().values())
    assert len(sites) > 80
    assert {"spec.parse:only_with#1", "spec.pod:_tolerations#1", "spec.fields:integer#3"} <= sites
    assert "spec.parse:_router_service#5" not in sites  # only_with's raise is its own


def test_fault_ids_are_unique() -> None:
    ids = [fault.id for fault in FAULTS]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("fault", FAULTS, ids=lambda f: f.id)
def test_the_operator_refuses_each_fault_at_its_field(fault: Fault) -> None:
    error = refusal(fault)
    # The two may name the field at different depths: the API server a duplicate list
    # item where the operator names the list, the operator a list item where the API
    # server names the list its rule sits on.
    path = as_the_api_server_names_it(error.field_path)
    assert path.startswith(fault.field) or fault.field.startswith(path), str(error)


def test_every_operator_refusal_is_in_the_crd_or_known_to_be_beyond_it() -> None:
    missing = sorted(set(raise_sites().values()) - set(shown()) - set(SCHEMA_CANNOT))
    assert missing == [], (
        "operator refusals without a pool in support.specfaults.FAULTS (add a CRD rule "
        "and a fault) or an entry in SCHEMA_CANNOT (with why the schema cannot say it)"
    )


def test_what_the_schema_cannot_say_is_not_shown_by_the_table() -> None:
    # An entry here with a fault that the API server refuses is stale: drop it.
    assert sorted(set(SCHEMA_CANNOT) & set(shown())) == []
    assert set(SCHEMA_CANNOT) <= set(raise_sites().values())


def test_partial_refusals_are_shown_by_the_table() -> None:
    assert set(SCHEMA_PARTLY) <= set(shown())


def test_the_coverage_check_can_fail() -> None:
    # Without its faults, the toleration refusal would be reported as missing.
    rest = {site_of(refusal(f)) for f in FAULTS if "toleration-exists" not in f.id}
    assert "spec.pod:_tolerations#1" in shown()
    assert "spec.pod:_tolerations#1" not in rest
