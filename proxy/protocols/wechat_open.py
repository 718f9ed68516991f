"""Open Platform third-party platform (第三方平台, "component"): its two push URLs, one route each.

PROTOCOLS-MINI-OPEN.md §A2. Safe mode and XML only; every push carries ``msg_signature`` over the ``Encrypt``
value (as the XML parser decoded it) and the §1.3 envelope of :mod:`wxcrypt`, keyed by the *platform's* token and
EncodingAESKey, whose trailing receiveid is the component appid, whichever account the push is for (V-C1).
``signature`` is checked too when present (SDKs behind the proxy check it). A GET with ``echostr`` is answered
like an Official Account's, though WeChat documents none for either URL.

- ``kind="authorization"`` (授权事件接收URL): ``<xml><AppId/><Encrypt/></xml>``, ``AppId`` the component appid.
  ``component_verify_ticket`` every 10 minutes, ``authorized``/``unauthorized``/``updateauthorized``, fast
  registration and WeChat-verification/ICP notices. The reply is exactly ``success`` whatever the backend
  answers: anything else is the first documented cause of missing tickets.
- ``kind="messages"`` (消息与事件接收URL): the console URL holds ``$APPID$``, which the route's path template
  captures as ``path_params["appid"]``; messages of official accounts and mini programs alike, MP-style replies
  (``success``, empty, or a passive reply, encrypted with the component key and appid; a backend's own
  encrypted reply passes unchanged, which 全网发布 depends on). Neither the path appid nor the ``openid``
  query parameter is signed: with ``authorizers`` (appid -> original id ``gh_…``) the appid must be listed and
  the decrypted ``ToUserName`` be its original id, so a push captured for A and replayed under ``/B/`` is
  refused and the tenant is verified; without the map the tenant is reported unverified. The 10 全网发布 test
  accounts (§A2.4) are always accepted, bound to their original ids.

Dedup keys: authorization events per the §A2.2 table, ticket pushes by digest (never the ticket value alone,
which repeats across pushes, nor ``AppId+InfoType+CreateTime``, which two pushes in one second share), the
WeChat-verification/ICP notices by digest (``task_status`` and ``apply_status`` move independently, so task
id + one status would merge distinct notices); messages as Official Accounts (:func:`wechat_mp.message_key`).

Reasons: ``missing_param``, ``bad_signature``, ``bad_msg_signature``, the timestamp reasons,
``method_not_allowed``, ``plaintext_not_allowed``, ``bad_encrypt_type``, ``missing_encrypt``, ``wrong_app_id``
(the envelope's or the body's ``AppId``), ``bad_appid``, ``unknown_authorizer``, ``authorizer_mismatch``,
``openid_mismatch``, ``wrong_push_url`` (a push made for the platform's other URL), and the
:mod:`wxcrypt`/:mod:`xmlmsg` reasons.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import ClassVar, Literal

from proxy.protocols import idempotency, wxcrypt, xmlmsg
from proxy.protocols.base import Inbound, Protocol, Rejected, Reply, Verified, check_timestamp
from proxy.protocols.wechat_mp import (
    ENCRYPTED_QUERY,
    QUERY_PARAMS,
    SUCCESS,
    check_openid,
    classify_reply,
    combined_key_id,
    message_key,
    url_verification,
)

Kind = Literal["authorization", "messages"]
_APPID = re.compile(r"wx[0-9a-f]{16}")

# 全网发布 test accounts (§A2.4, S-op-release): official accounts, then mini programs, groups 1-5.
RELEASE_TEST_ACCOUNTS: Mapping[str, str] = MappingProxyType(
    {
        "wx570bc396a51b8ff8": "gh_3c884a361561",
        "wx9252c5e0bb1836fc": "gh_c0f28a78b318",
        "wx8e1097c5bc82cde9": "gh_3f222ed8d140",
        "wx14550af28c71a144": "gh_26128078e9ab",
        "wxa35b9c23cfe664eb": "gh_2b3713f184a6",
        "wxd101a85aa106f53e": "gh_8dad206e9538",
        "wxc39235c15087f6f3": "gh_905ae9d01059",
        "wx7720d01d4b2a4500": "gh_393666f1fdf4",
        "wx05d483572dcd5d8b": "gh_39abb5d4e1b7",
        "wx5910277cae6fd970": "gh_7818dcb60240",
    }
)

# §A2.2: the fields that identify one authorization event of each InfoType. Every one must be present and
# non-empty, else the event is keyed by its digest.
AUTHORIZATION_KEYS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "authorized": ("InfoType", "AuthorizerAppid", "AuthorizationCode"),
        "updateauthorized": ("InfoType", "AuthorizerAppid", "AuthorizationCode"),
        "unauthorized": ("InfoType", "AuthorizerAppid", "CreateTime"),
        "notify_third_fasteregister": ("InfoType", "appid", "status", "CreateTime"),
        "notify_third_fastregisterbetaapp": ("InfoType", "appid", "status", "CreateTime"),
        "notify_third_fastverifybetaapp": ("InfoType", "appid", "status", "CreateTime"),
    }
)


def is_appid(segment: str) -> bool:
    """Whether ``segment`` is an appid as WeChat issues them: ``wx`` and 16 lower-case hex digits."""
    return _APPID.fullmatch(segment) is not None


def authorization_key(message: Mapping[str, str], authenticated: bytes = b"") -> str:
    """The idempotency key of an authorization event: its §A2.2 identity, else the digest of its plaintext.

    A ticket push is keyed by the digest of its plaintext (``AppId``, ``CreateTime``, the ticket): a retry of one
    push shares it, while the ticket, which can repeat across pushes (WxJava#782), never keys it alone (every push
    reaches the backend, which keeps the newest), nor can ``CreateTime`` (two pushes of different tickets in one
    second are two notices; the newer one dropped leaves the backend with a stale ticket)."""
    fields = AUTHORIZATION_KEYS.get(message.get("InfoType", ""), ())
    return idempotency.fields_key(message, fields) or "digest|" + idempotency.digest(message, authenticated)


def _bindings(authorizers: Mapping[str, str] | None) -> dict[str, str]:
    bound = dict(RELEASE_TEST_ACCOUNTS)
    for appid, original_id in (authorizers or {}).items():
        if not is_appid(appid):
            raise ValueError(f"authorizers: {appid!r} is not an appid (wx and 16 hex digits)")
        if not original_id.startswith("gh_"):
            raise ValueError(f"authorizers: {appid}'s original id must start with gh_")
        if bound.setdefault(appid, original_id) != original_id:
            raise ValueError(
                f"authorizers: {appid} is a 全网发布 test account, whose original id is {bound[appid]}"
            )
    return bound


class WechatOpenPlatform(Protocol):
    """One of a third-party platform's two push URLs (``kind``)."""

    name = "wechat-open-platform"
    lookup_fields = (("MsgId",), ("FromUserName", "CreateTime"))
    query_params = QUERY_PARAMS
    default_methods: ClassVar[tuple[str, ...]] = ("GET", "POST")  # GET: echostr, as an Official Account's
    content_types: ClassVar[frozenset[str]] = frozenset({"", "text/xml", "application/xml", "text/plain"})
    default_dedup_ttl: ClassVar[float] = 600.0  # MP's: retries end within ~20 s; tickets come every 10 min
    last_attempt: ClassVar[int] = 4  # MP's "总共重试三次"; UNVERIFIED for either platform URL (§A2.2, §A2.3)

    def __init__(
        self,
        component_app_id: str,
        tokens: Sequence[tuple[str, str]],
        aes_keys: Sequence[tuple[str, str]],
        *,
        kind: Kind,
        timestamp_window: float = 300.0,
        decrypt_for_backend: bool = False,
        authorizers: Mapping[str, str] | None = None,
        random_bytes: Callable[[int], bytes] | None = None,
    ) -> None:
        super().__init__(*(() if random_bytes is None else (random_bytes,)))
        if not is_appid(component_app_id):
            raise ValueError("component_app_id must be the platform's appid (wx and 16 hex digits)")
        if not tokens or not aes_keys:
            raise ValueError("a third-party platform route needs its token and encoding_aes_key")
        if kind not in ("authorization", "messages"):
            raise ValueError("kind is authorization or messages")
        if authorizers is not None and kind != "messages":
            raise ValueError("authorizers bind the appid of a messages route's path")
        self.component_app_id = component_app_id
        self.tokens = tuple(tokens)
        self.aes_keys = tuple(wxcrypt.AesKey.decode(key_id, key) for key_id, key in aes_keys)
        self.kind = kind
        self.window = timestamp_window
        self.decrypt_for_backend = decrypt_for_backend
        self.bound = authorizers is not None
        self.authorizers = _bindings(authorizers)

    def verify(self, req: Inbound, now: float) -> Verified:
        appid = self._path_appid(req) if self.kind == "messages" else None
        if req.method == "GET":
            return url_verification(self.tokens, req, now, self.window)
        if req.method != "POST":
            raise Rejected("method_not_allowed", 405)
        verified = self._verify_push(req, now)
        if appid is None:
            return verified
        check_openid(req, verified.message)
        original_id = self.authorizers.get(appid)
        if original_id is not None and verified.message.get("ToUserName") != original_id:
            # A push for another account (captured, and replayed under this appid's path).
            raise Rejected("authorizer_mismatch", 403)
        return dataclasses.replace(verified, tenant=appid, tenant_verified=original_id is not None)

    def _path_appid(self, req: Inbound) -> str:
        appid = req.path_params.get("appid", "")
        if not is_appid(appid):
            raise Rejected("bad_appid", 404)
        if self.bound and appid not in self.authorizers:
            raise Rejected("unknown_authorizer", 403)
        return appid

    def _signed(self, req: Inbound, now: float) -> str:
        """Check the parameters every push carries, and ``signature`` when it is there (SDKs check it too)."""
        q = req.query
        for p in ("timestamp", "nonce", "msg_signature"):
            if not q.get(p):
                raise Rejected("missing_param", 403, p)
        key_id = "current"
        if "signature" in q:
            key_id = wxcrypt.match_token(
                self.tokens, q["signature"], (q["timestamp"], q["nonce"]), "bad_signature"
            )
        check_timestamp(q["timestamp"], now, self.window)
        return key_id

    def _verify_push(self, req: Inbound, now: float) -> Verified:
        q = req.query
        encrypt_type = q.get("encrypt_type", "")
        if encrypt_type in ("", "raw"):
            raise Rejected("plaintext_not_allowed", 403, "third-party platforms push in safe mode only")
        if encrypt_type != "aes":
            raise Rejected("bad_encrypt_type", 400)
        signature_id = self._signed(req, now)
        outer = xmlmsg.parse(req.body)
        if self.kind == "authorization" and outer.get("AppId") != self.component_app_id:
            raise Rejected("wrong_app_id", 403, "the body's AppId is not the component appid")
        encrypted = outer.get("Encrypt", "")
        if not encrypted:
            raise Rejected("missing_encrypt", 400)
        ts, nonce = q["timestamp"], q["nonce"]
        token_id = wxcrypt.match_token(
            self.tokens, q["msg_signature"], (ts, nonce, encrypted), "bad_msg_signature"
        )
        opened = wxcrypt.decrypt(self.aes_keys, encrypted, (self.component_app_id,), "wrong_app_id")
        message = xmlmsg.parse(opened.message)
        _check_url(self.kind, message)
        if (
            self.kind == "authorization"
            and message.get("AppId", self.component_app_id) != self.component_app_id
        ):
            raise Rejected("wrong_app_id", 403, "the event's AppId is not the component appid")
        if self.decrypt_for_backend:
            backend_body: bytes | None = opened.message
        elif self.kind == "authorization":  # AppId was checked, and the envelope's receiveid binds it
            backend_body = _authenticated_outer(outer, "AppId", self.component_app_id, encrypted)
        else:
            backend_body = _authenticated_outer(outer, "ToUserName", message.get("ToUserName"), encrypted)
        return Verified(
            message=message,
            replay_key=f"open:{ts}:{nonce}:{wxcrypt.signature_text(q['msg_signature'])}",
            replay_ttl=2 * self.window,
            key_id=combined_key_id(signature_id, token_id, opened.key_id),
            backend_body=backend_body,
            drop_query=ENCRYPTED_QUERY if self.decrypt_for_backend else (),
            seal_context=(
                wxcrypt.ReplyContext(token_id, opened.key_id, ts, nonce) if self.kind == "messages" else None
            ),
            authenticated=opened.message,
        )

    def dedup_key(self, verified: Verified) -> str | None:
        """Authorization events: :func:`authorization_key`. Messages: :func:`wechat_mp.message_key`."""
        if self.kind == "authorization":
            return authorization_key(verified.message, verified.authenticated)
        return message_key(verified.message, verified.authenticated)

    def success_reply(self, verified: Verified | None = None) -> Reply:
        return SUCCESS

    def failure_reply(self, reason: str, status: int) -> Reply:
        return Reply(status, b"", SUCCESS.content_type, "reject")

    def backend_failure_reply(self, verified: Verified | None = None) -> Reply:
        return Reply(502, b"", SUCCESS.content_type, "failure")

    def normalize(self, status: int, content_type: str, body: bytes, verified: Verified) -> Reply:
        """Authorization URL: always ``success``. Messages: the Official Account passive-reply contract."""
        kind, reason = classify_reply(status, content_type, body, encrypted=True)
        if self.kind == "authorization":
            if status == 200 and body == SUCCESS.body:
                return SUCCESS
            return Reply(200, SUCCESS.body, SUCCESS.content_type, "ack", normalized=reason or "not_success")
        if kind == "passive":
            return Reply(200, body, content_type or wxcrypt.XML_CONTENT_TYPE, "passive")
        if reason is None:
            return Reply(200, body, content_type or SUCCESS.content_type, "ack")
        return Reply(200, SUCCESS.body, SUCCESS.content_type, "ack", normalized=reason)

    def seal(self, reply: Reply, verified: Verified) -> Reply:
        """Encrypt a plaintext passive reply with the component key and appid; an encrypted one passes as is."""
        return wxcrypt.seal_for(
            reply, verified.seal_context, self.tokens, self.aes_keys, self.component_app_id, self.random_bytes
        )


def _check_url(kind: Kind, message: Mapping[str, str]) -> None:
    """Refuse a push made for the platform's other URL (``wrong_push_url``): both share the component token and
    key, and what wraps ``Encrypt`` is not signed, so a message captured on the ``$APPID$`` URL would otherwise
    be accepted at the authorization URL, and a ticket under any ``/<appid>/`` path. Authorization events carry
    ``InfoType``; account messages and events carry ``MsgType`` and never ``InfoType``."""
    if kind == "authorization" and not message.get("InfoType"):
        raise Rejected("wrong_push_url", 403, "no InfoType: an account's message, not an authorization event")
    if kind == "messages" and "InfoType" in message and "MsgType" not in message:
        raise Rejected("wrong_push_url", 403, "an authorization event, not an account's message")


def _authenticated_outer(
    outer: Mapping[str, str], field: str, value: str | None, encrypted: str
) -> bytes | None:
    """The envelope to forward to a backend that decrypts by itself: ``None`` (the body as sent) when it holds
    only ``field`` and ``Encrypt`` and ``field`` is the authenticated ``value``, else one rebuilt from ``value``.
    ``msg_signature`` covers ``Encrypt`` alone, so a ``ToUserName`` edited in transit, or fields added beside
    it, would otherwise reach the backend as verified."""
    if set(outer) == {field, "Encrypt"} and outer[field] == value:
        return None
    rebuilt: dict[str, str | int] = {field: value} if value is not None else {}
    rebuilt["Encrypt"] = encrypted
    return xmlmsg.build(rebuilt)
