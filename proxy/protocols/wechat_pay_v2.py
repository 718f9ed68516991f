"""WeChat Pay API v2 notifications (XML): payment results (``sign``) and refund results (``req_info``).

PROTOCOLS.md §3. Payment notice: ``return_code`` must be SUCCESS; ``sign`` is recomputed by ``sign_type``
(absent = MD5, or HMAC-SHA256) over every non-empty field but ``sign``, unknown fields included ("必须支持增加的扩展
字段"), and compared upper-case in constant time; ``mch_id`` (and ``appid`` if configured) must match. Refund
notice: no ``sign`` exists; ``req_info`` is AES-256-ECB under ``md5hex(api_key)`` (32 ASCII bytes) with PKCS#7/16,
and the decrypted ``<root>`` is parsed as strictly as any XML. ECB has no MAC, so knowing the key is the only
authenticity; the ids are checked on the outer fields. Nothing authenticates the outer fields, so a refund notice
may hold only the documented ones (``return_code``, ``return_msg``, ``appid``, ``mch_id``, ``nonce_str``,
``req_info``, §3.5): any other (an ``out_trade_no`` or ``total_fee`` placed around a captured ``req_info``) is
refused as ``unexpected_field``. The verified message is the decrypted fields plus the outer values wxgate checked
(``return_code``, ``mch_id``, and ``appid`` when the route configures it), never an unchecked outer value. With
``decrypt_for_backend`` a refund is forwarded as one flat ``<xml>`` holding exactly that message; without it the
original body goes as sent, and it holds documented outer fields only.

Both parses refuse any element seen twice (``xmlmsg.parse(lists=False)``): ``sign`` covers the flat view, so a
second ``<out_trade_no>`` appended after the signed one would reach a backend that reads the last value.

No freshness timestamp exists (``replay_key`` is None): idempotency on the business key is the replay defence.

Replies. Success: 200 + SUCCESS XML. Rejection: **200** + FAIL XML with one fixed message whatever the reason,
which is what WeChat Pay's documentation and SDKs send; WeChat retries on it (so a real notice survives a key
misconfiguration once fixed) and a forged caller learns neither the reason nor, from the status, that it was
refused. Backend failure: the same FAIL form (WeChat Pay retries over 24 h). A backend 2xx with valid SUCCESS XML
passes; valid FAIL XML or an HTML page (an error page served with 200) is a failure
(:meth:`WechatPayV2.is_backend_failure`), kept and redelivered per the route's policy; any other 2xx (empty, plain
text, JSON) becomes SUCCESS XML.

Reasons: ``method_not_allowed``, ``return_code_not_success``, ``missing_sign``, ``unsupported_sign_type``,
``bad_sign``, ``wrong_mch_id``, ``wrong_app_id``, ``unexpected_field``, ``bad_base64``, ``bad_length``,
``bad_padding``, and the :mod:`xmlmsg` reasons (also for the decrypted ``req_info``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Callable, Mapping, Sequence

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from proxy.protocols import idempotency, xmlmsg
from proxy.protocols.base import (
    XML_CONTENT_TYPES,
    Inbound,
    Protocol,
    Rejected,
    Reply,
    Verified,
    constant_time_equal,
)
from proxy.protocols.payload import describe

XML_CONTENT_TYPE = "text/xml; charset=utf-8"
SUCCESS_XML = xmlmsg.build({"return_code": "SUCCESS", "return_msg": "OK"})
FAIL_XML = xmlmsg.build({"return_code": "FAIL", "return_msg": "签名失败"})
BUSY_XML = xmlmsg.build({"return_code": "FAIL", "return_msg": "系统繁忙"})
SIGN_TYPES = ("MD5", "HMAC-SHA256")
REFUND_OUTER_FIELDS = frozenset({"return_code", "return_msg", "appid", "mch_id", "nonce_str", "req_info"})


def sign_string(fields: Mapping[str, str]) -> str:
    """``k1=v1&k2=v2`` over the non-empty fields but ``sign``, in ASCII order of the names (values raw)."""
    return "&".join(f"{k}={fields[k]}" for k in sorted(fields) if k != "sign" and fields[k] != "")


# Field names of payment and refund notices (§3.3, §3.5): the ones a spliced value could hide.
NOTICE_FIELDS = frozenset(
    [
        "appid",
        "mch_id",
        "sub_appid",
        "sub_mch_id",
        "device_info",
        "nonce_str",
        "sign",
        "sign_type",
        "result_code",
        "err_code",
        "err_code_des",
        "openid",
        "sub_openid",
        "is_subscribe",
        "sub_is_subscribe",
        "trade_type",
        "bank_type",
        "total_fee",
        "settlement_total_fee",
        "fee_type",
        "cash_fee",
        "cash_fee_type",
        "coupon_fee",
        "coupon_count",
        "transaction_id",
        "out_trade_no",
        "attach",
        "time_end",
        "return_code",
        "return_msg",
        "req_info",
        "out_refund_no",
        "refund_id",
        "refund_fee",
        "settlement_refund_fee",
        "refund_status",
        "success_time",
        "refund_recv_accout",
        "refund_account",
        "refund_request_source",
    ]
)
_HIDDEN = re.compile(r"&([A-Za-z0-9_]+)=")


def _refuse_spliced(fields: Mapping[str, str]) -> None:
    """Refuse a notice whose signature only holds because a signed ``k=v`` was moved into another field's value.

    The string to sign joins raw values with ``&`` (the protocol's, not ours to change), so ``<openid>o&out_
    trade_no=X</openid>`` without an ``<out_trade_no>`` element signs exactly like the genuine pair: a captured
    notice can be reshuffled to hide its ids (and slip past deduplication). A documented field name that appears
    as ``&name=`` inside a value while the notice has no such field is that splice; a merchant's ``attach`` may
    hold ``&`` and ``=`` freely otherwise."""
    for value in fields.values():
        if "&" not in value:
            continue
        for name in _HIDDEN.findall(value):
            if (name in NOTICE_FIELDS or _COUPON.fullmatch(name)) and not fields.get(name):
                raise Rejected("malformed_xml", 400, "a signed field is spliced into another value")


_COUPON = re.compile(r"coupon_(?:type|id|fee)_\d+")


def sign(fields: Mapping[str, str], api_key: str, sign_type: str = "MD5") -> str:
    """The upper-case hex ``sign`` of ``fields`` (PROTOCOLS.md §3.2)."""
    message = f"{sign_string(fields)}&key={api_key}".encode("utf-8", "surrogatepass")
    if sign_type == "MD5":
        return hashlib.md5(message).hexdigest().upper()  # noqa: S324 - the protocol's algorithm
    if sign_type == "HMAC-SHA256":
        return hmac.new(api_key.encode(), message, hashlib.sha256).hexdigest().upper()
    raise ValueError(f"unsupported sign_type {sign_type!r}")


def _refund_key(api_key: str) -> bytes:
    return hashlib.md5(api_key.encode()).hexdigest().encode()  # noqa: S324 - the protocol's key derivation


def encrypt_req_info(api_key: str, plaintext: bytes) -> str:
    """``req_info`` for ``plaintext`` (AES-256-ECB, PKCS#7/16): the sender's side, for tests and ``wxgate send``."""
    padder = padding.PKCS7(128).padder()
    enc = Cipher(algorithms.AES(_refund_key(api_key)), modes.ECB()).encryptor()  # noqa: S305 - the protocol's mode
    return base64.b64encode(
        enc.update(padder.update(plaintext) + padder.finalize()) + enc.finalize()
    ).decode()


def decrypt_req_info(api_key: str, req_info: str) -> bytes:
    """Decrypt ``req_info``; bad base64, length or padding raise :class:`Rejected`."""
    try:
        raw = base64.b64decode(req_info.encode("ascii"), validate=True)
    except (binascii.Error, ValueError):
        raise Rejected("bad_base64", 403) from None
    if not raw or len(raw) % 16:
        raise Rejected("bad_length", 403)
    dec = Cipher(algorithms.AES(_refund_key(api_key)), modes.ECB()).decryptor()  # noqa: S305
    plain = dec.update(raw) + dec.finalize()
    n = plain[-1]
    if not 1 <= n <= 16 or not hmac.compare_digest(plain[-n:], bytes([n]) * n):
        raise Rejected("bad_padding", 403)
    return plain[:-n]


def return_code(body: bytes) -> str | None:
    """The ``return_code`` of an XML answer, or None when the body is not such an XML."""
    if not body.lstrip().startswith(b"<"):
        return None
    try:
        return xmlmsg.parse(body.strip()).get("return_code") or None
    except Rejected:
        return None


def is_html(content_type: str, body: bytes) -> bool:
    """An HTML page: ``text/html``, or a body opening with ``<!DOCTYPE`` or ``<html`` (an error page)."""
    head = body.lstrip()[:9].lower()
    return "html" in content_type.lower() or head.startswith((b"<!doctype", b"<html"))


class WechatPayV2(Protocol):
    """One APIv2 ``notify_url`` (payment and refund notices of one merchant)."""

    name = "wechat-pay-v2"
    lookup_fields = (("transaction_id",), ("out_trade_no",), ("refund_id",), ("out_refund_no",))
    content_types = XML_CONTENT_TYPES
    default_dedup_ttl = 25 * 3600.0  # WeChat Pay retries a notice for about 24 h
    default_policy = "fail"  # WeChat Pay retries on its own schedule; nobody waits on the answer

    def __init__(
        self,
        api_keys: Sequence[tuple[str, str]],
        mch_id: str,
        app_id: str | None = None,
        decrypt_for_backend: bool = False,
        random_bytes: Callable[[int], bytes] | None = None,
    ) -> None:
        super().__init__(*(() if random_bytes is None else (random_bytes,)))
        if not api_keys or not mch_id:
            raise ValueError("a WeChat Pay v2 route needs api_key and mch_id")
        self.api_keys = tuple(api_keys)
        self.mch_id = mch_id
        self.app_id = app_id
        self.decrypt_for_backend = decrypt_for_backend

    def verify(self, req: Inbound, now: float) -> Verified:
        if req.method != "POST":
            raise Rejected("method_not_allowed", 405)
        fields = xmlmsg.parse(req.body, lists=False)
        if fields.get("return_code") != "SUCCESS":
            raise Rejected("return_code_not_success", 400)
        if "req_info" in fields:
            return self._verify_refund(fields)
        key_id = self._check_sign(fields)
        _refuse_spliced(fields)
        self._check_ids(fields)
        return Verified(message=fields, key_id=key_id)

    def _check_sign(self, fields: Mapping[str, str]) -> str:
        given = fields.get("sign", "")
        if not given:
            raise Rejected("missing_sign", 403)
        sign_type = fields.get("sign_type") or "MD5"
        if sign_type not in SIGN_TYPES:
            raise Rejected("unsupported_sign_type", 403)
        given = given.strip().upper()
        if not given.isascii():
            raise Rejected("bad_sign", 403)
        matched = ""
        for key_id, key in self.api_keys:
            if constant_time_equal(sign(fields, key, sign_type), given) and not matched:
                matched = key_id
        if not matched:
            raise Rejected("bad_sign", 403)
        return matched

    def _check_ids(self, fields: Mapping[str, str]) -> None:
        if not constant_time_equal(fields.get("mch_id", ""), self.mch_id):
            raise Rejected("wrong_mch_id", 403)
        if self.app_id is not None and not constant_time_equal(fields.get("appid", ""), self.app_id):
            raise Rejected("wrong_app_id", 403)

    def _verify_refund(self, outer: Mapping[str, str]) -> Verified:
        if not REFUND_OUTER_FIELDS.issuperset(outer):
            raise Rejected("unexpected_field", 400, "a refund notice holds only documented outer fields")
        failure: Rejected | None = None
        for key_id, key in self.api_keys:
            try:
                inner = xmlmsg.parse(decrypt_req_info(key, outer["req_info"]), root="root", lists=False)
            except Rejected as e:
                failure = failure or e
                continue
            self._check_ids(outer)
            # Only what is authenticated: the decrypted fields, and the outer values just checked (mch_id
            # equals the configured one, appid too when configured). return_msg and nonce_str are unchecked.
            checked: dict[str, str] = {"return_code": "SUCCESS", "mch_id": self.mch_id}
            if self.app_id is not None:
                checked["appid"] = self.app_id
            message = {**inner, **checked}
            backend = xmlmsg.build(dict(message)) if self.decrypt_for_backend else None
            return Verified(message=message, key_id=key_id, backend_body=backend)
        raise failure or Rejected("bad_padding", 403)

    def dedup_key(self, verified: Verified) -> str | None:
        """Refunds: ``refund_id`` (or ``out_refund_no``) + ``refund_status``; payments: ``transaction_id`` (or
        ``out_trade_no``) + ``result_code``; scoped by ``mch_id``. A notice missing either part of its business key
        is keyed by the digest of its signed (or decrypted) fields without ``sign``/``nonce_str``/``req_info``,
        never by a key with an empty part (PROTOCOLS.md §3.4)."""
        m = verified.message
        mch = m.get("mch_id", "")
        if refund := m.get("refund_id") or idempotency.merchants_own(m, "out_refund_no", ("sub_mch_id",)):
            if m.get("refund_status"):
                return f"refund|{mch}|{refund}|{m['refund_status']}"
        elif (
            trade := m.get("transaction_id") or idempotency.merchants_own(m, "out_trade_no", ("sub_mch_id",))
        ) and m.get("result_code"):
            return f"pay|{mch}|{trade}|{m['result_code']}"
        return "digest|" + idempotency.digest(m, exclude=("sign", "nonce_str", "req_info"))

    def success_reply(self, verified: Verified | None = None) -> Reply:
        return Reply(200, SUCCESS_XML, XML_CONTENT_TYPE, "ack")

    def failure_reply(self, reason: str, status: int) -> Reply:
        return Reply(200, FAIL_XML, XML_CONTENT_TYPE, "reject")

    def backend_failure_reply(self, verified: Verified | None = None) -> Reply:
        return Reply(200, BUSY_XML, XML_CONTENT_TYPE, "failure")

    def is_backend_failure(self, status: int, content_type: str, body: bytes) -> bool:
        """A 2xx that still means "not processed": XML with a ``return_code`` other than SUCCESS (the backend
        refused the notice), or an HTML page (a framework's error page served with 200)."""
        if not 200 <= status < 300:
            return False
        if is_html(content_type, body):
            return True
        code = return_code(body)
        return code is not None and code != "SUCCESS"

    def normalize(self, status: int, content_type: str, body: bytes, verified: Verified) -> Reply:
        code = return_code(body)
        if code == "SUCCESS" and status == 200:
            return Reply(200, body, content_type or XML_CONTENT_TYPE, "ack")
        if code is not None and code != "SUCCESS":
            return Reply(200, body, content_type or XML_CONTENT_TYPE, "failure")
        reason = f"status_{status}" if status != 200 else describe(content_type, body)
        return Reply(200, SUCCESS_XML, XML_CONTENT_TYPE, "ack", normalized=reason)
