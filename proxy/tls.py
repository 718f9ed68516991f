"""TLS termination on the listener: the certificate senders are shown, loaded from PEM files.

Owns ``tls.cert_file``, ``tls.key_file`` and ``tls.min_version`` (``tls.plain_http`` is the addon's). Files are read
once per load (start and every SIGHUP), checked (the key belongs to the first certificate), and turned into one
OpenSSL context that every new connection shares; a reload builds a new context, so connections already open
keep the certificate they were handshaken with. Errors are ``ValueError`` naming the file and what to fix.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from OpenSSL import SSL

PrivateKey = (
    rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey
)

# Mozilla's "intermediate" TLS 1.2 suites: forward secrecy and AEAD only (TLS 1.3 suites are OpenSSL's own).
CIPHERS_TLS12 = (
    b"ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:"
    b"ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
)
MIN_VERSIONS = {"1.2": SSL.TLS1_2_VERSION, "1.3": SSL.TLS1_3_VERSION}
# Every sender speaks HTTP/1.1; h2 is chosen only for a client that offers nothing else.
ALPN_PREFERENCE = (b"http/1.1", b"h2")


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise ValueError(f"cannot read {what} {path} ({e.strerror})") from None


def read_chain(path: Path) -> list[x509.Certificate]:
    """The PEM certificates in ``path``: the server certificate first, then its intermediates."""
    raw = _read(path, "certificate file")
    try:
        return x509.load_pem_x509_certificates(raw)
    except ValueError:
        raise ValueError(
            f"{path} holds no PEM certificate (expected -----BEGIN CERTIFICATE-----, the server certificate first)"
        ) from None


def read_key(path: Path) -> PrivateKey:
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


def check_pair(chain: list[x509.Certificate], key: PrivateKey, cert_file: Path, key_file: Path) -> None:
    if chain[0].public_key() != key.public_key():
        raise ValueError(
            f"the key in {key_file} does not belong to the first certificate in {cert_file} "
            "(put the server certificate first, then its intermediates)"
        )


def select_alpn(conn: SSL.Connection, offers: list[bytes]) -> bytes | SSL._NoOverlappingProtocols:
    for proto in ALPN_PREFERENCE:
        if proto in offers:
            return proto
    return SSL.NO_OVERLAPPING_PROTOCOLS


@dataclass(frozen=True, slots=True)
class ServerCertificate:
    """What one load of the certificate files produced."""

    context: SSL.Context
    not_after: float  # Unix time the server certificate expires
    subject: str


def server_certificate(cert_file: Path, key_file: Path, min_version: str = "1.2") -> ServerCertificate:
    chain = read_chain(cert_file)
    key = read_key(key_file)
    check_pair(chain, key, cert_file, key_file)
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    ctx.set_min_proto_version(MIN_VERSIONS[min_version])
    ctx.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_CIPHER_SERVER_PREFERENCE | SSL.OP_NO_RENEGOTIATION)
    ctx.set_cipher_list(CIPHERS_TLS12)
    try:
        ctx.use_certificate(chain[0])
        for intermediate in chain[1:]:
            ctx.add_extra_chain_cert(intermediate)
        ctx.use_privatekey(key)
        ctx.check_privatekey()
    except SSL.Error as e:
        # OpenSSL's security level refuses weak material, e.g. "ee key too small" for RSA below 2048 bits.
        reasons = "; ".join(str(r[-1]) for r in e.args[0] if isinstance(r, tuple)) if e.args else ""
        raise ValueError(
            f"OpenSSL refuses the certificate in {cert_file} or its key ({reasons or e}); "
            "use an RSA key of at least 2048 bits or an EC key, signed with SHA-256 or better"
        ) from None
    ctx.set_alpn_select_callback(select_alpn)
    leaf = chain[0]
    return ServerCertificate(ctx, leaf.not_valid_after_utc.timestamp(), leaf.subject.rfc4514_string())
