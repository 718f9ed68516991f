"""The contract every sender protocol implements.

A protocol object is built once per configured route (it holds that route's keys) and is pure: no I/O,
no clock reads (``now`` is passed in), no randomness except through an injected ``random_bytes``.
The addons adapt mitmproxy flows to these calls:

- ``verify``    (verify addon)   raw request -> :class:`Verified`, or raises :class:`Rejected`;
- ``dedup_key`` (dedup addon)    verified message -> the un-hashed idempotency key, or ``None``;
- ``normalize`` (forward addon)  backend's 2xx answer -> the reply the sender's contract requires;
- ``seal``      (envelope addon) plaintext reply -> wire reply (re-encryption in safe mode);
- ``success_reply`` / ``failure_reply`` / ``backend_failure_reply``: the protocol's fixed answers.

What a route needs to know about its sender before any request arrives (methods, content types, default dedup
TTL and backend-failure policy, the last delivery attempt) are class attributes of the protocol, declared on
:class:`Protocol` with their defaults; :mod:`proxy.pipeline.routes` applies them where the configuration leaves a
key unset. Adding a sender touches its protocol module and its schema class only.
"""

from __future__ import annotations

import abc
import hmac
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import ClassVar, Literal

from proxy.config.schema import Policy

ReplyKind = Literal["echo", "ack", "passive", "failure", "reject"]
# Bodies a sender posts as XML or as JSON (an empty or text/plain content type is accepted with either).
XML_CONTENT_TYPES = frozenset({"", "text/xml", "application/xml", "text/plain"})
JSON_CONTENT_TYPES = frozenset({"", "application/json", "text/json", "text/plain"})


class Rejected(Exception):
    """A request that did not pass verification.

    ``reason`` is a short snake_case code from a closed set (it becomes a metric label and span attribute);
    ``status`` is the HTTP status the rejection implies (h11's ``error_status_hint``); ``detail`` is for the log
    line and must never contain secrets or message content.
    """

    def __init__(self, reason: str, status: int = 403, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.status = status
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Inbound:
    """The request as the sender made it."""

    method: str
    path: str
    query: Mapping[str, str]  # first value of each name, URL-decoded
    headers: Mapping[str, str]  # names lower-cased
    body: bytes
    # values the route's path template captured (``/open/{appid}/callback`` -> ``{"appid": …}``); not signed
    path_params: Mapping[str, str] = field(default_factory=dict)

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").split(";", 1)[0].strip().lower()


@dataclass(frozen=True, slots=True)
class Reply:
    """What goes back to the sender."""

    status: int
    body: bytes
    content_type: str
    kind: ReplyKind
    normalized: str | None = None  # why the backend's answer was replaced, e.g. "json", "html", "status_201"
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Verified:
    """A request that passed verification.

    ``message`` holds the flat fields of the authenticated message (decrypted where it was encrypted); it is used
    for dedup keys and never logged. ``replay_key`` identifies this signed request; the verify addon remembers it
    for ``replay_ttl`` seconds and rejects a second sighting (``None`` when the protocol has no nonce).
    ``backend_body``/``drop_query`` say how the request to the backend differs from the inbound one.
    ``direct_reply`` is set when the proxy answers by itself (URL verification); such requests are never forwarded.
    ``seal_context`` is whatever :meth:`Protocol.seal` needs to re-encrypt a reply for this request.
    ``deadline``/``dedup_ttl`` override the route's for this one message when its kind has its own contract (a
    Mini Program ``xpay_*`` event retries for 24 h; an iOS refund query must be answered within 3 s).
    ``tenant`` names the account a multi-tenant route received this message for (an Open Platform authorizer's
    appid); ``tenant_verified`` says whether that name was bound to the authenticated message. Spans and logs
    carry it, metrics never do (thousands of tenants).
    ``authenticated`` is the authenticated message as bytes (the decrypted plaintext where it was encrypted, not
    the envelope, query or headers around it): dedup keys digest it when the message has no documented unique id
    (:mod:`proxy.protocols.idempotency`), because the flat ``message`` can lose repeated elements. Never logged.
    """

    message: Mapping[str, str] = field(default_factory=dict)
    replay_key: str | None = None
    replay_ttl: float = 0.0
    key_id: str = "current"
    backend_body: bytes | None = None
    drop_query: tuple[str, ...] = ()
    direct_reply: Reply | None = None
    seal_context: object | None = None
    authenticated: bytes = b""
    deadline: float | None = None
    dedup_ttl: float | None = None
    tenant: str | None = None
    tenant_verified: bool = False


def constant_time_equal(a: str, b: str) -> bool:
    """Compare two signatures without leaking where they differ."""
    return hmac.compare_digest(a.encode("utf-8", "surrogateescape"), b.encode("utf-8", "surrogateescape"))


def check_timestamp(raw: str | None, now: float, window: float) -> int:
    """Parse a Unix-seconds timestamp and require ``|now - ts| <= window`` (both directions)."""
    if raw is None or raw == "":
        raise Rejected("missing_timestamp", 403)
    if not raw.isascii() or not raw.isdigit() or len(raw) > 12:
        raise Rejected("bad_timestamp", 403)
    ts = int(raw)
    if window > 0:
        if ts < now - window:
            raise Rejected("stale_timestamp", 403)
        if ts > now + window:
            raise Rejected("future_timestamp", 403)
    return ts


class Protocol(abc.ABC):
    """One sender's verification, idempotency and reply contract."""

    name: ClassVar[str]
    """The route's ``protocol`` value in configuration, and its label in metrics, spans and logs."""
    default_methods: ClassVar[tuple[str, ...]] = ("POST",)
    """HTTP methods a route accepts when its ``methods`` is unset (GET too where the sender verifies the URL)."""
    lookup_fields: ClassVar[tuple[tuple[str, ...], ...]] = ()
    """Groups of message fields an operator may know a notification by (``wxgate lookup``): a first claim
    files the record under each group the message carries (:func:`~proxy.protocols.idempotency.lookup_aliases`)."""
    content_types: ClassVar[frozenset[str] | None] = None
    """Content types a POST may carry (``""``: none given); any other is refused before parsing (415). ``None``:
    any, for senders whose signature covers the raw body whatever it is."""
    default_dedup_ttl: ClassVar[float] = 600.0
    """``dedup.ttl`` when unset: longer than the sender's retries last (raised to twice ``timestamp_window``)."""
    default_policy: ClassVar[Policy] = "ack"
    """``on_backend_failure`` when unset: ``ack`` where users must never see an error, ``fail`` where the sender
    retries on a schedule of its own (WeChat Pay)."""
    last_attempt: ClassVar[int] = 1
    """The sender's last expected delivery of one message (the ``relay`` policy acknowledges on it); 1 when its
    retries are not counted, so every attempt is treated as the last."""
    query_params: ClassVar[frozenset[str]] = frozenset()
    """Query parameters the protocol reads: the verify addon refuses another spelling of one that a lenient
    backend would read as it (``%20openid`` to PHP, ``OPENID`` to ASP.NET), since verification would not see it."""
    reply_fields: ClassVar[tuple[str, ...]] = ()
    """Message fields :meth:`normalize` reads (a Mini Program ``xpay_*`` event is answered in its own form): an
    outbox item keeps them, so a redelivery's answer is normalized, and cached for the sender's retries, as the
    first delivery's would have been."""

    def __init__(self, random_bytes: Callable[[int], bytes] = os.urandom) -> None:
        self.random_bytes = random_bytes

    def signing_keys(self) -> tuple[bytes, ...] | None:
        """The keys signatures are checked with, as used (decoded), where a configured secret has several
        spellings of one key; ``None``: the configured secrets as written are the keys. Routes sharing one share
        a replay scope (:func:`~proxy.pipeline.routes.replay_scopes`)."""
        return None

    @abc.abstractmethod
    def verify(self, req: Inbound, now: float) -> Verified:
        """Authenticate ``req`` or raise :class:`Rejected`."""

    @abc.abstractmethod
    def dedup_key(self, verified: Verified) -> str | None:
        """The idempotency key of the message (before hashing), or ``None`` if it cannot be deduplicated."""

    @abc.abstractmethod
    def success_reply(self, verified: Verified | None = None) -> Reply:
        """The protocol's plain acknowledgement (what wxgate sends when it answers on the backend's behalf).

        ``verified`` lets a route that accepts two wire formats (Pay v3 also receives v2 XML notices) answer in
        the format of the request at hand."""

    @abc.abstractmethod
    def failure_reply(self, reason: str, status: int) -> Reply:
        """The answer to a request that failed verification or admission."""

    @abc.abstractmethod
    def backend_failure_reply(self, verified: Verified | None = None) -> Reply:
        """The answer that makes the sender retry (used by the ``fail`` policy and ``fail_closed``)."""

    @abc.abstractmethod
    def normalize(self, status: int, content_type: str, body: bytes, verified: Verified) -> Reply:
        """Turn the backend's 2xx answer into a reply that honours the contract (``normalized`` says if changed)."""

    def is_backend_failure(self, status: int, content_type: str, body: bytes) -> bool:
        """True when a 2xx answer still means "not processed" (Pay's FAIL XML / FAIL JSON). False by default."""
        return False

    def seal(self, reply: Reply, verified: Verified) -> Reply:
        """Wrap a plaintext reply for the wire (safe-mode re-encryption). Identity by default."""
        return reply
