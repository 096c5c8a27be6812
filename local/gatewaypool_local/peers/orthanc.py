"""Orthanc, a real PACS, as a gateway: configured, stored and indexed in a temporary folder."""

from __future__ import annotations

import json
import shutil
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from gatewaypool_local.peers.dcmtk import DCMTK_MAX_PDU, dcmtk_env
from gatewaypool_local.peers.gateway import GatewayProcess, Received
from gatewaypool_local.peers.process import (
    DEFAULT_START_TIMEOUT,
    LOOPBACK,
    PeerError,
    free_port,
)
from gatewaypool_local.synth import dataset_offset


class Orthanc(GatewayProcess):
    """Orthanc with its configuration, storage and index in ``work_dir``.

    The DICOM server accepts every transfer syntax and unknown SOP classes,
    does not check the called AE title, and offers 128 kB PDUs; the REST API
    on ``http_port`` refuses non-loopback clients and needs no login.
    Storage compression is off, so the stored attachment is the DICOM file.
    Orthanc 1.10 has no option to bind to loopback only: both ports listen on
    all interfaces, which is why remote REST access is refused.

    Orthanc is not bit-preserving: it decodes each received dataset and
    serializes it again with DCMTK. Measured with Orthanc 1.10.1:

    - sequences and items of undefined length are stored with explicit
      lengths (a different byte stream, the same dataset);
    - a deflated dataset is inflated and deflated again at another
      compression level (same content once inflated, other bytes);
    - everything else tried came through byte for byte: explicit and implicit
      VR little endian, explicit VR big endian, RLE Lossless, explicit-length
      sequences (Enhanced CT functional groups), group length elements,
      private and UN elements, trailing padding, and a 1 GiB multi-frame
      instance.

    So compare bytes through Orthanc only for data without undefined lengths
    and not deflated, which includes everything :mod:`gatewaypool_local.synth`
    writes in its default transfer syntax. ``storescp --bit-preserving`` and
    the sink keep all of the above byte for byte.
    """

    kind = "orthanc"
    _BIT_PRESERVING = False

    def __init__(
        self,
        work_dir: Path | str,
        *,
        ae_title: str = "ORTHANC",
        port: int | None = None,
        http_port: int | None = None,
        host: str = LOOPBACK,
        executable: str | None = None,
        extra_config: Mapping[str, Any] | None = None,
        start_timeout: float = DEFAULT_START_TIMEOUT,
    ) -> None:
        super().__init__(
            work_dir, ae_title=ae_title, port=port, host=host, start_timeout=start_timeout
        )
        self._http_port = http_port if http_port is not None else free_port(host)
        self._executable = executable or shutil.which("Orthanc") or "/usr/sbin/Orthanc"
        self._extra_config = dict(extra_config or {})
        # Never through an HTTP proxy from the environment: it is loopback.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    @property
    def http_port(self) -> int:
        """Port of the REST API."""
        return self._http_port

    @property
    def url(self) -> str:
        """Base URL of the REST API."""
        return f"http://{self.host}:{self._http_port}"

    @property
    def config_path(self) -> Path:
        """The generated configuration file."""
        return self.work_dir / "config.json"

    def config(self) -> dict[str, Any]:
        """The configuration Orthanc is started with."""
        config: dict[str, Any] = {
            "Name": f"gatewaypool-{self.ae_title}",
            "StorageDirectory": str(self.work_dir / "storage"),
            "IndexDirectory": str(self.work_dir / "index"),
            "StorageCompression": False,
            "MaximumStorageSize": 0,
            "MaximumPatientCount": 0,
            "LuaScripts": [],
            "Plugins": [],
            "ConcurrentJobs": 1,
            "SaveJobs": False,
            "HttpServerEnabled": True,
            "HttpPort": self._http_port,
            "HttpDescribeErrors": True,
            "HttpCompressionEnabled": False,
            "HttpThreadsCount": 8,
            "OrthancExplorerEnabled": False,
            "WebDavEnabled": False,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "SslEnabled": False,
            "DicomServerEnabled": True,
            "DicomAet": self.ae_title,
            "DicomPort": self.port,
            "DicomCheckCalledAet": False,
            "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowStore": True,
            "DicomModalities": {},
            "OrthancPeers": {},
            "AcceptedTransferSyntaxes": ["1.2.840.10008.1.*"],
            "UnknownSopClassAccepted": True,
            "DicomScpTimeout": 60,
            "DicomThreadsCount": 4,
            "MaximumPduLength": DCMTK_MAX_PDU,
            "StorageAccessOnFind": "Never",
            "OverwriteInstances": True,
            "DeidentifyLogs": True,
        }
        config.update(self._extra_config)
        return config

    def _prepare(self) -> None:
        self.config_path.write_text(json.dumps(self.config(), indent=2))

    def _environment(self) -> dict[str, str]:
        return dcmtk_env()

    def _command(self) -> list[str]:
        return [self._executable, str(self.config_path)]

    def _is_ready(self) -> bool:
        try:
            self.rest("/system")
        except (OSError, PeerError):
            return False
        return super()._is_ready()

    def rest_bytes(self, path: str, *, timeout: float = 60.0) -> bytes:
        """GET ``path`` from the REST API and return the body."""
        try:
            with self._opener.open(self.url + path, timeout=timeout) as response:
                body: bytes = response.read()
                return body
        except urllib.error.HTTPError as exc:
            raise PeerError(f"{self!r}: GET {path} -> HTTP {exc.code}") from exc

    def rest(self, path: str, *, timeout: float = 60.0) -> Any:
        """GET ``path`` from the REST API and decode the JSON answer."""
        return json.loads(self.rest_bytes(path, timeout=timeout))

    def received_count(self) -> int:
        """``CountInstances`` from ``/statistics``."""
        return int(self.rest("/statistics")["CountInstances"])

    def storage_path(self, file_uuid: str) -> Path:
        """Where Orthanc's filesystem storage keeps attachment ``file_uuid``.

        ``<StorageDirectory>/<uuid[0:2]>/<uuid[2:4]>/<uuid>``; with storage
        compression off (as configured here) that file is the DICOM file.
        """
        return self.work_dir / "storage" / file_uuid[0:2] / file_uuid[2:4] / file_uuid

    def received(self) -> list[Received]:
        """All instances, with study UIDs and transfer syntaxes.

        Three bulk requests (studies, series, instances) plus one metadata
        request per instance for its transfer syntax. The bytes are read from
        Orthanc's storage file when it is where :meth:`storage_path` says
        (so a 1 GiB instance is hashed without loading it), else fetched from
        ``/instances/{id}/file`` when asked for.
        """
        studies = {
            study["ID"]: study["MainDicomTags"].get("StudyInstanceUID", "")
            for study in self.rest("/studies?expand")
        }
        series_study = {
            series["ID"]: studies.get(series["ParentStudy"], "")
            for series in self.rest("/series?expand")
        }
        result: list[Received] = []
        for instance in self.rest("/instances?expand"):
            orthanc_id = instance["ID"]
            metadata = self.rest(f"/instances/{orthanc_id}/metadata?expand")
            stored = self.storage_path(instance.get("FileUuid", "none"))
            on_disk = stored.is_file() and stored.stat().st_size == instance.get("FileSize")
            result.append(
                Received(
                    sop_instance_uid=instance["MainDicomTags"].get("SOPInstanceUID", ""),
                    study_uid=series_study.get(instance["ParentSeries"], ""),
                    transfer_syntax=metadata.get("TransferSyntax", ""),
                    path=stored if on_disk else None,
                    offset=dataset_offset(stored) if on_disk else 0,
                    fetch=None if on_disk else self._fetcher(orthanc_id),
                )
            )
        return result

    def _fetcher(self, orthanc_id: str) -> Callable[[], bytes]:
        def fetch() -> bytes:
            return self.rest_bytes(f"/instances/{orthanc_id}/file")

        return fetch
