"""The GatewayPool CRD as tests read it, and the API server's defaulting of it.

One copy of the contract's defaults: the CRD's ``default`` keywords. Tests
that need a spec as the API server would store it default it here instead of
writing the defaulted spec out by hand.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CRD_PATH = ROOT / "crds" / "gatewaypool.io_gatewaypools.yaml"


@functools.cache
def _parsed_crd() -> dict[str, Any]:
    crd: dict[str, Any] = yaml.safe_load(CRD_PATH.read_text())
    return crd


def load_crd() -> dict[str, Any]:
    """A fresh copy of the CRD, free for a test to change."""
    return copy.deepcopy(_parsed_crd())


def version_of(crd: Mapping[str, Any]) -> dict[str, Any]:
    (version,) = crd["spec"]["versions"]
    return dict(version)


def root_schema() -> dict[str, Any]:
    """The openAPIV3Schema, shared between tests: read it, never change it."""
    schema: dict[str, Any] = version_of(_parsed_crd())["schema"]["openAPIV3Schema"]
    return schema


def spec_schema() -> dict[str, Any]:
    """The schema of ``spec``, shared between tests: read it, never change it."""
    schema: dict[str, Any] = root_schema()["properties"]["spec"]
    return schema


def apply_defaults(value: Any, schema: Mapping[str, Any]) -> Any:
    """Return ``value`` with the schema's defaults filled in, as the API server does.

    A declared property that is missing (or null where the schema does not say
    ``nullable``) gets a copy of its default; then every property, the
    defaulted ones included, is defaulted in turn, so ``router: {}`` gains
    ``router.replicas``. An absent object without a default stays absent, so
    ``storage.mountPath`` appears only when ``storage`` is set.
    """
    value = copy.deepcopy(value)
    _default_in_place(value, schema)
    return value


def _default_in_place(value: Any, schema: Mapping[str, Any]) -> None:
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        for name, prop in properties.items():
            missing = name not in value or (value[name] is None and not prop.get("nullable"))
            if "default" in prop and missing:
                value[name] = copy.deepcopy(prop["default"])
        extra = schema.get("additionalProperties")
        for name, child in value.items():
            if name in properties:
                _default_in_place(child, properties[name])
            elif isinstance(extra, dict):
                _default_in_place(child, extra)
    elif isinstance(value, list) and "items" in schema:
        for item in value:
            _default_in_place(item, schema["items"])
