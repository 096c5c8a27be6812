"""The GatewayPool configuration reference, generated from the CRD's schema.

The CRD is the one source of truth for fields, types, defaults and ranges;
``docs/configuration.md`` is rendered from it (``./dev.sh docs``) and a
test fails when the two disagree, so the document can never describe a
field the API server does not know. A tool of the repository, not of the
product (``tools/``); ``tests/unit/operator/test_configuration_reference.py`` runs it.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
CRD_PATH = REPO / "crds" / "gatewaypool.io_gatewaypools.yaml"
DOC_PATH = REPO / "docs" / "configuration.md"

_HEADER = """\
# GatewayPool configuration reference

<!-- Generated from crds/gatewaypool.io_gatewaypools.yaml by
     `./dev.sh docs`; do not edit by hand. -->

A `GatewayPool` (`apiVersion: gatewaypool.io/v1alpha1`, short name `gwp`)
describes one pool of DICOM gateways and its study router. Fields without a
default are optional unless marked required. The API server fills in the
defaults and refuses values outside the ranges shown.

"""


def _type(node: Mapping[str, Any]) -> str:
    if node.get("x-kubernetes-int-or-string"):
        return "integer or string"
    kind = str(node.get("type", "object"))
    if kind == "array":
        items = node.get("items") or {}
        return f"list of {_type(items)}"
    if kind == "object" and "additionalProperties" in node:
        values = node["additionalProperties"]
        return f"map of {_type(values) if isinstance(values, Mapping) else 'values'}"
    return kind


def _limits(node: Mapping[str, Any]) -> str:
    parts = []
    if "enum" in node:
        parts.append("one of " + ", ".join(f"`{v}`" for v in node["enum"]))
    if "minimum" in node and "maximum" in node:
        parts.append(f"{node['minimum']} to {node['maximum']}")
    elif "minimum" in node:
        parts.append(f"at least {node['minimum']}")
    elif "maximum" in node:
        parts.append(f"at most {node['maximum']}")
    if "pattern" in node:
        parts.append(f"pattern `{node['pattern']}`")
    if "minLength" in node and node["minLength"] > 0:
        parts.append(f"at least {node['minLength']} characters")
    if "maxLength" in node:
        parts.append(f"at most {node['maxLength']} characters")
    if "maxItems" in node:
        parts.append(f"at most {node['maxItems']} items")
    if node.get("x-kubernetes-list-type") == "map":
        keys = ", ".join(node.get("x-kubernetes-list-map-keys") or [])
        parts.append(f"one item per {keys}")
    for rule in node.get("x-kubernetes-validations") or []:
        parts.append(str(rule.get("message") or rule.get("rule")))
    return "; ".join(parts)


def _rows(node: Mapping[str, Any], path: str) -> Iterator[str]:
    required = set(node.get("required") or [])
    for key, child in (node.get("properties") or {}).items():
        field = f"{path}.{key}"
        default = child.get("default")
        shown = "" if default is None or default == {} else f"`{_scalar(default)}`"
        description = " ".join(str(child.get("description", "")).split())
        if key in required:
            description = f"**Required.** {description}"
        limits = _limits(child)
        cells = [f"`{field}`", _type(child), shown, limits, description]
        yield "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"
        if child.get("type", "object") == "object" and "properties" in child:
            yield from _rows(child, field)
        items = child.get("items")
        if child.get("type") == "array" and isinstance(items, Mapping) and "properties" in items:
            yield from _rows(items, f"{field}[]")


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[]" if not value else str(value)
    return str(value)


def render(crd: Mapping[str, Any]) -> str:
    """The whole Markdown reference for ``crd``."""
    version = crd["spec"]["versions"][0]
    schema = version["schema"]["openAPIV3Schema"]
    lines = [_HEADER]
    for section in ("spec", "status"):
        node = schema["properties"][section]
        lines.append(f"## `{section}`\n")
        description = " ".join(str(node.get("description", "")).split())
        if description:
            lines.append(description + "\n")
        for rule in node.get("x-kubernetes-validations") or []:
            lines.append(f"- Rule: {rule.get('message') or rule.get('rule')}")
        if node.get("x-kubernetes-validations"):
            lines.append("")
        lines.append("| field | type | default | allowed | meaning |")
        lines.append("|---|---|---|---|---|")
        lines.extend(_rows(node, section))
        lines.append("")
    columns = version.get("additionalPrinterColumns") or []
    if columns:
        lines.append("## `kubectl get gwp` columns\n")
        lines.append("| column | from |")
        lines.append("|---|---|")
        lines.extend(f"| {c['name']} | `{c['jsonPath']}` |" for c in columns)
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def render_file(crd_path: Path = CRD_PATH) -> str:
    """Render the reference from the CRD file."""
    return render(yaml.safe_load(crd_path.read_text()))


def main() -> int:
    """Write docs/configuration.md from the CRD."""
    DOC_PATH.parent.mkdir(parents=True, exist_ok=True)
    DOC_PATH.write_text(render_file())
    print(f"wrote {DOC_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
