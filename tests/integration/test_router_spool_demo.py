"""``gatewaypool local --spool``: the demo's gateway outage, as a user runs it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path


def test_the_demo_with_a_spool_rides_out_a_gateway_stopped_mid_run(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "gatewaypool.cli",
            "local",
            "--spool",
            "--outage",
            "3",
            "--studies",
            "4",
            "--instances",
            "24",
            "--size",
            "128",
            "--work-dir",
            str(tmp_path / "demo"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        check=False,
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "outage: gw-2 stopped holding" in out
    assert "sender failures   0" in out
    assert "lost instances    0" in out
    assert "byte-identical    96/96" in out
    spool = re.search(r"spool +(\d+) instances spooled, (\d+) forwarded, \d+ resent, 0 left", out)
    assert spool is not None, out
    assert int(spool[1]) > 0  # the outage met instances on their way
    assert int(spool[2]) == int(spool[1])
    assert "result            OK" in out
