"""The listener's certificate and key files (``tls.cert_file``, ``tls.key_file``), read once per load.

Validating ``tls`` reads both PEM files, checks that the key belongs to the first certificate, and keeps what it
read as a :class:`CertifiedKey` on the validated configuration; :mod:`proxy.tls` builds the OpenSSL context from
that value without opening the files again, so what was checked is what is served. Errors are ``ValueError``
naming the file and what to fix; they never quote the files' contents.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

PrivateKey = (
    rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey
)


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise ValueError(f"cannot read {what} {path} ({e.strerror})") from None


def read_chain(path: Path) -> tuple[x509.Certificate, ...]:
    """The PEM certificates in ``path``: the server certificate first, then its intermediates."""
    raw = _read(path, "certificate file")
    try:
        return tuple(x509.load_pem_x509_certificates(raw))
    except ValueError:
        raise ValueError(
            f"{path} holds no PEM certificate (expected -----BEGIN CERTIFICATE-----, the server certificate first)"
        ) from None


def read_key(path: Path) -> PrivateKey:
    """The unencrypted PEM private key in ``path``, of a type that can serve TLS."""
    raw = _read(path, "key file")
    try:
        key = serialization.load_pem_private_key(raw, password=None)
    except TypeError:
        raise ValueError(f"{path} is encrypted; wxgate needs the PEM private key unencrypted") from None
    except ValueError:
        raise ValueError(f"{path} holds no PEM private key (expected -----BEGIN PRIVATE KEY-----)") from None
    if not isinstance(key, PrivateKey):
        raise ValueError(f"{path}: {type(key).__name__} keys cannot serve TLS; use an RSA or EC key")
    return key


@dataclass(frozen=True, slots=True, eq=False)
class CertifiedKey:
    """A certificate chain and the private key of its first certificate, as read from their files."""

    cert_file: Path
    key_file: Path
    chain: tuple[x509.Certificate, ...]
    key: PrivateKey

    def __post_init__(self) -> None:
        if self.chain[0].public_key() != self.key.public_key():
            raise ValueError(
                f"the key in {self.key_file} does not belong to the first certificate in {self.cert_file} "
                "(put the server certificate first, then its intermediates)"
            )

    def __eq__(self, other: object) -> bool:
        # private keys compare by identity; two reads of the same files are equal
        return isinstance(other, CertifiedKey) and (self.cert_file, self.key_file, self.chain) == (
            other.cert_file,
            other.key_file,
            other.chain,
        )

    __hash__ = None  # type: ignore[assignment]
