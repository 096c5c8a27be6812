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
    # It ends with `gatewaypool locate` for its first study, and the router's
    # record agrees with where the gateways stored it.
    uid, gateway = lines[0].split()[0], lines[0].split()[3]
    assert f"$ gatewaypool locate {uid} --router http://127.0.0.1:" in out
    assert f"went to   {gateway} (12), by 1 of 1 routers" in out
    assert f"  {gateway}: 12 instances " in out


def test_bench_prints_its_figures(tmp_path: Path) -> None:
    """The whole bench, tiny: every case runs and every figure is stated.

    Two workers, so the figures that cover the router's process tree
    (CPU, peak RSS per worker) are read from more than one process. The
    figures themselves mean nothing at this size and are not checked.
    """
    markdown = tmp_path / "bench.md"
    markdown.write_text("# History\n")
    result = gatewaypool(
        "bench",
        "--instances",
        "12",
        "--study-size",
        "3",
        "--size",
        "64",
        "--latency-instances",
        "20",
        "--multiframe-mb",
        "8",
        "--rounds",
        "1",
        "--workers",
        "2",
        "--work-dir",
        str(tmp_path / "bench"),
        "--markdown",
        str(markdown),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = markdown.read_text()
    assert report.startswith("# History\n\n### ")  # appended: the history is kept
    assert "Command: `gatewaypool bench --instances 12 " in report
    assert "Machine: " in report
    assert "`--workers 2` (2 worker processes and a supervisor)" in report
    assert "| storescu → router → 3 storescp | 1 |" in report
    assert "| storescu per study → its gateway (limit) | 4 |" in report
    assert "| storescu → router → 3 storescp | 4 |" in report
    assert "added by the router p50" in report
    assert "| router CPU per GB forwarded, 4 associations |" in report
    assert "| added latency per C-STORE, p50 |" in report
    assert "| peak RSS per worker, 8 MiB multi-frame |" in report
    # The fast-gateway case (issue 23), with the bare forwarder beside the router.
    assert "| storescu → router → 3 storescp `--ignore` | 4 |" in report
    assert "| storescu → bare splice forwarder → 3 storescp `--ignore` | 1 |" in report
    assert "as a multiple of the bare forwarder's" in report
    # Both workers and the supervisor were read, and the total sums them.
    rss = next(line for line in report.splitlines() if line.startswith("Peak RSS"))
    assert rss.count("supervisor") == 2 and rss.count("workers") == 2, rss
    assert "total" in rss
    # What was printed is what was written.
    assert report.removeprefix("# History\n\n") in result.stdout
