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

:class:`WechatMiniProgram` is a :class:`wechat_mp.WechatMp` that reads its configured format and adds the
per-event contracts. Protocol facts (class attributes, :class:`base.Protocol`): ``default_methods`` GET and POST,
``content_types`` XML and JSON, ``default_dedup_ttl`` 10 min and ``last_attempt`` 4 as for Official Accounts
(5 s, "总共重试三次"), policy ``ack``; ``xpay_retry_schedule`` is WeChat's schedule for ``xpay_*`` deliveries.

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
from proxy.protocols.base import JSON_CONTENT_TYPES, XML_CONTENT_TYPES, Inbound, Rejected, Reply, Verified
from proxy.protocols.wechat_mp import SUCCESS, WechatMp, with_encrypt

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


def read_json(body: bytes, numbers_as_text: bool = True) -> dict[str, Any]:
    """A strict JSON object, numbers as their text by default (see the module docstring); else Rejected (400)."""
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        raise Rejected("malformed_json", 400, "not UTF-8") from None
    return payload.parse_object(body, numbers_as_text, max_number_len=MAX_NUMBER_LEN, max_depth=MAX_DEPTH)


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
    if "ErrCode" in doc:
        # A virtual-payment answer, never encrypted. Recognised by its shape as well as by the event, because an
        # outbox redelivery normalizes the backend's answer without the message (only the seal context).
        return "ack", None
    return "passive", None


def _business_json(body: bytes) -> dict[str, Any] | None:
    try:
        return payload.parse_object(body.strip(), numbers_as_text=True)
    except Rejected:
        return None


class WechatMiniProgram(WechatMp):
    """One Mini Program (or Channels shop) push URL: an Official Account push in JSON or XML, with per-event
    contracts. Plaintext, compatible and safe mode, URL verification, rotation and the ``signature`` and openid
    checks are :class:`WechatMp`'s; this class reads the configured format and adds the events' contracts."""

    name = "wechat-miniprogram"
    content_types = XML_CONTENT_TYPES | JSON_CONTENT_TYPES  # the format comes from configuration
    # default_methods (GET is URL verification) and last_attempt ("总共重试三次", S-mini-recv copies; UNVERIFIED
    # as current) are the Official Account's; xpay_* events carry their own TTL (Verified.dedup_ttl).
    xpay_retry_schedule: ClassVar[tuple[float, ...]] = XPAY_RETRY_SCHEDULE
    reply_fields = ("Event",)  # normalize answers xpay_* events in their own form

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
        if format not in ("json", "xml"):
            raise ValueError("format is json or xml (数据格式 in the Mini Program console)")
        if require_encryption and not aes_keys:
            raise ValueError("require_encryption needs encoding_aes_key")
        if channels and format != "json":
            raise ValueError("a Channels shop pushes JSON only (视频号小店 只允许为JSON): set format: json")
        if channels and not aes_keys:
            raise ValueError("a Channels shop pushes in safe mode only: it needs encoding_aes_key and app_id")
        super().__init__(
            tokens,
            timestamp_window,
            require_encryption or channels,
            random_bytes,
            aes_keys=aes_keys,
            app_id=app_id,
            decrypt_for_backend=decrypt_for_backend,
        )
        self.format: Format = format
        self.channels = channels

    def verify(self, req: Inbound, now: float) -> Verified:
        verified = super().verify(req, now)
        event = event_of(verified.message)
        if not event.startswith(XPAY_PREFIX):
            return verified
        return dataclasses.replace(verified, dedup_ttl=XPAY_DEDUP_TTL, deadline=EVENT_DEADLINES.get(event))

    def _read(self, body: bytes) -> dict[str, str]:
        return read_message(body, self.format)

    def _envelope(self, body: bytes) -> tuple[Mapping[str, object], str]:
        if self.format == "xml":
            return super()._envelope(body)
        check_format(body, self.format)
        outer = read_json(
            body, numbers_as_text=False
        )  # an "Encrypt" that is not a JSON string is no ciphertext
        encrypted = outer.get("Encrypt")
        if not isinstance(encrypted, str) or not encrypted:
            raise Rejected("missing_encrypt", 400)
        return outer, encrypted

    def _verify_plaintext(self, req: Inbound, key_id: str, replay_key: str) -> Verified:
        verified = super()._verify_plaintext(req, key_id, replay_key)
        if "Encrypt" in verified.message:  # an encrypted push whose encrypt_type/msg_signature were removed
            raise Rejected("missing_param", 403, "msg_signature")
        return verified

    def _backend_body(
        self, outer: Mapping[str, object], message: Mapping[str, str], plain: bytes, encrypted: str
    ) -> bytes | None:
        """The body as sent when it holds only ``ToUserName`` (the message's own) and ``Encrypt``; else (compatible
        mode, an edited envelope) the authenticated message plus ``Encrypt``; the plaintext for a plaintext
        backend."""
        if self.decrypt_for_backend or "Encrypt" in message:
            return plain
        if set(outer) <= {"ToUserName", "Encrypt"} and outer.get("ToUserName") == message.get("ToUserName"):
            return None
        return (
            json_with_encrypt(plain, encrypted) if self.format == "json" else with_encrypt(plain, encrypted)
        )

    def _reply_context(
        self, token_id: str, aes_key_id: str, timestamp: str, nonce: str
    ) -> wxcrypt.ReplyContext:
        return wxcrypt.ReplyContext(token_id, aes_key_id, timestamp, nonce, json=self.format == "json")

    def dedup_key(self, verified: Verified) -> str | None:
        """:func:`message_key`."""
        return message_key(verified, self.format)

    def success_reply(self, verified: Verified | None = None) -> Reply:
        if verified is not None and event_of(verified.message).startswith(XPAY_PREFIX):
            return XPAY_ACK
        return SUCCESS

    def is_backend_failure(self, status: int, content_type: str, body: bytes) -> bool:
        """A JSON answer whose ``ErrCode`` is not 0: the virtual-payment way of saying "not processed"."""
        doc = _business_json(body) if body.lstrip()[:1] == b"{" else None
        return doc is not None and "ErrCode" in doc and payload.scalar_text(doc["ErrCode"]) != "0"

    def normalize(self, status: int, content_type: str, body: bytes, verified: Verified) -> Reply:
        if event_of(verified.message).startswith(XPAY_PREFIX):
            return self._normalize_xpay(status, content_type, body)
        if self.format == "xml":
            return super().normalize(status, content_type, body, verified)
        encrypted = isinstance(verified.seal_context, wxcrypt.ReplyContext)
        kind, reason = classify_json_reply(status, content_type, body, encrypted)
        if kind == "passive":
            return Reply(200, body, content_type or wxcrypt.JSON_CONTENT_TYPE, "passive")
        if reason is None:
            default = wxcrypt.JSON_CONTENT_TYPE if body.startswith(b"{") else SUCCESS.content_type
            return Reply(200, body, content_type or default, "ack")
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
