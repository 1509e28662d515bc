"""The DTLS certificate of a media worker: ECDSA P-256, self-signed, identified by its SDP fingerprint.

WebRTC peers authenticate DTLS with the certificate fingerprint carried in SDP (``a=fingerprint``,
RFC 8122), never with a CA chain, so one self-signed certificate per installation is enough. It is
generated on first run and kept as PEM under a directory so that restarts keep the same fingerprint::

    cert = DtlsCertificate.load_or_create("/var/lib/callpath/dtls")
    media.add_attribute("fingerprint", cert.sdp_fingerprint)   # "sha-256 AB:CD:..."
"""
from __future__ import annotations

import datetime
import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

__all__ = [
    "CERTIFICATE_FILE",
    "FINGERPRINT_ALGORITHMS",
    "KEY_FILE",
    "DtlsCertificate",
    "certificate_fingerprint",
    "fingerprint_matches",
    "parse_sdp_fingerprint",
]

CERTIFICATE_FILE = "dtls-certificate.pem"
KEY_FILE = "dtls-key.pem"

FINGERPRINT_ALGORITHMS: dict[str, hashes.HashAlgorithm] = {
    "sha-1": hashes.SHA1(),
    "sha-224": hashes.SHA224(),
    "sha-256": hashes.SHA256(),
    "sha-384": hashes.SHA384(),
    "sha-512": hashes.SHA512(),
}
"""Hash function names of RFC 8122 (``a=fingerprint``) that we can check."""

_RENEW_BEFORE = datetime.timedelta(days=7)


def certificate_fingerprint(certificate: x509.Certificate, algorithm: str = "sha-256") -> str:
    """The fingerprint as SDP writes it: upper-case hex pairs joined by colons (``AB:CD:...``)."""
    digest = certificate.fingerprint(FINGERPRINT_ALGORITHMS[algorithm.lower()])
    return ":".join(f"{b:02X}" for b in digest)


def parse_sdp_fingerprint(value: str) -> tuple[str, str]:
    """Split an ``a=fingerprint`` value ``"sha-256 ab:cd:..."`` into ``("sha-256", "AB:CD:...")``."""
    parts = value.split()
    if len(parts) != 2:
        raise ValueError(f"a=fingerprint is not '<hash-func> <fingerprint>': {value!r}")
    algorithm, fingerprint = parts[0].lower(), parts[1].upper()
    octets = fingerprint.split(":")
    if not octets or any(len(o) != 2 or any(c not in "0123456789ABCDEF" for c in o) for o in octets):
        raise ValueError(f"a=fingerprint value is not colon-separated hex: {value!r}")
    return algorithm, fingerprint


def fingerprint_matches(certificate: x509.Certificate, fingerprints: list[tuple[str, str]]) -> bool:
    """True if the certificate matches every fingerprint whose algorithm we know (and there is one).

    Follows RFC 8122 §5 as aiortc does: fingerprints with unknown hash functions are ignored, but at
    least one must be checkable and all checkable ones must match.
    """
    checked = 0
    for algorithm, value in fingerprints:
        algorithm = algorithm.lower()
        if algorithm not in FINGERPRINT_ALGORITHMS:
            continue
        checked += 1
        if not hmac.compare_digest(
            certificate_fingerprint(certificate, algorithm).encode(), value.upper().encode()
        ):
            return False
    return checked > 0


@dataclass(frozen=True)
class DtlsCertificate:
    """An ECDSA P-256 private key with its self-signed X.509 certificate."""

    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate

    @classmethod
    def generate(cls, *, common_name: str | None = None, days: int = 365) -> DtlsCertificate:
        """A fresh key and a self-signed certificate valid from yesterday for ``days`` days."""
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name(
            [x509.NameAttribute(x509.NameOID.COMMON_NAME, common_name or secrets.token_hex(16))]
        )
        now = datetime.datetime.now(tz=datetime.timezone.utc)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=days))
            .sign(key, hashes.SHA256())
        )
        return cls(key, certificate)

    @classmethod
    def from_pem(cls, certificate_pem: bytes, key_pem: bytes) -> DtlsCertificate:
        """Load a certificate and its (unencrypted) ECDSA key from PEM."""
        key = serialization.load_pem_private_key(key_pem, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError("the DTLS key is not an ECDSA key")
        certificate = x509.load_pem_x509_certificate(certificate_pem)
        if certificate.public_key().public_numbers() != key.public_key().public_numbers():
            raise ValueError("the DTLS certificate does not belong to the key")
        return cls(key, certificate)

    @classmethod
    def load_or_create(cls, directory: str | os.PathLike[str], *, days: int = 365) -> DtlsCertificate:
        """Load ``dtls-certificate.pem``/``dtls-key.pem`` from ``directory``, creating them if absent.

        A certificate that has expired (or expires within a week) is replaced by a new one.
        """
        path = Path(directory)
        cert_path, key_path = path / CERTIFICATE_FILE, path / KEY_FILE
        if cert_path.exists() and key_path.exists():
            loaded = cls.from_pem(cert_path.read_bytes(), key_path.read_bytes())
            now = datetime.datetime.now(tz=datetime.timezone.utc)
            if loaded.certificate.not_valid_after_utc - _RENEW_BEFORE > now:
                return loaded
        created = cls.generate(days=days)
        created.save(path)
        return created

    def save(self, directory: str | os.PathLike[str]) -> None:
        """Write the PEM files (the key with mode 0600), atomically replacing older ones."""
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        for name, data, mode in (
            (KEY_FILE, self.key_pem, 0o600),
            (CERTIFICATE_FILE, self.certificate_pem, 0o644),
        ):
            tmp = path / f".{name}.{secrets.token_hex(4)}.tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(tmp, path / name)

    @property
    def certificate_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    @property
    def expires(self) -> datetime.datetime:
        return self.certificate.not_valid_after_utc

    def fingerprint(self, algorithm: str = "sha-256") -> str:
        """``AB:CD:...`` of the certificate with ``algorithm``."""
        return certificate_fingerprint(self.certificate, algorithm)

    @property
    def sdp_fingerprint(self) -> str:
        """The ``a=fingerprint`` value: ``"sha-256 AB:CD:..."``."""
        return f"sha-256 {self.fingerprint('sha-256')}"
