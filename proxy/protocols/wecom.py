"""WeCom (企业微信) callbacks: URL verification, encrypted messages, the robot JSON variant and replies.

PROTOCOLS.md §2 (AES envelope §1.3, see :mod:`wxcrypt`). Everything is encrypted:

- GET ``msg_signature,timestamp,nonce,echostr``: ``echostr`` is itself an envelope. ``msg_signature`` is checked
  over the URL-decoded echostr, it is decrypted, the receiveid checked, and the plaintext is the reply body
  (no quotes, BOM or newline added; WeCom wants it within 1 s, so wxgate answers by itself).
- POST ``msg_signature,timestamp,nonce``: XML ``<ToUserName/><Encrypt/><AgentID/>``, or for smart robots JSON
  ``{"encrypt": ...}`` whose plaintext is JSON. Only the decrypted content is trusted.

The receiveid is the corpid (in-house apps), the suiteid or authorising corpid (third-party apps) or "" (robots,
personal-subject apps). Replies: 200 with an empty body or an encrypted passive reply (XML, or for robots the JSON
envelope ``{"encrypt","msgsignature","timestamp","nonce"}``); any non-200 makes WeCom retry (5 s, 3 retries).
With ``decrypt_for_backend`` the backend receives the plaintext (XML, or JSON for robots) without
``msg_signature``, and its plaintext passive reply is sealed with a fresh random prefix on the way out.
``key_id`` is "previous" when the token or the AES key that verified the request is the previous one.

Reasons: ``missing_param``, ``bad_msg_signature``, the timestamp reasons, ``method_not_allowed``,
``missing_encrypt``, ``bad_plaintext`` (echostr not UTF-8), the :mod:`wxcrypt` reasons (``wrong_receive_id``),
and the :mod:`xmlmsg`/:mod:`payload` parse reasons.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence

from proxy.protocols import payload, wxcrypt, xmlmsg
from proxy.protocols.base import (
    JSON_CONTENT_TYPES,
    XML_CONTENT_TYPES,
    Inbound,
    Protocol,
    Rejected,
    Reply,
    Verified,
    check_timestamp,
)
from proxy.protocols.wechat_mp import classify_reply, combined_key_id, message_key

EMPTY = Reply(200, b"", "text/plain; charset=utf-8", "ack")
SIGNED_QUERY = ("msg_signature", "timestamp", "nonce")


def _is_json(req: Inbound) -> bool:
    return "json" in req.content_type or req.body.lstrip()[:1] == b"{"


class Wecom(Protocol):
    """One WeCom callback URL (an app, a third-party suite, or a smart robot)."""

    name = "wecom"
    lookup_fields = (("MsgId",), ("msgid",), ("FromUserName", "CreateTime"))
    default_methods = ("GET", "POST")  # GET is URL verification
    query_params = frozenset({"msg_signature", "timestamp", "nonce", "echostr"})
    content_types = XML_CONTENT_TYPES | JSON_CONTENT_TYPES  # smart robots post JSON {"encrypt": ...}
    last_attempt = 4  # the first delivery and "重试三次"

    def __init__(
        self,
        tokens: Sequence[tuple[str, str]],
        aes_keys: Sequence[tuple[str, str]],
        receive_id: str,
        timestamp_window: float = 300.0,
        decrypt_for_backend: bool = False,
        random_bytes: Callable[[int], bytes] | None = None,
    ) -> None:
        super().__init__(*(() if random_bytes is None else (random_bytes,)))
        if not tokens or not aes_keys:
            raise ValueError("a WeCom route needs a token and an encoding_aes_key")
        self.tokens = tuple(tokens)
        self.aes_keys = tuple(wxcrypt.AesKey.decode(key_id, key) for key_id, key in aes_keys)
        self.receive_id = receive_id
        self.window = timestamp_window
        self.decrypt_for_backend = decrypt_for_backend

    def _signed(self, req: Inbound, now: float, encrypted: str) -> tuple[str, str, str]:
        q = req.query
        token_id = wxcrypt.match_token(
            self.tokens, q["msg_signature"], (q["timestamp"], q["nonce"], encrypted), "bad_msg_signature"
        )
        check_timestamp(q["timestamp"], now, self.window)
        return token_id, q["timestamp"], q["nonce"]

    def _open(self, encrypted: str) -> wxcrypt.Opened:
        return wxcrypt.decrypt(self.aes_keys, encrypted, (self.receive_id,), "wrong_receive_id")

    def verify(self, req: Inbound, now: float) -> Verified:
        if req.method not in ("GET", "POST"):
            raise Rejected("method_not_allowed", 405)
        for p in (*SIGNED_QUERY, "echostr") if req.method == "GET" else SIGNED_QUERY:
            if not req.query.get(p):
                raise Rejected("missing_param", 403, p)
        return self._verify_url(req, now) if req.method == "GET" else self._verify_message(req, now)

    def _verify_url(self, req: Inbound, now: float) -> Verified:
        # The echostr is base64 and holds no spaces: a space is a "+" that a form decoder turned into one.
        echostr = req.query["echostr"].replace(" ", "+")
        token_id, _, _ = self._signed(req, now, echostr)
        opened = self._open(echostr)
        try:
            opened.message.decode("utf-8")
        except UnicodeDecodeError:
            raise Rejected("bad_plaintext", 403) from None
        echo = Reply(200, opened.message, "text/plain; charset=utf-8", "echo")
        return Verified(key_id=combined_key_id(token_id, opened.key_id), direct_reply=echo)

    def _verify_message(self, req: Inbound, now: float) -> Verified:
        robot = _is_json(req)
        outer: Mapping[str, object]
        if robot:
            outer = payload.parse_object(req.body)
            encrypted = outer.get("encrypt")
        else:
            outer = xmlmsg.parse(req.body)
            encrypted = outer.get("Encrypt")
        if not isinstance(encrypted, str) or not encrypted:
            raise Rejected("missing_encrypt", 400)
        token_id, ts, nonce = self._signed(req, now, encrypted)
        opened = self._open(encrypted)
        if robot:
            message = payload.flatten(payload.parse_object(opened.message))
        else:
            message = xmlmsg.parse(opened.message)
        backend_body = (
            opened.message if self.decrypt_for_backend else _authenticated_outer(outer, message, encrypted)
        )
        return Verified(
            message=message,
            replay_key=f"wecom:{ts}:{nonce}:{wxcrypt.signature_text(req.query['msg_signature'])}",
            replay_ttl=2 * self.window,
            key_id=combined_key_id(token_id, opened.key_id),
            backend_body=backend_body,
            drop_query=("msg_signature",) if self.decrypt_for_backend else (),
            seal_context=wxcrypt.ReplyContext(token_id, opened.key_id, ts, nonce, json=robot),
            authenticated=opened.message,
        )

    def dedup_key(self, verified: Verified) -> str | None:
        """Robots: ``msgid``. Apps, within the AgentID: ``MsgId`` for messages, else the digest of the decrypted
        message (:func:`wechat_mp.message_key`). Events such as ``change_contact`` (``ChangeType`` for different
        ``UserID``/``Id``/``TagId``), ``change_external_contact`` (``ExternalUserID``) and
        ``change_external_chat`` (``ChatId``) carry no id of their own and come many to the same second."""
        msg = verified.message
        if msg.get("msgid"):
            return f"robot|{msg.get('aibotid', '')}|{msg['msgid']}"
        return f"agent:{msg.get('AgentID', '')}|{message_key(msg, verified.authenticated)}"

    def success_reply(self, verified: Verified | None = None) -> Reply:
        return EMPTY

    def failure_reply(self, reason: str, status: int) -> Reply:
        return Reply(status, b"", "text/plain; charset=utf-8", "reject")

    def backend_failure_reply(self, verified: Verified | None = None) -> Reply:
        return Reply(502, b"", "text/plain; charset=utf-8", "failure")

    def normalize(self, status: int, content_type: str, body: bytes, verified: Verified) -> Reply:
        """200 empty stays; a passive reply (plaintext or already encrypted) passes; anything else -> 200 empty."""
        ctx = verified.seal_context
        if isinstance(ctx, wxcrypt.ReplyContext) and ctx.json:
            return self._normalize_json(status, content_type, body)
        kind, reason = classify_reply(status, content_type, body, encrypted=True)
        if kind == "passive":
            return Reply(200, body, content_type or wxcrypt.XML_CONTENT_TYPE, "passive")
        if status == 200 and body == b"":
            return EMPTY
        return Reply(200, b"", EMPTY.content_type, "ack", normalized=reason or "success_text")

    def _normalize_json(self, status: int, content_type: str, body: bytes) -> Reply:
        if status == 200 and body == b"":
            return EMPTY
        if status != 200:
            return Reply(200, b"", EMPTY.content_type, "ack", normalized=f"status_{status}")
        try:
            doc = json.loads(body)
        except (ValueError, RecursionError):
            return Reply(200, b"", EMPTY.content_type, "ack", normalized=payload.describe(content_type, body))
        if isinstance(doc, dict) and doc:
            return Reply(200, body, wxcrypt.JSON_CONTENT_TYPE, "passive")
        return Reply(200, b"", EMPTY.content_type, "ack", normalized="json")

    def seal(self, reply: Reply, verified: Verified) -> Reply:
        ctx = verified.seal_context
        if not isinstance(ctx, wxcrypt.ReplyContext):
            return reply
        keys = {k.key_id: k for k in self.aes_keys}
        return wxcrypt.seal_reply(reply, ctx, dict(self.tokens), keys, self.receive_id, self.random_bytes)


def _authenticated_outer(
    outer: Mapping[str, object], message: Mapping[str, str], encrypted: str
) -> bytes | None:
    """The envelope to forward when the backend decrypts by itself: ``None`` (the body as sent) when it holds
    nothing but what the ciphertext authenticates, else one rebuilt from authenticated values.

    ``msg_signature`` covers ``Encrypt`` alone: fields placed beside it (a forged ``FromUserName``, ``Content``)
    or an edited ``ToUserName``/``AgentID`` would reach a backend that reads the envelope before decrypting,
    marked verified. The rebuilt envelope takes ``ToUserName`` and ``AgentID`` from the decrypted message."""
    if "encrypt" in outer:  # a robot's {"encrypt": …}
        return None if set(outer) == {"encrypt"} else json.dumps({"encrypt": encrypted}).encode()
    extra = set(outer) - {"ToUserName", "AgentID", "Encrypt"}
    mismatch = any(k in outer and outer[k] != message.get(k) for k in ("ToUserName", "AgentID"))
    if not extra and not mismatch:
        return None
    rebuilt: dict[str, str | int] = {k: message[k] for k in ("ToUserName", "AgentID") if k in message}
    rebuilt["Encrypt"] = encrypted
    return xmlmsg.build(rebuilt)
