"""Per-request state shared by the addon chain.

Lifetime: the first addon of the chain (:class:`addons.start.ExchangeStart`) creates one :class:`Exchange`
per flow in ``requestheaders`` and keeps it in ``flow.metadata["wxgate"]``; every later addon reads it with
:func:`exchange`; the metrics addon finishes it (``finished``) when the answer has gone out. Its
:class:`~proxy.observability.outcome.Outcome` is the single source of truth that metrics, spans and the JSON log
line all read, so no addon re-derives what another decided.

Stages narrow it once instead of asserting field by field: :meth:`Exchange.routed` (a route matched) and
:meth:`Exchange.authenticated` (the request was verified) return the same object typed with those fields set.
The query of the request target is parsed here, once per request (:func:`request_query`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import parse_qsl

from proxy.observability.outcome import Outcome

if TYPE_CHECKING:
    from mitmproxy import http

    from proxy.pipeline.routes import RouteRuntime
    from proxy.protocols.base import Inbound, Reply, Verified

METADATA_KEY = "wxgate"


@dataclass(slots=True)
class Exchange:
    """Everything the chain knows about one request."""

    started: float = field(default_factory=time.perf_counter)
    outcome: Outcome = field(default_factory=Outcome)
    route: RouteRuntime | None = None
    inbound: Inbound | None = None
    verified: Verified | None = None
    reply: Reply | None = None  # plaintext reply chosen by the chain (sealed by envelope on the way out)
    dedup_token: str | None = None
    dedup_key_raw: str | None = None  # the store key claimed (route:hash), despite its name not the raw key
    outbox_id: str | None = None
    repeat: bool = False  # an exact repeat of a signed request seen before (a retry or a replay)
    query: list[tuple[str, str]] | None = None  # the target's query items, parsed once (request_query)
    replay: Replay | None = None  # the replay-cache check verify left to the dedup claim (one store call)
    traceparent: str | None = None
    client: str = ""  # the caller's address (trusted_proxies-aware), set by admission on routed requests
    span: Any = None
    counted: bool = False  # counted in the in-flight gauge (by the metrics addon)
    finished: bool = False

    def routed(self) -> Routed:
        """This exchange, typed with its route set (``LookupError`` if no route matched)."""
        if self.route is None:
            raise LookupError("the request matched no route")
        return cast(Routed, self)

    def authenticated(self) -> Authenticated:
        """This exchange, typed with its route, inbound request and verified message set (``LookupError`` if
        it was not verified)."""
        if self.route is None or self.inbound is None or self.verified is None:
            raise LookupError("the request was not verified")
        return cast(Authenticated, self)


class Routed(Exchange):
    """The type of an exchange whose route is set (never instantiated: :meth:`Exchange.routed` narrows)."""

    __slots__ = ()
    route: RouteRuntime


class Authenticated(Routed):
    """The type of an exchange that was verified: route, inbound request and verified message are set."""

    __slots__ = ()
    inbound: Inbound
    verified: Verified


@dataclass(frozen=True, slots=True)
class Replay:
    """A verified request's replay-cache entry: its signed values (hashed, with the route) and body hash."""

    signed: str
    body: str
    ttl: float


def exchange(flow: http.HTTPFlow) -> Exchange | None:
    ex = flow.metadata.get(METADATA_KEY)
    return ex if isinstance(ex, Exchange) else None


def answered_status(flow: http.HTTPFlow) -> int:
    """The status the sender got: mitmproxy answers its own errors (413 over ``body_size_limit``, 502 when a
    passthrough upstream is unreachable); 0 when the connection failed after the answer started."""
    if flow.error is None:
        return flow.response.status_code if flow.response else 0
    if "body_size_limit" in flow.error.msg:
        return 413
    return 502 if flow.response is None else 0


def ensure_exchange(flow: http.HTTPFlow) -> Exchange:
    """The flow's exchange, created if it has none: by :class:`addons.start.ExchangeStart`, first in the chain,
    or by :func:`proxy.hooks.fail_closed` when a hook failed before that ran."""
    ex = flow.metadata.get(METADATA_KEY)
    if not isinstance(ex, Exchange):
        ex = flow.metadata[METADATA_KEY] = Exchange()
    return ex


def query_items(path: str) -> list[tuple[str, str]]:
    """Every ``(name, value)`` of a request target's query, in order, decoded as mitmproxy's ``Request.query``
    decodes them; from the target itself, since ``Request.query`` rebuilds and re-parses the whole URL on
    every access."""
    query = path.partition("#")[0].partition("?")[2]
    return parse_qsl(query, keep_blank_values=True, errors="surrogateescape") if query else []


def param_name(name: str) -> str:
    """The name a lenient backend files a query parameter under: PHP drops leading blanks, ends a name at a NUL
    or at ``[`` (array syntax) and reads `` `` and ``.`` as ``_``; ASP.NET compares names case-insensitively. Two
    parameters of one name here are one parameter to some backend (the last value wins in PHP), and a
    parameter wxgate checks (``openid``) must be read under every spelling a backend reads it by."""
    name = name.lstrip(" ").split("\0", 1)[0].split("[", 1)[0]
    return name.replace(" ", "_").replace(".", "_").casefold()


def request_query(flow: http.HTTPFlow, ex: Exchange) -> list[tuple[str, str]]:
    """:func:`query_items` of the flow's target, parsed once per request (admission, verify and forward read it)."""
    if ex.query is None:
        ex.query = query_items(flow.request.path)
    return ex.query
