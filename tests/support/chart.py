"""The Helm chart as tests render it: ``helm template`` by the real Helm engine (helm-python).

The chart tests read the rendered templates, the cluster tests apply them as a
user installs the chart, and the image test runs the command the chart's
Deployment gives: one rendering, so all three read the same objects.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import helm_python
import yaml

from support.crd import ROOT

__all__ = ["CHART", "chart", "objects_in", "render", "render_files"]

CHART = ROOT / "charts" / "gatewaypool"


@functools.cache
def chart() -> helm_python.Chart:
    """The chart, loaded once."""
    return helm_python.Chart.load(CHART)


def render_files(values: Mapping[str, Any], *, release: str, namespace: str) -> dict[str, str]:
    """``helm template`` of the chart with `values`: template path -> rendered text."""
    return chart().render(dict(values), name=release, namespace=namespace, is_install=True)


def objects_in(files: Mapping[str, str]) -> list[dict[str, Any]]:
    """The Kubernetes objects of rendered templates, in template order (NOTES.txt left out)."""
    return [
        doc
        for path, text in sorted(files.items())
        if path.endswith(".yaml")
        for doc in yaml.safe_load_all(text)
        if doc
    ]


def render(values: Mapping[str, Any], *, release: str, namespace: str) -> list[dict[str, Any]]:
    """The objects ``helm template`` makes of the chart with `values`."""
    return objects_in(render_files(values, release=release, namespace=namespace))
