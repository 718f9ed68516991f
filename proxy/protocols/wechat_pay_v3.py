"""WeChat Pay API v3 notifications (JSON): RSA signature, freshness, probes, ``resource`` decryption, replies.

PROTOCOLS.md §4. Checks, in order: ``Wechatpay-Timestamp/-Nonce/-Signature/-Serial`` present;
``Wechatpay-Signature-Type`` absent or ``WECHATPAY2-SHA256-RSA2048``; a ``WECHATPAY/SIGNTEST/`` probe is refused
as ``signature_probe`` (§4.7, never forwarded); ``|now - ts| <= window`` both ways; the key chosen by
``Wechatpay-Serial`` among platform certificates (serials compared as numbers, so case and leading zeros do not
matter) and ``PUB_KEY_ID_…`` public keys, several at once for migrations; RSASSA-PKCS1-v1_5/SHA-256 over
``ts\\nnonce\\nRAW_BODY\\n``; ``resource.algorithm == AEAD_AES_256_GCM`` and its AES-GCM decryption (AAD may be
""); ``mchid``/``sp_mchid`` (and ``appid``/``sp_appid`` when configured) of the plaintext match when present —
notices such as complaints carry none. The replay key is ``(timestamp, nonce)`` for twice the window.

``decrypt_for_backend``: the backend receives the notice as sent with ``resource`` replaced by the decrypted
plaintext *object* (every other field verbatim, compact JSON). A legacy backend reads ``resource.out_trade_no``
instead of decrypting; the signature no longer matches that body, so such a backend must not verify it again.

Dedup key (one string): the business key when the plaintext has one, both parts present — ``refund_id``/
``out_refund_no`` + ``refund_status``, else ``transaction_id``/``out_trade_no`` + ``trade_state``, a merchant's
own number scoped by the merchants the notice names (a partner's sub-merchants may number alike) — otherwise
``event_type`` + the digest of the decrypted resource (profit sharing, coupons, pay-score…). Never the notification
``id``: whether WeChat Pay keeps it across retries is unverified (§4.6), and a key containing ``id`` would only be
as stable as ``id``.

Replies: success 204 without a body (a backend's 200 empty stays 200); rejection 401 (authentication) or 400
(content) with ``{"code":"FAIL","message":"失败"}`` whatever the reason; backend failure 500 + the same JSON. A
backend 2xx whose JSON ``code`` is ``FAIL`` or ``ERROR``, or whose body is an HTML page, is a backend failure
(:meth:`WechatPayV3.is_backend_failure`); an empty body or any other 2xx is a success.

A v2 XML notice at this route (console refunds, §3.6; sniffed by ``<`` body or xml content type) is verified by
the v2 protocol built from the route's ``api_key`` (refund notices included: documented outer fields only, the
message from the decrypted ``req_info``), and its dedup key and replies follow v2.

Reasons: ``method_not_allowed``, ``missing_header``, ``unsupported_signature_type``, ``signature_probe``,
timestamp reasons, ``unknown_serial``, ``bad_signature``, ``malformed_json``/``empty_body``, ``bad_resource``,
``unsupported_algorithm``, ``bad_base64``, ``decrypt_failed``, ``wrong_mch_id``, ``wrong_app_id``,
``v2_notice_not_configured`` (+ the v2 reasons).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from proxy.protocols import idempotency, payload
from proxy.protocols.base import (
    JSON_CONTENT_TYPES,
    XML_CONTENT_TYPES,
    Inbound,
    Protocol,
    Rejected,
    Reply,
    Verified,
    check_timestamp,
    constant_time_equal,
)
from proxy.protocols.wechat_pay_v2 import WechatPayV2, is_html, return_code

SIGNATURE_TYPE = "WECHATPAY2-SHA256-RSA2048"
PROBE_PREFIX = "WECHATPAY/SIGNTEST/"
ALGORITHM = "AEAD_AES_256_GCM"
PUB_KEY_PREFIX = "PUB_KEY_ID_"
HEADERS = ("wechatpay-timestamp", "wechatpay-nonce", "wechatpay-signature", "wechatpay-serial")
JSON_CONTENT_TYPE = "application/json; charset=utf-8"
FAILURE_CODES = ("FAIL", "ERROR")
FAIL_JSON = json.dumps({"code": "FAIL", "message": "失败"}, ensure_ascii=False).encode()
_HEX = re.compile(r"^[0-9A-Fa-f]{1,64}$")


@dataclass(frozen=True, slots=True)
class PlatformKey:
    """A key WeChat Pay signs with: a platform certificate (``key_id`` = its serial, upper-case hex without
    leading zeros) or a WeChat Pay public key (``key_id`` = ``PUB_KEY_ID_…``)."""

    key_id: str
    public_key: rsa.RSAPublicKey = field(repr=False)


@dataclass(frozen=True, slots=True)
class V2Notice:
    """``seal_context`` marker: this request was a v2 XML notice verified by the v2 protocol."""


def serial_key(serial: str) -> str | None:
    """The lookup form of a ``Wechatpay-Serial``: ``PUB_KEY_ID_…`` as is, a hex serial as canonical upper hex."""
    if serial.startswith(PUB_KEY_PREFIX):
        return serial
    if not _HEX.match(serial):
        return None
    return format(int(serial, 16), "X")


def load_certificate(pem: bytes) -> PlatformKey:
    """A platform certificate (PEM) -> its serial and RSA public key; ValueError if it is not one."""
    cert = x509.load_pem_x509_certificate(pem)
    key = cert.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        raise ValueError("a WeChat Pay platform certificate holds an RSA key")
    return PlatformKey(format(cert.serial_number, "X"), key)


def load_public_key(key_id: str, pem: bytes) -> PlatformKey:
    """A WeChat Pay public key (PEM ``PUBLIC KEY``) under its ``PUB_KEY_ID_…``; ValueError if it is not one."""
    if not key_id.startswith(PUB_KEY_PREFIX):
        raise ValueError(f"a WeChat Pay public key id starts with {PUB_KEY_PREFIX}")
    key = serialization.load_pem_public_key(pem)
    if not isinstance(key, rsa.RSAPublicKey):
        raise ValueError("a WeChat Pay public key is an RSA key")
    return PlatformKey(key_id, key)


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


def signed_message(timestamp: str, nonce: str, body: bytes) -> bytes:
    """``timestamp\\nnonce\\nRAW_BODY\\n``: what ``Wechatpay-Signature`` signs (§4.2)."""
    return _utf8(timestamp) + b"\n" + _utf8(nonce) + b"\n" + body + b"\n"


def _b64(text: str, reason: str, status: int) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, ValueError):
        raise Rejected(reason, status) from None


def decrypt_resource(keys: Sequence[bytes], resource: Mapping[str, Any]) -> bytes:
    """AES-GCM-open ``resource`` with the first key that authenticates it (APIv3 key rotation)."""
    if resource.get("algorithm") != ALGORITHM:
        raise Rejected("unsupported_algorithm", 400)
    ciphertext, nonce = resource.get("ciphertext"), resource.get("nonce")
    aad = resource.get("associated_data") or ""
    if not isinstance(ciphertext, str) or not isinstance(nonce, str) or not isinstance(aad, str) or not nonce:
        raise Rejected("bad_resource", 400)
    raw = _b64(ciphertext, "bad_base64", 400)
    for key in keys:
        try:
            return AESGCM(key).decrypt(_utf8(nonce), raw, _utf8(aad))
        except (InvalidTag, ValueError):
            continue
    raise Rejected("decrypt_failed", 400)


class WechatPayV3(Protocol):
    """One APIv3 ``notify_url`` of one merchant."""

    name = "wechat-pay-v3"
    lookup_fields = WechatPayV2.lookup_fields
    # console refunds send v2 XML notices to v3 URLs (PROTOCOLS §3.6)
    content_types = JSON_CONTENT_TYPES | XML_CONTENT_TYPES
    default_dedup_ttl = 25 * 3600.0  # WeChat Pay retries a notice for about 24 h
    default_policy = "fail"  # WeChat Pay retries on its own schedule; nobody waits on the answer

    def __init__(
        self,
        apiv3_keys: Sequence[tuple[str, str]],
        mch_id: str,
        platform_keys: Sequence[PlatformKey],
        app_id: str | None = None,
        timestamp_window: float = 300.0,
        decrypt_for_backend: bool = False,
        v2: WechatPayV2 | None = None,
        random_bytes: Callable[[int], bytes] | None = None,
    ) -> None:
        super().__init__(*(() if random_bytes is None else (random_bytes,)))
        if not apiv3_keys or not platform_keys:
            raise ValueError("a WeChat Pay v3 route needs apiv3_key and platform certificates or public keys")
        self.apiv3_keys = tuple(k.encode() for _, k in apiv3_keys)
        if any(len(k) not in (16, 24, 32) for k in self.apiv3_keys):
            raise ValueError("an APIv3 key is 32 characters")
        self.keys = {k.key_id: k for k in platform_keys}
        self.mch_id = mch_id
        self.app_id = app_id
        self.window = timestamp_window
        self.decrypt_for_backend = decrypt_for_backend
        self.v2 = v2

    def verify(self, req: Inbound, now: float) -> Verified:
        if req.method != "POST":
            raise Rejected("method_not_allowed", 405)
        if req.body.lstrip()[:1] == b"<" or "xml" in req.content_type:
            if self.v2 is None:
                raise Rejected(
                    "v2_notice_not_configured", 400, "set api_key on the route to accept v2 notices"
                )
            return dataclasses.replace(self.v2.verify(req, now), seal_context=V2Notice())
        key = self._authenticate(req, now)
        notice = payload.parse_object(req.body)
        resource = notice.get("resource")
        if not isinstance(resource, dict):
            raise Rejected("bad_resource", 400)
        if notice.get("resource_type", "encrypt-resource") != "encrypt-resource":
            raise Rejected("bad_resource", 400)
        plaintext = decrypt_resource(self.apiv3_keys, resource)
        decrypted = payload.parse_object(plaintext)
        message = payload.flatten(decrypted)
        self._check_ids(message)
        for name in ("id", "event_type"):
            if isinstance(notice.get(name), str):
                message[f"notification_{name}" if name == "id" else name] = notice[name]
        return Verified(
            message=message,
            replay_key=f"v3:{req.headers['wechatpay-timestamp']}:{req.headers['wechatpay-nonce']}",
            replay_ttl=2 * self.window,
            key_id=key.key_id,
            backend_body=self._backend_body(notice, decrypted) if self.decrypt_for_backend else None,
            authenticated=plaintext,
        )

    def _authenticate(self, req: Inbound, now: float) -> PlatformKey:
        h = req.headers
        for name in HEADERS:
            if not h.get(name):
                raise Rejected("missing_header", 401, name)
        if (h.get("wechatpay-signature-type") or SIGNATURE_TYPE) != SIGNATURE_TYPE:
            raise Rejected("unsupported_signature_type", 401)
        if h["wechatpay-signature"].startswith(PROBE_PREFIX):
            raise Rejected("signature_probe", 401)
        try:
            check_timestamp(h["wechatpay-timestamp"], now, self.window)
        except Rejected as e:
            raise Rejected(e.reason, 401) from None
        key = self.keys.get(serial_key(h["wechatpay-serial"]) or "")
        if key is None:
            raise Rejected("unknown_serial", 401)
        signature = _b64(h["wechatpay-signature"], "bad_signature", 401)
        message = signed_message(h["wechatpay-timestamp"], h["wechatpay-nonce"], req.body)
        try:
            key.public_key.verify(signature, message, padding.PKCS1v15(), hashes.SHA256())
        except (InvalidSignature, ValueError):
            raise Rejected("bad_signature", 401) from None
        return key

    def _check_ids(self, message: Mapping[str, str]) -> None:
        mchid = message.get("mchid", message.get("sp_mchid"))
        if mchid is not None and not constant_time_equal(mchid, self.mch_id):
            raise Rejected("wrong_mch_id", 400)
        appid = message.get("appid", message.get("sp_appid"))
        if self.app_id is not None and appid is not None and not constant_time_equal(appid, self.app_id):
            raise Rejected("wrong_app_id", 400)

    @staticmethod
    def _backend_body(notice: Mapping[str, Any], decrypted: Mapping[str, Any]) -> bytes:
        doc = {**notice, "resource": decrypted}
        return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()

    def dedup_key(self, verified: Verified) -> str | None:
        """The business key where this ``event_type`` documents one, else the digest of the decrypted resource.

        ``refund_id``/``out_refund_no`` + ``refund_status`` (refunds), ``transaction_id``/``out_trade_no`` +
        ``trade_state`` (payments). Other notices carry other ids and no state: profit sharing sends up to 50
        orders per ``transaction_id`` (and one notice per receiver), coupons and pay-score their own ids, so they
        are keyed by ``event_type`` + the sha256 of the decrypted plaintext, which every retry resends unchanged
        (PROTOCOLS.md §4.6). Never the notification ``id``: whether WeChat Pay keeps it across retries is
        unverified, and a key with an empty part (a trade without ``trade_state``) would merge distinct notices.
        """
        if isinstance(verified.seal_context, V2Notice) and self.v2 is not None:
            return self.v2.dedup_key(verified)
        m = verified.message
        if refund := m.get("refund_id") or idempotency.merchants_own(m, "out_refund_no", _MERCHANTS):
            if m.get("refund_status"):
                return f"refund|{refund}|{m['refund_status']}"
        elif (
            trade := m.get("transaction_id") or idempotency.merchants_own(m, "out_trade_no", _MERCHANTS)
        ) and m.get("trade_state"):
            return f"trade|{trade}|{m['trade_state']}"
        body = idempotency.digest(m, verified.authenticated, exclude=("notification_id",))
        return f"digest|{m.get('event_type', '')}|{body}"

    def success_reply(self, verified: Verified | None = None) -> Reply:
        """204 without a body; for a v2 notice (pass its ``verified``) the v2 SUCCESS XML."""
        if verified is not None and isinstance(verified.seal_context, V2Notice) and self.v2 is not None:
            return self.v2.success_reply()
        return Reply(204, b"", "", "ack")

    def failure_reply(self, reason: str, status: int) -> Reply:
        return Reply(status, FAIL_JSON, JSON_CONTENT_TYPE, "reject")

    def backend_failure_reply(self, verified: Verified | None = None) -> Reply:
        """500 with FAIL JSON; for a v2 notice the v2 FAIL XML (WeChat Pay retries on both)."""
        if verified is not None and isinstance(verified.seal_context, V2Notice) and self.v2 is not None:
            return self.v2.backend_failure_reply()
        return Reply(500, FAIL_JSON, JSON_CONTENT_TYPE, "failure")

    def is_backend_failure(self, status: int, content_type: str, body: bytes) -> bool:
        """A 2xx that still means "not processed": ``{"code":"FAIL"}`` or ``"ERROR"`` JSON, an HTML page (an
        error page served with 200), or FAIL XML (v2 notices at this route)."""
        if not 200 <= status < 300:
            return False
        if is_html(content_type, body):
            return True
        code = return_code(body)
        if code is not None:
            return code != "SUCCESS"
        return _json_code(body) in FAILURE_CODES

    def normalize(self, status: int, content_type: str, body: bytes, verified: Verified) -> Reply:
        if isinstance(verified.seal_context, V2Notice) and self.v2 is not None:
            return self.v2.normalize(status, content_type, body, verified)
        out = status if status in (200, 204) else 204
        if status not in (200, 204):
            return Reply(out, b"", "", "ack", normalized=f"status_{status}")
        if body.strip() and _json_code(body) != "SUCCESS":
            return Reply(out, b"", "", "ack", normalized=payload.describe(content_type, body))
        return Reply(out, b"", "", "ack")


_MERCHANTS = ("sp_mchid", "mchid", "sub_mchid")  # scope of a merchant's own numbers


def _json_code(body: bytes) -> str | None:
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        return None
    code = doc.get("code") if isinstance(doc, dict) else None
    return code.upper() if isinstance(code, str) else None
