"""TLS termination on the listener: the certificate senders are shown, loaded from PEM files.

Owns ``tls.min_version`` (``tls.plain_http`` is the addon's). ``tls.cert_file`` and ``tls.key_file`` are read once
per load (start and every SIGHUP) when the configuration is validated (:mod:`proxy.config.certificates`); what was
read and checked is turned here into one OpenSSL context that every new connection shares. A reload builds a new
context, so connections already open keep the certificate they were handshaken with. Errors are ``ValueError``
naming the file and what to fix.
"""

from __future__ import annotations

from dataclasses import dataclass

from OpenSSL import SSL

from proxy.config.certificates import CertifiedKey

# Mozilla's "intermediate" TLS 1.2 suites: forward secrecy and AEAD only (TLS 1.3 suites are OpenSSL's own).
CIPHERS_TLS12 = (
    b"ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:"
    b"ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
)
MIN_VERSIONS = {"1.2": SSL.TLS1_2_VERSION, "1.3": SSL.TLS1_3_VERSION}
# Every sender speaks HTTP/1.1; h2 is chosen only for a client that offers nothing else.
ALPN_PREFERENCE = (b"http/1.1", b"h2")


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


def server_certificate(certified: CertifiedKey, min_version: str = "1.2") -> ServerCertificate:
    """The OpenSSL context serving ``certified`` (the files as ``tls`` validation read them)."""
    chain, key, cert_file = certified.chain, certified.key, certified.cert_file
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
