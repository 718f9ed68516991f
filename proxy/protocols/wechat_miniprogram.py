"""Mini Program (小程序) message push, and Channels shop (视频号小店) push: verification, keys and reply contracts.

PROTOCOLS-MINI-OPEN.md §A1 (Channels §A3). The crypto is the Official Account's (PROTOCOLS.md §1.2, §1.3): URL
verification and the ``signature`` check are :mod:`wechat_mp`'s, the AES envelope is :mod:`wxcrypt`'s. What
differs:

- **Format.** Each mini program picks XML or JSON in its console; ``format`` says which, and decides how every body
  (and every decrypted message) is read. Which Content-Type WeChat sends is UNVERIFIED, so the first byte of the
  body (``{`` or ``<``) is only a cross-check: a body of the other format is ``format_mismatch`` (400).
- **Safe and compatible mode** (``encrypt_type=aes``): ``msg_signature`` over the ``Encrypt`` string *as decoded
  from the body* (JSON escapes resolved; never a slice of the raw text) authenticates the message, and the
  envelope's receiveid must be the mini program's AppID (``app_id``). ``signature`` covers no body: it is checked
  (WeChat sends it, valid, with every push) but trusts nothing. Only the ciphertext is read: fields beside
  ``Encrypt`` (compatible mode) are unauthenticated, so a backend that decrypts by itself gets the authenticated
  message with ``Encrypt`` added instead. With ``require_encryption`` a POST without ``encrypt_type=aes`` is
  ``plaintext_not_allowed``; whatever the setting, a body carrying ``Encrypt`` without ``msg_signature`` is
  ``missing_param``: removing the signature never downgrades a push to plaintext.
- **JSON** is read strictly (:func:`payload.parse_object`): UTF-8 only, duplicate keys, nesting deeper than
  :data:`MAX_DEPTH`, numbers written with more than :data:`MAX_NUMBER_LEN` characters and non-objects are
  ``malformed_json`` (400). Numbers keep their text, so a 64-bit ``MsgId`` is exact (no float) and a
  ``CreateTime`` reads the same whether sent as a number or a string.
- **Replies.** ``success`` or an empty body pass unencrypted, in safe mode too (§A1.3). Any other well-formed reply
  is passive and :meth:`WechatMiniProgram.seal` encrypts it for an encrypted request, in the configured format
  (JSON ``{"Encrypt","MsgSignature","TimeStamp":<number>,"Nonce":"<string>"}``, XML the §1.3 reply): on JSON
  routes any non-empty JSON object (``transfer_customer_service`` included: JSON servers answer JSON), on XML
  routes the Official Account passive-reply XML (:func:`wechat_mp.classify_reply`). Anything else is replaced by
  ``success`` (``normalized`` says why).
- **Per-event contracts.** ``xpay_*`` virtual-payment events are answered ``{"ErrCode":0,"ErrMsg":"success"}``,
  unencrypted, and WeChat retries them on a 24 h schedule (:data:`XPAY_RETRY_SCHEDULE`), so their
  ``Verified.dedup_ttl`` is 25 h. A JSON object from the backend (the iOS refund query's business answer) passes
  unencrypted; one whose ``ErrCode`` is not 0 is a backend failure (:meth:`is_backend_failure`): cached, it would
  answer WeChat's retries for 25 h and the backend would never see them. ``xpay_subscribe_ios_refund_query_notify``
  must be answered within 3 s (``Verified.deadline``).
- **Dedup keys** (§A1.4, :func:`message_key`): ``MsgId`` as sent (digits, never a float); ``wxa_media_check`` by
  ``trace_id``; ``subscribe_msg_sent_event`` by every ``List`` item's ``MsgID`` (``List`` an object or an array);
  subscribe popup/change by sender + ``CreateTime`` + event + every ``TemplateId:SubscribeStatusString``;
  ``xpay_*`` by event + ``OutTradeNo`` and the refund ids and ``RetCode`` present (UNVERIFIED field names beyond
  ``OutTradeNo``: a refund that fails and later succeeds is two notifications, so the result code is part of the
  key); ``user_enter_tempsession`` by sender + ``CreateTime`` + event + ``SessionFrom``; ``debug_demo`` (the
  console's test tool) never dedups; everything else, and any of these missing a part, by the digest of the
  authenticated message (:mod:`idempotency`). In XML a ``List`` repeated is keyed by the digest too, since the flat
  message keeps its first item only.
- **Channels shops** (``channels=True``): the same protocol, restricted as WeChat restricts it ("只允许安全模式",
  "只允许为JSON", §A3): the constructor refuses ``format="xml"`` and a missing ``encoding_aes_key``/``app_id`` (the
  shop's appid, the receiveid; UNVERIFIED in an official example), and encryption is always required, so a
  plaintext push is ``plaintext_not_allowed`` and an XML body ``format_mismatch``.

Protocol facts for routes and policies: :attr:`WechatMiniProgram.methods`, ``content_types``,
``default_dedup_ttl``, ``last_attempt`` (MP-like: 5 s, "重试三次") and ``xpay_retry_schedule``.

Reasons: those of :mod:`wechat_mp` (``missing_param``, ``bad_signature``, ``bad_msg_signature``, the timestamp
reasons, ``method_not_allowed``, ``bad_encrypt_type``, ``encryption_not_configured``, ``plaintext_not_allowed``,
``missing_encrypt``, ``openid_mismatch``), ``format_mismatch``, the :mod:`wxcrypt` reasons (``wrong_app_id``) and
the parse reasons (``malformed_json``, ``malformed_xml``, ``xml_dtd_forbidden``, ``empty_body``).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Literal

from proxy.protocols import idempotency, payload, wxcrypt, xmlmsg
from proxy.protocols.base import Inbound, Protocol, Rejected, Reply, Verified
from proxy.protocols.wechat_mp import (
    ENCRYPTED_QUERY,
    SUCCESS,
    check_openid,
    check_query,
    classify_reply,
    combined_key_id,
    url_verification,
    with_encrypt,
)

Format = Literal["json", "xml"]

XPAY_PREFIX = "xpay_"
XPAY_ACK = Reply(200, b'{"ErrCode":0,"ErrMsg":"success"}', wxcrypt.JSON_CONTENT_TYPE, "ack")
XPAY_DEDUP_TTL = 25 * 3600.0  # the retry schedule below spans 24 h 4 min
# "通知周期：15s/15s/30s/3m/10m/20m/30m/30m/30m/60m/3h/3h/3h/6h/6h" (S-xpay): the gaps between deliveries.
XPAY_RETRY_SCHEDULE: tuple[float, ...] = (15, 15, 30, 180, 600, 1200, 1800, 1800, 1800, 3600, 10800, 10800)
XPAY_RETRY_SCHEDULE += (10800, 21600, 21600)
# Events whose answer WeChat needs sooner than the route's deadline ("3 秒内", S-xpay).
EVENT_DEADLINES = {"xpay_subscribe_ios_refund_query_notify": 3.0}
XPAY_KEY_FIELDS = ("OutTradeNo", "MchRefundId", "WxRefundId", "RetCode")
XPAY_IDS = frozenset({"OutTradeNo", "MchRefundId", "WxRefundId"})
MAX_NUMBER_LEN = 40  # a uint64 has 20 digits; a float's shortest repr fewer than 25 characters
MAX_DEPTH = payload.MAX_DEPTH
_XML_TYPES = frozenset({"", "text/xml", "application/xml", "text/plain"})
_JSON_TYPES = frozenset({"", "application/json", "text/json", "text/plain"})


def read_json(body: bytes) -> dict[str, Any]:
    """A strict JSON object with numbers as their text (see the module docstring); else Rejected (400)."""
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        raise Rejected("malformed_json", 400, "not UTF-8") from None
    return payload.parse_object(
        body, numbers_as_text=True, max_number_len=MAX_NUMBER_LEN, max_depth=MAX_DEPTH
    )


def check_format(body: bytes, fmt: Format) -> None:
    """Refuse a body whose first byte says it is the other format (the configured one decides how it is read)."""
    first = body.lstrip()[:1]
    if (fmt == "json" and first == b"<") or (fmt == "xml" and first == b"{"):
        other = "xml" if fmt == "json" else "json"
        raise Rejected("format_mismatch", 400, f"the route's format is {fmt}, the body is {other}")


def read_message(body: bytes, fmt: Format) -> dict[str, str]:
    """The flat ``{field: text}`` of a push body or decrypted message in the configured format."""
    check_format(body, fmt)
    return payload.flatten(read_json(body)) if fmt == "json" else xmlmsg.parse(body)


def json_with_encrypt(plain: bytes, encrypted: str) -> bytes:
    """The decrypted JSON message with ``"Encrypt"`` appended as its last member (compatible mode's shape)."""
    head = plain.rstrip()[:-1].rstrip()  # without the closing brace
    sep = b"" if head.endswith(b"{") else b","
    return head + sep + b'"Encrypt":' + json.dumps(encrypted).encode() + b"}"


def event_of(message: Mapping[str, str]) -> str:
    return message.get("Event", "")


def _create_time(message: Mapping[str, str]) -> str:
    raw = message.get("CreateTime", "").strip()
    return str(int(raw)) if raw.isascii() and raw.isdigit() else raw


def list_items(message: Mapping[str, str], authenticated: bytes, fmt: Format) -> list[dict[str, str]] | None:
    """The items of a subscribe event's ``List`` (an object or an array in JSON; in XML one ``<List>`` inside
    ``SubscribeMsg…Event``); ``None`` when they cannot all be read (then the message is keyed by its digest)."""
    if fmt == "xml":
        if authenticated.count(b"<List>") != 1:
            return None
        item: dict[str, str] = {}
        for name, value in message.items():
            head, _, leaf = name.rpartition(".")
            if head == "List" or head.endswith(".List"):
                item[leaf] = value
        return [item] if item else None
    found = read_json(authenticated).get("List")
    raw = [found] if isinstance(found, dict) else found if isinstance(found, list) else None
    if not raw or not all(isinstance(i, dict) for i in raw):
        return None
    return [{k: t for k, v in i.items() if (t := payload.scalar_text(v)) is not None} for i in raw]


def _all_present(items: Sequence[Mapping[str, str]] | None, *fields: str) -> bool:
    return bool(items) and all(i.get(f) for i in items or () for f in fields)


def event_identity(message: Mapping[str, str], authenticated: bytes, fmt: Format) -> list[str] | None:
    """The documented identity of an event without ``MsgId`` (§A1.4), or ``None`` when it has none."""
    event, sender, created = event_of(message), message.get("FromUserName", ""), _create_time(message)
    if event == "wxa_media_check":
        return [message["trace_id"]] if message.get("trace_id") else None
    if event.startswith(XPAY_PREFIX):
        if not any(message.get(f) for f in XPAY_IDS):
            return None
        return [f"{f}={message[f]}" for f in XPAY_KEY_FIELDS if message.get(f)]
    if event == "user_enter_tempsession":
        parts = [sender, created, message.get("SessionFrom", "")]
        return parts if all(parts) else None
    if event == "subscribe_msg_sent_event":
        items = list_items(message, authenticated, fmt)
        return sorted(i["MsgID"] for i in items or ()) if _all_present(items, "MsgID") else None
    if event in ("subscribe_msg_popup_event", "subscribe_msg_change_event"):
        items = list_items(message, authenticated, fmt)
        if not (sender and created and _all_present(items, "TemplateId", "SubscribeStatusString")):
            return None
        return [
            sender,
            created,
            *sorted(f"{i['TemplateId']}:{i['SubscribeStatusString']}" for i in items or ()),
        ]
    return None


def message_key(verified: Verified, fmt: Format) -> str | None:
    """The idempotency key of a Mini Program push (see the module docstring); ``None`` for ``debug_demo``."""
    message = verified.message
    to, event = message.get("ToUserName", ""), event_of(message)
    if event == "debug_demo":
        return None
    if message.get("MsgId"):
        return f"{to}|msg|{message['MsgId']}"
    identity = event_identity(message, verified.authenticated, fmt)
    if identity is None:
        return idempotency.digest_key(verified)
    return f"{to}|{event}|" + json.dumps(identity, separators=(",", ":"))


def classify_json_reply(
    status: int, content_type: str, body: bytes, encrypted: bool
) -> tuple[str, str | None]:
    """``(kind, normalized_reason)`` of a backend 2xx answer on a JSON route (the JSON twin of
    :func:`wechat_mp.classify_reply`): ``success``/empty ack, a non-empty JSON object is passive."""
    stripped = body.strip()
    if status != 200:
        return "ack", f"status_{status}"
    if stripped in (b"", b"success"):
        return "ack", None if body == stripped else "whitespace"
    try:
        doc = payload.parse_object(stripped)
    except Rejected:
        return "ack", payload.describe(content_type, body)
    if not doc or ("Encrypt" in doc and not encrypted):
        return "ack", "bad_passive_json"
    return "passive", None


def _business_json(body: bytes) -> dict[str, Any] | None:
    try:
        return payload.parse_object(body.strip(), numbers_as_text=True)
    except Rejected:
        return None


class WechatMiniProgram(Protocol):
    """One Mini Program (or Channels shop) push URL: plaintext, compatible and safe mode, JSON or XML."""

    name = "wechat-miniprogram"
    methods: ClassVar[tuple[str, ...]] = ("GET", "POST")
    content_types: ClassVar[frozenset[str]] = _XML_TYPES | _JSON_TYPES  # the format comes from configuration
    default_dedup_ttl: ClassVar[float] = 600.0  # 5 s x 4 deliveries, with room; xpay_* events: XPAY_DEDUP_TTL
    last_attempt: ClassVar[int] = 4  # "总共重试三次" (S-mini-recv copies, UNVERIFIED as current)
    xpay_retry_schedule: ClassVar[tuple[float, ...]] = XPAY_RETRY_SCHEDULE

    def __init__(
        self,
        tokens: Sequence[tuple[str, str]],
        timestamp_window: float = 300.0,
        require_encryption: bool = False,
        random_bytes: Callable[[int], bytes] | None = None,
        *,
        aes_keys: Sequence[tuple[str, str]] = (),
        app_id: str | None = None,
        decrypt_for_backend: bool = False,
        format: Format = "json",
        channels: bool = False,
    ) -> None:
        super().__init__(*(() if random_bytes is None else (random_bytes,)))
        if not tokens:
            raise ValueError("a Mini Program route needs a token")
        if format not in ("json", "xml"):
            raise ValueError("format is json or xml (数据格式 in the Mini Program console)")
        if aes_keys and not app_id:
            raise ValueError("encoding_aes_key needs app_id (the AppID is checked inside every message)")
        if (decrypt_for_backend or require_encryption) and not aes_keys:
            raise ValueError("decrypt_for_backend / require_encryption need encoding_aes_key")
        if channels and format != "json":
            raise ValueError("a Channels shop pushes JSON only (视频号小店 只允许为JSON): set format: json")
        if channels and not aes_keys:
            raise ValueError("a Channels shop pushes in safe mode only: it needs encoding_aes_key and app_id")
        self.tokens = tuple(tokens)
        self.window = timestamp_window
        self.require_encryption = require_encryption or channels
        self.aes_keys = tuple(wxcrypt.AesKey.decode(key_id, key) for key_id, key in aes_keys)
        self.app_id = app_id or ""
        self.decrypt_for_backend = decrypt_for_backend
        self.format: Format = format
        self.channels = channels

    def verify(self, req: Inbound, now: float) -> Verified:
        if req.method == "GET":
            return url_verification(self.tokens, req, now, self.window)
        if req.method != "POST":
            raise Rejected("method_not_allowed", 405)
        key_id, ts, nonce = check_query(self.tokens, req, now, self.window)
        replay_key = f"wxa:{ts}:{nonce}:{req.query['signature'].lower()}"
        encrypt_type = req.query.get("encrypt_type", "raw")
        if encrypt_type == "aes":
            verified = self._verify_encrypted(req, key_id, replay_key)
        elif encrypt_type in ("", "raw"):
            verified = self._verify_plaintext(req, key_id, replay_key)
        else:
            raise Rejected("bad_encrypt_type", 400)
        check_openid(req, verified.message)
        event = event_of(verified.message)
        if not event.startswith(XPAY_PREFIX):
            return verified
        return dataclasses.replace(verified, dedup_ttl=XPAY_DEDUP_TTL, deadline=EVENT_DEADLINES.get(event))

    def _verify_plaintext(self, req: Inbound, key_id: str, replay_key: str) -> Verified:
        if self.require_encryption:
            raise Rejected("plaintext_not_allowed", 403)
        message = read_message(req.body, self.format)
        if "Encrypt" in message:  # an encrypted push whose encrypt_type/msg_signature were removed
            raise Rejected("missing_param", 403, "msg_signature")
        return Verified(
            message=message,
            replay_key=replay_key,
            replay_ttl=2 * self.window,
            key_id=key_id,
            authenticated=req.body,
        )

    def _outer(self, body: bytes) -> tuple[Mapping[str, object], str]:
        check_format(body, self.format)
        outer: Mapping[str, object] = read_json(body) if self.format == "json" else xmlmsg.parse(body)
        encrypted = outer.get("Encrypt")
        if not isinstance(encrypted, str) or not encrypted:
            raise Rejected("missing_encrypt", 400)
        return outer, encrypted

    def _verify_encrypted(self, req: Inbound, signature_key_id: str, replay_key: str) -> Verified:
        if not self.aes_keys:
            raise Rejected("encryption_not_configured", 403, "encrypt_type=aes but no encoding_aes_key")
        q = req.query
        if not q.get("msg_signature"):
            raise Rejected("missing_param", 403, "msg_signature")
        outer, encrypted = self._outer(req.body)
        token_id = wxcrypt.match_token(
            self.tokens, q["msg_signature"], (q["timestamp"], q["nonce"], encrypted), "bad_msg_signature"
        )
        opened = wxcrypt.decrypt(self.aes_keys, encrypted, (self.app_id,), "wrong_app_id")
        message = read_message(opened.message, self.format)
        if self.decrypt_for_backend:
            backend_body: bytes | None = opened.message
        else:
            backend_body = self._authenticated_outer(outer, message, opened.message, encrypted)
        return Verified(
            message=message,
            replay_key=replay_key,
            replay_ttl=2 * self.window,
            key_id=combined_key_id(signature_key_id, token_id, opened.key_id),
            backend_body=backend_body,
            drop_query=ENCRYPTED_QUERY if self.decrypt_for_backend else (),
            seal_context=wxcrypt.ReplyContext(
                token_id, opened.key_id, q["timestamp"], q["nonce"], json=self.format == "json"
            ),
            authenticated=opened.message,
        )

    def _authenticated_outer(
        self, outer: Mapping[str, object], message: Mapping[str, str], plain: bytes, encrypted: str
    ) -> bytes | None:
        """``None`` (forward the body as sent) when it holds only ``ToUserName`` (the message's own) and
        ``Encrypt``; else (compatible mode, or an edited envelope) the authenticated message plus ``Encrypt``."""
        if set(outer) <= {"ToUserName", "Encrypt"} and outer.get("ToUserName") == message.get("ToUserName"):
            return None
        if "Encrypt" in message:
            return plain
        return (
            json_with_encrypt(plain, encrypted) if self.format == "json" else with_encrypt(plain, encrypted)
        )

    def dedup_key(self, verified: Verified) -> str | None:
        """:func:`message_key`."""
        return message_key(verified, self.format)

    def success_reply(self, verified: Verified | None = None) -> Reply:
        if verified is not None and event_of(verified.message).startswith(XPAY_PREFIX):
            return XPAY_ACK
        return SUCCESS

    def failure_reply(self, reason: str, status: int) -> Reply:
        return Reply(status, b"", "text/plain; charset=utf-8", "reject")

    def backend_failure_reply(self, verified: Verified | None = None) -> Reply:
        return Reply(502, b"", "text/plain; charset=utf-8", "failure")

    def is_backend_failure(self, status: int, content_type: str, body: bytes) -> bool:
        """A JSON answer whose ``ErrCode`` is not 0: the virtual-payment way of saying "not processed"."""
        doc = _business_json(body) if body.lstrip()[:1] == b"{" else None
        return doc is not None and "ErrCode" in doc and payload.scalar_text(doc["ErrCode"]) != "0"

    def normalize(self, status: int, content_type: str, body: bytes, verified: Verified) -> Reply:
        if event_of(verified.message).startswith(XPAY_PREFIX):
            return self._normalize_xpay(status, content_type, body)
        encrypted = isinstance(verified.seal_context, wxcrypt.ReplyContext)
        if self.format == "json":
            kind, reason = classify_json_reply(status, content_type, body, encrypted)
        else:
            kind, reason = classify_reply(status, content_type, body, encrypted)
        if kind == "passive":
            default = wxcrypt.JSON_CONTENT_TYPE if self.format == "json" else wxcrypt.XML_CONTENT_TYPE
            return Reply(200, body, content_type or default, "passive")
        if reason is None:
            return Reply(200, body, content_type or SUCCESS.content_type, "ack")
        return Reply(200, SUCCESS.body, SUCCESS.content_type, "ack", normalized=reason)

    def _normalize_xpay(self, status: int, content_type: str, body: bytes) -> Reply:
        """A business JSON object passes unencrypted; anything else becomes the ErrCode 0 acknowledgement."""
        if status != 200:
            return dataclasses.replace(XPAY_ACK, normalized=f"status_{status}")
        stripped = body.strip()
        if stripped in (b"", b"success"):
            return dataclasses.replace(XPAY_ACK, normalized="empty" if not stripped else "success_text")
        if _business_json(stripped):
            return Reply(200, body, wxcrypt.JSON_CONTENT_TYPE, "ack")
        return dataclasses.replace(XPAY_ACK, normalized=payload.describe(content_type, body))

    def seal(self, reply: Reply, verified: Verified) -> Reply:
        """Encrypt a passive reply to an encrypted request in the route's format; acks pass unencrypted."""
        ctx = verified.seal_context
        if not isinstance(ctx, wxcrypt.ReplyContext):
            return reply
        keys = {k.key_id: k for k in self.aes_keys}
        return wxcrypt.seal_reply(
            reply, ctx, dict(self.tokens), keys, self.app_id, self.random_bytes, wxa=True
        )
