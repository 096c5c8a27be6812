"""docs/configuration.md is generated from the CRD and must match it."""

from __future__ import annotations

import yaml

import configref as reference


def test_reference_is_current() -> None:
    assert reference.DOC_PATH.read_text() == reference.render_file(), (
        "docs/configuration.md is stale: run ./dev.sh docs"
    )


def test_reference_lists_every_spec_field() -> None:
    crd = yaml.safe_load(reference.CRD_PATH.read_text())
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    text = reference.render(crd)

    def fields(node: dict, path: str) -> list[str]:
        found = []
        for key, child in (node.get("properties") or {}).items():
            found.append(f"{path}.{key}")
            found.extend(fields(child, f"{path}.{key}"))
        return found

    for field in fields(schema, "spec"):
        assert f"| `{field}` |" in text, field
    assert "| Replicas | `.spec.replicas` |" in text


def test_a_changed_default_changes_the_reference() -> None:
    crd = yaml.safe_load(reference.CRD_PATH.read_text())
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    before = reference.render(crd)
    spec["properties"]["buckets"]["default"] = 1024
    assert reference.render(crd) != before
