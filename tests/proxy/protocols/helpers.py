"""Test helpers: turn sender traffic into the ``Inbound`` the verify addon builds, and shared strategies."""

from __future__ import annotations

import contextlib
import functools
from urllib.parse import parse_qsl

from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import strategies as st

from proxy.protocols.base import Inbound, Protocol, Rejected, Verified
from proxy.tools.traffic import Outbound


def inbound(out: Outbound) -> Inbound:
    """Like ``addons.verify.inbound_of``: first value of each query name, URL-decoded; header names lower-cased."""
    path, _, query = out.target.partition("?")
    params: dict[str, str] = {}
    for k, v in parse_qsl(query, keep_blank_values=True):
        params.setdefault(k, v)
    return Inbound(out.method, path, params, {k.lower(): v for k, v in out.headers}, out.body)


def rejected(protocol: Protocol, req: Inbound | Outbound, now: float) -> Rejected:
    """The rejection ``req`` earns (fails the test if it is accepted)."""
    try:
        protocol.verify(req if isinstance(req, Inbound) else inbound(req), now)
    except Rejected as e:
        return e
    raise AssertionError("the request was accepted")


def accepted(protocol: Protocol, req: Inbound | Outbound, now: float) -> Verified:
    return protocol.verify(req if isinstance(req, Inbound) else inbound(req), now)


# Text as mitmproxy may hand it over: any code point, lone surrogates included (surrogateescape'd bytes).
wild_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=80)
header_names = st.sampled_from(
    [
        "content-type",
        "wechatpay-timestamp",
        "wechatpay-nonce",
        "wechatpay-signature",
        "wechatpay-serial",
        "wechatpay-signature-type",
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
        "x-signature",
    ]
)
query_names = st.sampled_from(
    ["signature", "timestamp", "nonce", "echostr", "encrypt_type", "msg_signature", "openid", "sign", "a"]
)
bodies = st.one_of(
    st.binary(max_size=300),
    st.sampled_from(
        [
            b"<xml><Encrypt><![CDATA[abc]]></Encrypt></xml>",
            b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "b">]><xml>&a;</xml>',
            b'{"encrypt": "abc"}',
            b'{"resource": {"algorithm": "AEAD_AES_256_GCM", "ciphertext": "AAAA", "nonce": "n"}}',
            b"<xml><return_code>SUCCESS</return_code><req_info>AAAA</req_info></xml>",
            b"<xml><return_code>SUCCESS</return_code><sign>X</sign></xml>",
            b"[" * 5000,
            b'{"a": 1e999999}',
        ]
    ),
)
requests = st.builds(
    Inbound,
    method=st.sampled_from(["GET", "POST", "PUT"]),
    path=st.just("/cb"),
    query=st.dictionaries(query_names, wild_text, max_size=6),
    headers=st.dictionaries(header_names, wild_text, max_size=8),
    body=bodies,
)


@functools.cache
def rsa_key(which: int) -> rsa.RSAPrivateKey:
    """A 2048-bit RSA key made at test time (never stored); ``which`` tells independent keys apart."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def verify_or_reject(protocol: Protocol, req: Inbound, now: float) -> None:
    """Run ``verify``; only :class:`Rejected` may come out (anything else fails the fuzz test)."""
    with contextlib.suppress(Rejected):
        protocol.verify(req, now)
