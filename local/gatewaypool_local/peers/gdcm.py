"""GDCM's ``gdcmscu`` as a sender (C-ECHO and C-STORE), read from its debug output."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

#: PDU types (PS3.8 9.3.1) as ``gdcmscu --debug`` names what it received.
_PDU_NAMES = {
    2: "A-ASSOCIATE-AC",
    3: "A-ASSOCIATE-RJ",
    4: "P-DATA-TF",
    6: "A-RELEASE-RP",
    7: "A-ABORT",
}
_GDCM_PDU = re.compile(r"^PDU code: (\d+)$", re.MULTILINE)
#: One command element of a message dump: ``(0000,0900) ?? (US) 0  # 2,1 Status``.
_GDCM_ELEMENT = re.compile(r"^\(0000,([0-9a-f]{4})\) \?\? \((\w\w)\) (.*?)\s+#")
_C_STORE_RSP = 0x8001
_C_ECHO_RSP = 0x8030


@dataclass(frozen=True)
class GdcmScuResult:
    """What ``gdcmscu`` received, read from its debug output.

    GDCM 3.0.21 (Debian 12) ``gdcmscu`` ends every run with SIGABRT
    ("ProtocolStream as nullptr is invalid") once its connection is closed,
    after a release as after a refusal, whatever the peer: its exit code
    says nothing. What it received says it all: the PDUs, and every
    response's status.

    Attributes
    ----------
    pdus : tuple[str, ...]
        The PDUs it received, in order (``A-ASSOCIATE-AC``, ``P-DATA-TF``,
        ``A-RELEASE-RP``, ``A-ASSOCIATE-RJ``, ``A-ABORT``).
    store_statuses : dict[str, int]
        Each C-STORE response's status by Affected SOP Instance UID.
    echo_status : int or None
        The C-ECHO response's status, if one came.
    output : str
        Everything it printed, for a failing test's message.
    """

    pdus: tuple[str, ...]
    store_statuses: dict[str, int]
    echo_status: int | None
    output: str = field(repr=False)

    @property
    def released(self) -> bool:
        """The association was established and released by both sides."""
        return self.pdus[:1] == ("A-ASSOCIATE-AC",) and self.pdus[-1:] == ("A-RELEASE-RP",)


def _gdcm_responses(output: str) -> list[dict[int, str]]:
    """The command sets ``gdcmscu --debug`` printed (each response is printed twice)."""
    commands: list[dict[int, str]] = []
    current: dict[int, str] = {}
    for line in output.splitlines():
        match = _GDCM_ELEMENT.match(line)
        if match is not None:
            value = match.group(3).strip()
            current[int(match.group(1), 16)] = value.strip("[]") if value.startswith("[") else value
            continue
        if current:
            commands.append(current)
            current = {}
    if current:
        commands.append(current)
    return commands


def parse_gdcmscu(output: str) -> GdcmScuResult:
    """Read ``gdcmscu --debug`` output: the PDUs and responses it received."""
    stores: dict[str, int] = {}
    echo_status: int | None = None
    for command in _gdcm_responses(output):
        field_value = int(command.get(0x0100, "0"))
        status = command.get(0x0900)
        if status is None:
            continue
        if field_value == _C_STORE_RSP:
            stores[command.get(0x1000, "")] = int(status)
        elif field_value == _C_ECHO_RSP:
            echo_status = int(status)
    pdus = tuple(_PDU_NAMES.get(int(code), f"type {code}") for code in _GDCM_PDU.findall(output))
    return GdcmScuResult(pdus=pdus, store_statuses=stores, echo_status=echo_status, output=output)


def gdcmscu(
    host: str,
    port: int,
    *,
    called_ae: str,
    calling_ae: str = "GDCMSCU",
    files: Sequence[Path | str] = (),
    timeout: float = 120.0,
) -> GdcmScuResult:
    """Run GDCM ``gdcmscu`` once: C-ECHO without ``files``, C-STORE of them on one association.

    For C-STORE it proposes one context per SOP class and transfer syntax
    of the files, each in the file's own transfer syntax only (it never
    converts, so it cannot fall back to another), and sends each file as it
    is. It does not look at which contexts were accepted: a file whose
    context was refused is sent anyway, and the peer aborts.
    """
    mode = ["--store", *(arg for f in files for arg in ("-i", str(f)))] if files else ["--echo"]
    cmd = [
        "gdcmscu",
        "--debug",
        *mode,
        "--aetitle",
        calling_ae,
        "--call",
        called_ae,
        "-H",
        host,
        "-p",
        str(port),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    return parse_gdcmscu(done.stdout + done.stderr)
