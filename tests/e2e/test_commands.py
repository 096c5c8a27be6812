"""The README's commands as a user runs them: ``gatewaypool local`` and ``gatewaypool bench``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def gatewaypool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gatewaypool.cli", *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=cwd,
        check=False,
    )


def test_local_demo_reports_every_study_whole(tmp_path: Path) -> None:
    result = gatewaypool(
        "local",
        "--studies",
        "6",
        "--instances",
        "12",
        "--size",
        "64",
        "--work-dir",
        str(tmp_path / "demo"),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "split studies     0" in out
    assert "lost instances    0" in out
    assert "byte-identical    72/72" in out
    assert "result            OK" in out
    # One line per study, each naming exactly one gateway holding all 12.
    lines = [line for line in out.splitlines() if line.strip().startswith("1.2.826.")]
    assert len(lines) == 6
    for line in lines:
        assert line.split()[1:3] == ["12", "12"], line
        assert line.count("gw-") == 1, line


def test_bench_prints_its_figures(tmp_path: Path) -> None:
    result = gatewaypool(
        "bench",
        "--instances",
        "50",
        "--multiframe-mb",
        "16",
        "--rounds",
        "1",
        "--work-dir",
        str(tmp_path / "bench"),
        "--markdown",
        str(tmp_path / "bench.md"),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = (tmp_path / "bench.md").read_text()
    assert "| storescu → router → 3 storescp | 1 |" in report
    assert "| storescu → router → 3 storescp | 4 |" in report
    assert "added by the router p50" in report
    assert "multi-frame instance" in report
