"""Official Account (公众号) message push: verification, decryption, idempotency keys and the passive-reply contract.

PROTOCOLS.md §1. ``signature = sha1(sorted(token, timestamp, nonce))`` is checked on every request but covers no
body, so plaintext POSTs are only as safe as the timestamp window plus the replay cache make them; the verified
request's ``replay_key`` feeds that cache. Safe and compatible mode (``encrypt_type=aes``, §1.3) add
``msg_signature`` over the ``Encrypt`` string exactly as received, the AES envelope (:mod:`wxcrypt`) and the AppID
inside it; in compatible mode the plaintext fields beside ``<Encrypt>`` are unauthenticated (§1.5), so the message
always comes from the ciphertext. With ``decrypt_for_backend`` the backend receives that plaintext XML without
``encrypt_type``/``msg_signature``, and :meth:`WechatMp.seal` re-encrypts its passive reply with a fresh random
prefix. Replies: ``success``, an empty body, or a well-formed passive-reply XML; anything else the backend says
would make WeChat show users "该公众号暂时无法提供服务", so it is replaced by ``success``. Token and AES key rotate
independently; ``key_id`` is "previous" as soon as either secret that verified the request is the previous one.

Reasons: ``missing_param``, ``bad_signature``, ``bad_msg_signature``, the timestamp reasons of
:func:`base.check_timestamp`, ``method_not_allowed``, ``bad_encrypt_type``, ``encryption_not_configured``,
``plaintext_not_allowed``, ``missing_encrypt``, the :mod:`wxcrypt` reasons (``wrong_app_id``) and the
:mod:`xmlmsg` reasons.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence

from proxy.protocols import idempotency, wxcrypt, xmlmsg
from proxy.protocols.base import (
    XML_CONTENT_TYPES,
    Inbound,
    Protocol,
    Rejected,
    Reply,
    Verified,
    check_timestamp,
)

SUCCESS = Reply(200, b"success", "text/plain; charset=utf-8", "ack")
PASSIVE_TYPES = frozenset({"text", "image", "voice", "video", "music", "news", "transfer_customer_service"})
PASSIVE_FIELDS = ("ToUserName", "FromUserName", "CreateTime", "MsgType")
ENVELOPE_FIELDS = ("Encrypt", "MsgSignature", "TimeStamp", "Nonce")
SUBSCRIBE_SENT_MSG_ID = "SubscribeMsgSentEvent.List.MsgID"
ENCRYPTED_QUERY = ("encrypt_type", "msg_signature")
QUERY_PARAMS = frozenset({"signature", "timestamp", "nonce", "openid", "echostr", *ENCRYPTED_QUERY})


def signature(token: str, timestamp: str, nonce: str, *extra: str) -> str:
    """``lowercase_hex(sha1(concat(sorted([token, timestamp, nonce, *extra]))))`` (plain string sort)."""
    return wxcrypt.sha1_signature(token, timestamp, nonce, *extra)


def check_signature(tokens: Sequence[tuple[str, str]], given: str, *parts: str) -> str:
    """Return the id of the token that produced ``given`` (constant-time compare), else raise Rejected."""
    return wxcrypt.match_token(tokens, given, parts, "bad_signature")


def combined_key_id(*key_ids: str) -> str:
    """One label for several rotated secrets: "previous" as soon as any of them was the previous one."""
    return next((k for k in key_ids if k != "current"), "current")


def check_query(
    tokens: Sequence[tuple[str, str]], req: Inbound, now: float, window: float
) -> tuple[str, str, str]:
    """``(token_id, timestamp, nonce)`` of a request whose query carries a valid ``signature`` within the window."""
    q = req.query
    for p in ("signature", "timestamp", "nonce"):
        if not q.get(p):
            raise Rejected("missing_param", 403, p)
    key_id = check_signature(tokens, q["signature"], q["timestamp"], q["nonce"])
    check_timestamp(q["timestamp"], now, window)
    return key_id, q["timestamp"], q["nonce"]


def url_verification(tokens: Sequence[tuple[str, str]], req: Inbound, now: float, window: float) -> Verified:
    """The GET that saving the server URL sends (§1.2): a valid ``signature`` earns ``echostr`` byte for byte."""
    if "echostr" not in req.query:
        raise Rejected("missing_param", 403, "echostr")
    key_id, _, _ = check_query(tokens, req, now, window)
    echo = Reply(200, req.query["echostr"].encode("utf-8", "surrogatepass"), SUCCESS.content_type, "echo")
    return Verified(key_id=key_id, direct_reply=echo)


def check_openid(req: Inbound, message: Mapping[str, str]) -> None:
    """The ``openid`` WeChat adds to the query is covered by no signature, yet some SDKs read the sender from it:
    it must name the message's own ``FromUserName`` (authenticated in safe mode), else ``openid_mismatch``. A
    captured request sent again with another ``openid`` first would otherwise reach the backend as verified, for
    another user, and its genuine twin be refused as a forgery."""
    openid = req.query.get("openid")
    if openid is not None and openid != message.get("FromUserName", openid):
        raise Rejected("openid_mismatch", 403)


def message_key(msg: Mapping[str, str], authenticated: bytes = b"") -> str:
    """The idempotency key of an MP (or WeCom app) message: its documented unique id, else a digest of it all.

    Messages carry ``MsgId``; ``MASSSENDJOBFINISH``/``TEMPLATESENDJOBFINISH`` carry ``MsgID`` (capital D), and
    ``subscribe_msg_sent_event`` nests it as ``SubscribeMsgSentEvent.List.MsgID`` (used only when the message
    holds one ``<List>``: the flat view keeps the first of several). Every other event has no id of its own, and
    sender + time + event collides for distinct events in one second (contact changes for different users, card
    events for different ``UserCardCode``s, WxJava#2705), so it is keyed by the digest of the authenticated
    message (``authenticated``, the plaintext XML; PROTOCOLS.md §1.5). A WeChat retry resends that message
    unchanged whatever its new timestamp, nonce and signature, so it still shares the key.
    """
    to = msg.get("ToUserName", "")
    if msg.get("MsgId"):
        return f"{to}|msg|{msg['MsgId']}"
    event = msg.get("Event", "")
    if msg.get("MsgID"):
        return f"{to}|{event}|{msg['MsgID']}"
    nested = msg.get(SUBSCRIBE_SENT_MSG_ID)
    if nested and authenticated.count(b"<List>") <= 1:
        return f"{to}|{event}|{nested}"
    return "digest|" + idempotency.digest(msg, authenticated)


def classify_reply(
    status: int, content_type: str, body: bytes, encrypted: bool = False
) -> tuple[str, str | None]:
    """``(kind, normalized_reason)`` of a backend 2xx answer under the MP passive-reply contract.

    ``encrypted``: the request was encrypted, so a backend that encrypts by itself may answer with an envelope.
    """
    stripped = body.strip()
    if status != 200:
        return "ack", f"status_{status}"
    if stripped == b"":
        return "ack", None if body == b"" else "whitespace"
    if stripped == b"success":
        return "ack", None if body == b"success" else "whitespace"
    if stripped.startswith(b"<xml"):
        try:
            fields = xmlmsg.parse(stripped)
        except Rejected:
            return "ack", "bad_xml"
        if all(fields.get(f) for f in PASSIVE_FIELDS) and fields["MsgType"] in PASSIVE_TYPES:
            return "passive", None
        if encrypted and all(fields.get(f) for f in ENVELOPE_FIELDS):
            return "passive", None
        return "ack", "bad_passive_xml"
    if "json" in content_type or stripped[:1] in (b"{", b"["):
        try:
            json.loads(stripped)
            return "ack", "json"
        except (ValueError, RecursionError):
            pass
    if "html" in content_type or stripped[:1] == b"<":
        return "ack", "html"
    return "ack", "not_xml"


def with_encrypt(plain_xml: bytes, encrypted: str) -> bytes:
    """The decrypted message XML with the ``<Encrypt>`` element appended before ``</xml>``."""
    body = plain_xml.rstrip()
    end = body.rfind(b"</xml>")
    return body[:end] + f"<Encrypt>{xmlmsg.cdata(encrypted)}</Encrypt>".encode() + body[end:]


class WechatMp(Protocol):
    """One Official Account route: plaintext, compatible and safe mode."""

    name = "wechat-mp"
    default_methods = ("GET", "POST")  # GET is URL verification
    lookup_fields = (("MsgId",), ("MsgID",), ("FromUserName", "CreateTime"))
    query_params = QUERY_PARAMS
    content_types = XML_CONTENT_TYPES
    last_attempt = 4  # the first delivery and "重试三次"

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
    ) -> None:
        super().__init__(*(() if random_bytes is None else (random_bytes,)))
        if not tokens:
            raise ValueError("an Official Account route needs a token")
        if aes_keys and not app_id:
            raise ValueError("encoding_aes_key needs app_id (the AppID is checked inside every message)")
        if decrypt_for_backend and not aes_keys:
            raise ValueError("decrypt_for_backend needs encoding_aes_key")
        self.tokens = tuple(tokens)
        self.window = timestamp_window
        self.require_encryption = require_encryption
        self.aes_keys = tuple(wxcrypt.AesKey.decode(key_id, key) for key_id, key in aes_keys)
        self.app_id = app_id or ""
        self.decrypt_for_backend = decrypt_for_backend

    def verify(self, req: Inbound, now: float) -> Verified:
        if req.method == "GET":
            return url_verification(self.tokens, req, now, self.window)
        if req.method != "POST":
            raise Rejected("method_not_allowed", 405)
        key_id, ts, nonce = check_query(self.tokens, req, now, self.window)
        replay_key = f"mp:{ts}:{nonce}:{wxcrypt.signature_text(req.query['signature'])}"
        encrypt_type = req.query.get("encrypt_type", "raw")
        if encrypt_type == "aes":
            verified = self._verify_encrypted(req, key_id, replay_key)
        elif encrypt_type in ("", "raw"):
            verified = self._verify_plaintext(req, key_id, replay_key)
        else:
            raise Rejected("bad_encrypt_type", 400)
        check_openid(req, verified.message)
        return verified

    # The steps a sender whose pushes are Official Account pushes in another format overrides (Mini Programs).

    def _read(self, body: bytes) -> dict[str, str]:
        """The flat fields of a message (the body, or the decrypted plaintext)."""
        return xmlmsg.parse(body)

    def _envelope(self, body: bytes) -> tuple[Mapping[str, object], str]:
        """The fields of an encrypted body and its ``Encrypt`` string (``missing_encrypt`` without one)."""
        outer = xmlmsg.parse(body)
        encrypted = outer.get("Encrypt", "")
        if not encrypted:
            raise Rejected("missing_encrypt", 400)
        return outer, encrypted

    def _backend_body(
        self, outer: Mapping[str, object], message: Mapping[str, str], plain: bytes, encrypted: str
    ) -> bytes | None:
        """What the backend receives instead of the body as sent (``None``: the body as sent)."""
        if self.decrypt_for_backend:
            return plain
        if set(outer) - {"ToUserName", "Encrypt"} or outer.get("ToUserName") != message.get("ToUserName"):
            # Compatible mode, or an envelope edited in transit: the fields beside <Encrypt> are unauthenticated
            # (msg_signature covers Encrypt alone), and a backend serving several accounts picks the account by
            # ToUserName. The backend gets the authenticated fields instead, with <Encrypt> kept for a backend
            # that decrypts by itself.
            return with_encrypt(plain, encrypted)
        return None

    def _reply_context(
        self, token_id: str, aes_key_id: str, timestamp: str, nonce: str
    ) -> wxcrypt.ReplyContext:
        return wxcrypt.ReplyContext(token_id, aes_key_id, timestamp, nonce)

    def _verify_plaintext(self, req: Inbound, key_id: str, replay_key: str) -> Verified:
        if self.require_encryption:
            raise Rejected("plaintext_not_allowed", 403)
        return Verified(
            message=self._read(req.body),
            replay_key=replay_key,
            replay_ttl=2 * self.window,
            key_id=key_id,
            authenticated=req.body,
        )

    def _verify_encrypted(self, req: Inbound, signature_key_id: str, replay_key: str) -> Verified:
        if not self.aes_keys:
            raise Rejected("encryption_not_configured", 403, "encrypt_type=aes but no encoding_aes_key")
        q = req.query
        if not q.get("msg_signature"):
            raise Rejected("missing_param", 403, "msg_signature")
        outer, encrypted = self._envelope(req.body)
        token_id = wxcrypt.match_token(
            self.tokens, q["msg_signature"], (q["timestamp"], q["nonce"], encrypted), "bad_msg_signature"
        )
        opened = wxcrypt.decrypt(self.aes_keys, encrypted, (self.app_id,), "wrong_app_id")
        message = self._read(opened.message)
        return Verified(
            message=message,
            replay_key=replay_key,
            replay_ttl=2 * self.window,
            key_id=combined_key_id(signature_key_id, token_id, opened.key_id),
            backend_body=self._backend_body(outer, message, opened.message, encrypted),
            drop_query=ENCRYPTED_QUERY if self.decrypt_for_backend else (),
            seal_context=self._reply_context(token_id, opened.key_id, q["timestamp"], q["nonce"]),
            authenticated=opened.message,
        )

    def dedup_key(self, verified: Verified) -> str | None:
        """:func:`message_key`: ``MsgId``/``MsgID``, else the digest of the (decrypted) message XML."""
        return message_key(verified.message, verified.authenticated)

    def success_reply(self, verified: Verified | None = None) -> Reply:
        return SUCCESS

    def failure_reply(self, reason: str, status: int) -> Reply:
        # Not from WeChat, so no user impact: tell the caller nothing beyond the status.
        return Reply(status, b"", "text/plain; charset=utf-8", "reject")

    def backend_failure_reply(self, verified: Verified | None = None) -> Reply:
        return Reply(502, b"", "text/plain; charset=utf-8", "failure")

    def normalize(self, status: int, content_type: str, body: bytes, verified: Verified) -> Reply:
        encrypted = isinstance(verified.seal_context, wxcrypt.ReplyContext)
        kind, reason = classify_reply(status, content_type, body, encrypted)
        if kind == "passive":
            return Reply(200, body, content_type or "application/xml", "passive")
        if reason is None:
            return Reply(200, body, content_type or "text/plain; charset=utf-8", "ack")
        return Reply(200, SUCCESS.body, SUCCESS.content_type, "ack", normalized=reason)

    def seal(self, reply: Reply, verified: Verified) -> Reply:
        """Encrypt a plaintext passive reply to an encrypted request (safe mode requires it, §1.3)."""
        ctx = verified.seal_context
        if not isinstance(ctx, wxcrypt.ReplyContext):
            return reply
        keys = {k.key_id: k for k in self.aes_keys}
        return wxcrypt.seal_reply(reply, ctx, dict(self.tokens), keys, self.app_id, self.random_bytes)
