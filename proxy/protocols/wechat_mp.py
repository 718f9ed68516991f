"""Official Account (公众号) message push: verification, idempotency keys and the passive-reply contract.

PROTOCOLS.md §1. ``signature = sha1(sorted(token, timestamp, nonce))`` covers no body, so plaintext POSTs are only
as safe as the timestamp window plus the replay cache make them; the verified request's ``replay_key`` feeds that
cache. Replies: ``success``, an empty body, or a well-formed passive-reply XML; anything else the backend says
would make WeChat show users "该公众号暂时无法提供服务", so it is replaced by ``success``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence

from proxy.protocols import xmlmsg
from proxy.protocols.base import (
    Inbound,
    Protocol,
    Rejected,
    Reply,
    Verified,
    check_timestamp,
    constant_time_equal,
)

SUCCESS = Reply(200, b"success", "text/plain; charset=utf-8", "ack")
PASSIVE_TYPES = frozenset({"text", "image", "voice", "video", "music", "news", "transfer_customer_service"})
PASSIVE_FIELDS = ("ToUserName", "FromUserName", "CreateTime", "MsgType")
# Events that carry ids of their own beside FromUserName/CreateTime (WxJava#2705: same user, same second).
EVENT_ID_FIELDS = ("MsgID", "trace_id", "Ticket", "OrderId", "KfAccount", "ScanCodeInfo.ScanResult")


def signature(token: str, timestamp: str, nonce: str, *extra: str) -> str:
    """``lowercase_hex(sha1(concat(sorted([token, timestamp, nonce, *extra]))))`` (plain string sort)."""
    return hashlib.sha1("".join(sorted((token, timestamp, nonce, *extra))).encode()).hexdigest()  # noqa: S324


def check_signature(tokens: Sequence[tuple[str, str]], given: str, *parts: str) -> str:
    """Return the id of the token that produced ``given`` (constant-time compare), else raise Rejected."""
    given = given.strip().lower()
    matched = ""
    for key_id, token in tokens:
        # Compare against every key so timing does not reveal which one (or whether any) matched.
        if constant_time_equal(signature(token, *parts), given) and not matched:
            matched = key_id
    if not matched:
        raise Rejected("bad_signature", 403)
    return matched


def message_key(msg: Mapping[str, str]) -> str | None:
    """MsgId (MsgID for MASSSENDJOBFINISH/TEMPLATESENDJOBFINISH), else sender+time+event+event key+event ids."""
    for name in ("MsgId", "MsgID"):
        if msg.get(name):
            return f"{msg.get('ToUserName', '')}|msg|{msg[name]}"
    if not msg.get("FromUserName") or not msg.get("CreateTime"):
        return None
    parts = [msg.get(f, "") for f in ("ToUserName", "FromUserName", "CreateTime", "Event", "EventKey")]
    parts += [f"{f}={msg[f]}" for f in EVENT_ID_FIELDS if msg.get(f)]
    return "|evt|" + "|".join(parts)


def classify_reply(status: int, content_type: str, body: bytes) -> tuple[str, str | None]:
    """``(kind, normalized_reason)`` of a backend 2xx answer under the MP passive-reply contract."""
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
        return "ack", "bad_passive_xml"
    if "json" in content_type or stripped[:1] in (b"{", b"["):
        try:
            json.loads(stripped)
            return "ack", "json"
        except ValueError:
            pass
    if "html" in content_type or stripped[:1] == b"<":
        return "ack", "html"
    return "ack", "not_xml"


class WechatMp(Protocol):
    """One Official Account route (plaintext mode; see ``envelope`` for safe/compatible mode)."""

    name = "wechat-mp"

    def __init__(
        self,
        tokens: Sequence[tuple[str, str]],
        timestamp_window: float = 300.0,
        require_encryption: bool = False,
        random_bytes: Callable[[int], bytes] | None = None,
    ) -> None:
        super().__init__(*(() if random_bytes is None else (random_bytes,)))
        if not tokens:
            raise ValueError("an Official Account route needs a token")
        self.tokens = tuple(tokens)
        self.window = timestamp_window
        self.require_encryption = require_encryption

    def _check(self, req: Inbound, now: float) -> tuple[str, str, str]:
        q = req.query
        for p in ("signature", "timestamp", "nonce"):
            if not q.get(p):
                raise Rejected("missing_param", 403, p)
        key_id = check_signature(self.tokens, q["signature"], q["timestamp"], q["nonce"])
        check_timestamp(q["timestamp"], now, self.window)
        return key_id, q["timestamp"], q["nonce"]

    def verify(self, req: Inbound, now: float) -> Verified:
        if req.method == "GET":
            if "echostr" not in req.query:
                raise Rejected("missing_param", 403, "echostr")
            key_id, _, _ = self._check(req, now)
            echo = Reply(200, req.query["echostr"].encode(), "text/plain; charset=utf-8", "echo")
            return Verified(key_id=key_id, direct_reply=echo)
        if req.method != "POST":
            raise Rejected("method_not_allowed", 405)
        key_id, ts, nonce = self._check(req, now)
        if req.query.get("encrypt_type", "raw") not in ("", "raw"):
            raise Rejected("encryption_not_configured", 403, "encrypt_type=aes but no encoding_aes_key")
        if self.require_encryption:
            raise Rejected("plaintext_not_allowed", 403)
        message = xmlmsg.parse(req.body)
        return Verified(
            message=message,
            replay_key=f"mp:{ts}:{nonce}:{req.query['signature'].lower()}",
            replay_ttl=2 * self.window,
            key_id=key_id,
        )

    def dedup_key(self, verified: Verified) -> str | None:
        return message_key(verified.message)

    def success_reply(self) -> Reply:
        return SUCCESS

    def failure_reply(self, reason: str, status: int) -> Reply:
        # Not from WeChat, so no user impact: tell the caller nothing beyond the status.
        return Reply(status, b"", "text/plain; charset=utf-8", "reject")

    def backend_failure_reply(self) -> Reply:
        return Reply(502, b"", "text/plain; charset=utf-8", "failure")

    def normalize(self, status: int, content_type: str, body: bytes, verified: Verified) -> Reply:
        kind, reason = classify_reply(status, content_type, body)
        if kind == "passive":
            return Reply(200, body, content_type or "application/xml", "passive")
        if reason is None:
            return Reply(200, body, content_type or "text/plain; charset=utf-8", "ack")
        return Reply(200, SUCCESS.body, SUCCESS.content_type, "ack", normalized=reason)
