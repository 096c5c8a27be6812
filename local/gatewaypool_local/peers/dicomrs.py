"""dicom-rs (Rust) ``dicom-storescp`` and ``dicom-storescu``.

Network code shared with neither DCMTK nor pynetdicom.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from gatewaypool_local.peers.dcmtk import StoreSCP
from gatewaypool_local.peers.process import DEFAULT_START_TIMEOUT

#: Folder holding the dicom-rs programs (``./dev.sh`` builds them there from
#: crates.io); without it they are looked up on ``PATH``.
DICOM_RS_ENV = "GATEWAYPOOL_DICOM_RS"


def dicom_rs_program(name: str) -> str:
    """The path of dicom-rs program ``name`` (``dicom-storescp``, ``dicom-storescu``)."""
    folder = os.environ.get(DICOM_RS_ENV)
    return str(Path(folder) / name) if folder else name


class DicomRsStoreSCP(StoreSCP):
    """dicom-rs ``dicom-storescp`` (Rust) with its defaults, as a site runs it.

    It accepts the storage SOP classes of its own table (``promiscuous``:
    any), in every transfer syntax dicom-rs knows (``uncompressed_only``:
    the native ones only), and writes each instance to
    ``<work_dir>/received/<SOP Instance UID>.dcm`` once it has all of it.
    It listens on every address (it has no option to choose one); tests
    reach it on loopback. Files still open are left out, as for
    :class:`StoreSCP`.
    """

    kind = "dicom-storescp"
    #: It parses each data set and writes it anew: byte-identical for the
    #: tests' data, but not a promise.
    _BIT_PRESERVING = False

    def __init__(
        self,
        work_dir: Path | str,
        *,
        ae_title: str = "DICOMRS",
        port: int | None = None,
        uncompressed_only: bool = False,
        promiscuous: bool = False,
        start_timeout: float = DEFAULT_START_TIMEOUT,
    ) -> None:
        super().__init__(work_dir, ae_title=ae_title, port=port, start_timeout=start_timeout)
        self._flags = [
            *(["--uncompressed-only"] if uncompressed_only else []),
            *(["--promiscuous"] if promiscuous else []),
        ]

    def _command(self) -> list[str]:
        return [
            dicom_rs_program("dicom-storescp"),
            # Its own AE title, despite the option's name.
            "--calling-ae-title",
            self.ae_title,
            "-p",
            str(self.port),
            "-o",
            str(self.out_dir),
            *self._flags,
        ]

    def _environment(self) -> dict[str, str]:
        return dict(os.environ)


#: A command element as ``dicom-storescu --verbose`` prints a response:
#: ``(0000,0900) Status   US (1,  2 bytes): 0``.
_DICOM_RS_ELEMENT = re.compile(r"^\(0000,([0-9A-Fa-f]{4})\) \w+\s+(\w\w) \([^)]*\): (.*)$")


@dataclass(frozen=True)
class DicomRsStoreResult:
    """What ``dicom-storescu`` was answered, read from its verbose output.

    Attributes
    ----------
    returncode : int
        Its exit code (0 even when it skipped a file it could not send).
    store_statuses : dict[str, int]
        Each C-STORE response's status by Affected SOP Instance UID.
    output : str
        Everything it printed, for a failing test's message.
    """

    returncode: int
    store_statuses: dict[str, int]
    output: str = field(repr=False)


def parse_dicom_rs_storescu(output: str) -> dict[str, int]:
    """Each C-STORE response's status by SOP Instance UID, from ``dicom-storescu -v``."""
    statuses: dict[str, int] = {}
    status: int | None = None
    for line in output.splitlines():
        match = _DICOM_RS_ELEMENT.match(line.strip())
        if match is None:
            continue
        element, value = int(match.group(1), 16), match.group(3).strip()
        if element == 0x0900:
            status = int(value)
        elif element == 0x1000 and status is not None:
            statuses[value.strip('"')] = status
            status = None
    return statuses


def dicom_rs_storescu(
    host: str,
    port: int,
    files: Iterable[Path | str],
    *,
    calling_ae: str = "DICOMRS-SCU",
    called_ae: str = "ANY-SCP",
    timeout: float = 120.0,
) -> DicomRsStoreResult:
    """Send ``files`` with dicom-rs ``dicom-storescu`` on one association.

    It proposes each file's SOP class in the file's transfer syntax and, for
    those it can decode, in the uncompressed ones too; it sends each file as
    it is, or converted to what the acceptor chose. A file no accepted
    context fits is skipped ("No matching presentation contexts"): this
    build has no JPEG-LS or JPEG 2000 decoder, so such a file goes only
    where its own transfer syntax is accepted.
    """
    cmd = [
        dicom_rs_program("dicom-storescu"),
        "--verbose",
        "--calling-ae-title",
        calling_ae,
        "--called-ae-title",
        called_ae,
        f"{host}:{port}",
        *(str(f) for f in files),
    ]
    env = {**os.environ, "NO_COLOR": "1"}
    done = subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, env=env, check=False
    )
    output = done.stdout + done.stderr
    return DicomRsStoreResult(
        returncode=done.returncode, store_statuses=parse_dicom_rs_storescu(output), output=output
    )
