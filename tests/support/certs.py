"""Certificate authorities and certificates for the TLS tests, made on the spot.

Files are written as a ``kubernetes.io/tls`` Secret volume holds them
(``tls.crt`` with the chain, ``tls.key``, ``ca.crt``), each set in a folder
of its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import trustme
from cryptography import x509


@dataclass(frozen=True)
class Issued:
    """A certificate chain and key on disk."""

    cert: Path
    key: Path

    def serial(self) -> int:
        return x509.load_pem_x509_certificate(self.cert.read_bytes()).serial_number

    def subject(self) -> str:
        return x509.load_pem_x509_certificate(self.cert.read_bytes()).subject.rfc4514_string()


class TestCA:
    """A CA whose bundle is ``<folder>/ca.crt``; :meth:`issue` writes leaf certificates."""

    __test__ = False  # not a pytest test class

    def __init__(self, folder: Path, *, name: str = "GatewayPool Test CA") -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self._ca = trustme.CA(organization_name=name)
        self.bundle = folder / "ca.crt"
        self._ca.cert_pem.write_to_path(str(self.bundle))

    def issue(
        self,
        name: str,
        *identities: str,
        common_name: str | None = None,
        organization: str | None = None,
        unit: str | None = None,
    ) -> Issued:
        """Write ``<folder>/<name>/tls.crt`` and ``tls.key`` for `identities` (DNS names, IPs).

        Without `unit`, trustme names a random organizational unit, which
        makes every subject unique.
        """
        leaf = self._ca.issue_cert(
            *(identities or ("localhost", "127.0.0.1")),
            common_name=common_name,
            organization_name=organization,
            organization_unit_name=unit,
        )
        where = self.folder / name
        where.mkdir(parents=True, exist_ok=True)
        issued = Issued(cert=where / "tls.crt", key=where / "tls.key")
        issued.cert.write_bytes(b"".join(pem.bytes() for pem in leaf.cert_chain_pems))
        issued.key.write_bytes(leaf.private_key_pem.bytes())
        return issued
