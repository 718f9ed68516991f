"""Generic in-house HMAC webhooks: every parameter signed, percent-encoded and sorted ``k=v&k=v``, HMAC-SHA256 hex.

The scheme (modelled on WeChat Pay v2's ``sign``, PROTOCOLS.md §3.2, with a real MAC and a timestamp)::

    params    = query parameters + body parameters, minus the signature parameter
    body      = form-urlencoded (every field) | a flat JSON object (every field) | empty
    enc(s)    = percent-encode the UTF-8 bytes of s, all but RFC 3986 unreserved A-Z a-z 0-9 - . _ ~ (upper hex)
    string    = "&".join(f"{enc(k)}={enc(v)}" for (k, v) in sorted by enc(k))   # empty values included
    signature = lowercase_hex(HMAC_SHA256(secret, string))

Names and values are percent-encoded as AWS SigV4 and OAuth 1.0 do, so a ``&`` or ``=`` inside a value can no
longer read as a parameter boundary: with raw values, ``{"a": "1&b=2"}`` and ``{"a": "1", "b": "2"}`` signed the
same string, and a signature captured for one parameter set verified another. This changed the wire format for
in-house senders (docs/operations.md, "HMAC string to sign"); ``proxy.tools.traffic.hmac_request`` signs this
way.

JSON values are signed as written: strings unquoted, numbers as their text (``1.50`` stays ``1.50``), ``true``,
``false``, ``null``. Any other body (nested JSON, XML, binary) is refused as ``unsigned_body``: a body the signature
does not cover could be swapped freely. A name in both query and body, or twice in the body, is refused
(``duplicate_param``). The signature comes from ``sign_param`` or, with ``sign_header``, from that header (then a
parameter named like ``sign_param`` is signed like any other). ``timestamp_param`` (Unix seconds, ±window both ways)
and ``nonce_param`` are required parameters, hence signed; the nonce is the replay key.

Replies: wxgate's own acknowledgement is 200 ``{"code":"SUCCESS"}``; a backend 2xx passes through unchanged (the
scheme is generic, there is no contract to enforce); rejection 401/400 + ``{"code":"FAIL","message":"unauthorized"}``
whatever the reason; backend failure 502 + FAIL JSON. Dedup key: the configured ``dedup.fields`` when all are
present (JSON-encoded, so no two value lists join alike), otherwise the nonce.

Reasons: ``missing_param``, ``bad_signature``, timestamp reasons, ``unsigned_body``, ``malformed_body``,
``duplicate_param``, ``malformed_json``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Callable, Mapping, Sequence
from urllib.parse import parse_qsl, quote

from proxy.protocols import idempotency, payload
from proxy.protocols.base import Inbound, Protocol, Rejected, Reply, Verified, check_timestamp

JSON_CONTENT_TYPE = "application/json"
SUCCESS = Reply(200, b'{"code":"SUCCESS"}', JSON_CONTENT_TYPE, "ack")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def _fail(message: str) -> bytes:
    return json.dumps({"code": "FAIL", "message": message}).encode()


def _enc(text: str) -> str:
    # quote() keeps only A-Z a-z 0-9 and "_.-~" with safe="": RFC 3986's unreserved set, upper-case hex.
    return quote(text, safe="", encoding="utf-8", errors="surrogatepass")


def string_to_sign(params: Mapping[str, str]) -> str:
    """``enc(k)=enc(v)`` pairs joined by ``&``, sorted by encoded name; unambiguous whatever the values hold."""
    pairs = sorted((_enc(k), _enc(v)) for k, v in params.items())
    return "&".join(f"{k}={v}" for k, v in pairs)


def signature(secret: str, params: Mapping[str, str]) -> str:
    """``lowercase_hex(HMAC_SHA256(secret, string_to_sign(params)))``."""
    message = string_to_sign(params).encode("ascii")
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def body_params(content_type: str, body: bytes) -> list[tuple[str, str]]:
    """The signed fields of a body: form fields, flat JSON fields, or none for an empty body."""
    if not body.strip():
        return []
    if content_type == "application/x-www-form-urlencoded":
        try:
            return parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=True)
        except (UnicodeDecodeError, ValueError):
            raise Rejected("malformed_body", 400) from None
    if "json" in content_type:
        fields = []
        for key, value in payload.parse_object(body, numbers_as_text=True).items():
            text = payload.scalar_text(value)
            if text is None:
                raise Rejected("unsigned_body", 400, "nested JSON values are not signed")
            fields.append((key, text))
        return fields
    raise Rejected("unsigned_body", 400, "only form-urlencoded or flat JSON bodies are signed")


class HmacSignature(Protocol):
    """One route of an in-house sender signing with a shared secret."""

    name = "hmac"
    default_methods = ("GET", "POST")

    def __init__(
        self,
        secrets: Sequence[tuple[str, str]],
        sign_param: str = "sign",
        sign_header: str | None = None,
        timestamp_param: str = "timestamp",
        nonce_param: str = "nonce",
        timestamp_window: float = 300.0,
        dedup_fields: Sequence[str] | None = None,
        random_bytes: Callable[[int], bytes] | None = None,
    ) -> None:
        super().__init__(*(() if random_bytes is None else (random_bytes,)))
        if not secrets:
            raise ValueError("an hmac route needs a secret")
        self.secrets = tuple(secrets)
        self.sign_param = sign_param
        self.sign_header = sign_header.lower() if sign_header else None
        self.timestamp_param = timestamp_param
        self.nonce_param = nonce_param
        self.window = timestamp_window
        self.dedup_fields = tuple(dedup_fields or ())

    def _params(self, req: Inbound) -> dict[str, str]:
        params = dict(req.query)
        for key, value in body_params(req.content_type, req.body):
            if key in params:
                raise Rejected("duplicate_param", 400)
            params[key] = value
        return params

    def verify(self, req: Inbound, now: float) -> Verified:
        params = self._params(req)
        if self.sign_header is None:
            given = params.pop(self.sign_param, "")
        else:
            given = req.headers.get(self.sign_header, "")
        if not given:
            raise Rejected("missing_param", 401, self.sign_header or self.sign_param)
        for name in (self.timestamp_param, self.nonce_param):
            if not params.get(name):
                raise Rejected("missing_param", 401, name)
        given = given.strip().lower()
        matched = ""
        for key_id, secret in self.secrets:
            ok = _HEX64.match(given) is not None and hmac.compare_digest(signature(secret, params), given)
            if ok and not matched:
                matched = key_id
        if not matched:
            raise Rejected("bad_signature", 401)
        try:
            check_timestamp(params[self.timestamp_param], now, self.window)
        except Rejected as e:
            raise Rejected(e.reason, 401) from None
        return Verified(
            message=params,
            replay_key=f"hmac:{params[self.nonce_param]}",
            replay_ttl=2 * self.window,
            key_id=matched,
        )

    def dedup_key(self, verified: Verified) -> str | None:
        """``dedup_fields`` when every one is present (:func:`idempotency.fields_key`), else the nonce: unique per
        signed request, so a sender that signs each retry anew gets duplicates, never a dropped message."""
        m = verified.message
        if key := idempotency.fields_key(m, self.dedup_fields):
            return key
        nonce = m.get(self.nonce_param)
        return f"nonce={nonce}" if nonce else idempotency.digest_key(verified)

    def success_reply(self, verified: Verified | None = None) -> Reply:
        return SUCCESS

    def failure_reply(self, reason: str, status: int) -> Reply:
        return Reply(status, _fail("unauthorized"), JSON_CONTENT_TYPE, "reject")

    def backend_failure_reply(self, verified: Verified | None = None) -> Reply:
        return Reply(502, _fail("unavailable"), JSON_CONTENT_TYPE, "failure")

    def normalize(self, status: int, content_type: str, body: bytes, verified: Verified) -> Reply:
        return Reply(status, body, content_type, "ack")
