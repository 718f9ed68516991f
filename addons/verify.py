"""Verify: authenticate each request with its route's protocol, and refuse replays.

URL-verification GETs are answered here and never forwarded. A rejection answers in the protocol's failure
form with a reason code in the outcome; nothing unverified ever reaches the backend. The replay cache remembers
each signed request for its window (``remember`` is the store's, so replicas share it); when the store is down
the route's ``dedup.store_down`` decides: ``fail_open`` accepts (the outcome says so), ``fail_closed`` asks the
sender to retry. With dedup on, the check is left to the dedup addon (``ex.replay``), which makes it and its
claim one store call (:meth:`~proxy.stores.base.Store.claim_signed`: one round trip on Redis, one
transaction on SQLite): a request refused as a replay is still never forwarded, and never claimed.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Awaitable, Callable

from mitmproxy import http

from proxy.pipeline.backend_leg import store_down
from proxy.pipeline.exchange import Replay, Routed, exchange, param_name, request_query
from proxy.pipeline.exchange import query_items as parse_query
from proxy.pipeline.policy import before_deadline
from proxy.pipeline.replies import reject, respond
from proxy.protocols.base import Inbound, Rejected
from proxy.stores.base import StoreUnavailable

logger = logging.getLogger("wxgate")

Remember = Callable[[str, float], Awaitable[bool]]


def inbound_of(
    request: http.Request,
    query_items: list[tuple[str, str]] | None = None,
    path_params: dict[str, str] | None = None,
) -> Inbound:
    """The request as protocols see it: first value of each query name; header names lower-cased, a repeated
    header's values joined with ", " (as mitmproxy's ``Headers`` reads them), read from the raw fields; what the
    route's path template captured."""
    path = request.path
    query: dict[str, str] = {}
    for k, v in query_items if query_items is not None else parse_query(path):
        query.setdefault(k, v)
    headers: dict[str, str] = {}
    for raw_name, raw_value in request.headers.fields:
        name = raw_name.decode("utf-8", "surrogateescape").lower()
        value = raw_value.decode("utf-8", "surrogateescape")
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    body = request.raw_content or b""
    return Inbound(request.method, path.split("?", 1)[0], query, headers, body, path_params or {})


def respelled(query: list[tuple[str, str]], read: frozenset[str]) -> bool:
    """Whether a query parameter the protocol reads (``openid``) is spelled so that only a lenient backend reads
    it as that (``%20openid``, ``OPENID``: :func:`~proxy.pipeline.exchange.param_name`): the protocol would not
    see the value the backend takes."""
    return any(k not in read and param_name(k) in read for k, _ in query)


class Verify:
    def __init__(self, remember: Remember, clock: Callable[[], float] = time.time) -> None:
        self.remember = remember
        self.clock = clock

    async def request(self, flow: http.HTTPFlow) -> None:
        if flow.response or flow.error or not flow.live:
            return
        ex = exchange(flow)
        if ex is None or ex.route is None:
            return
        try:
            await self._verify(flow, ex.routed())
        except Exception:
            logger.exception("verification failed unexpectedly on route %s", ex.route.name)
            if not flow.response:
                reject(flow, ex, "verify_error", 500)

    async def _verify(self, flow: http.HTTPFlow, ex: Routed) -> None:
        route = ex.route
        path_params = route.path_params(flow.request.path)
        query = request_query(flow, ex)
        if respelled(query, route.protocol.query_params):
            return reject(flow, ex, "noncanonical_param", 400)
        ex.inbound = inbound_of(flow.request, query, path_params)
        try:
            verified = route.protocol.verify(ex.inbound, self.clock())
        except Rejected as r:
            return reject(flow, ex, r.reason, r.status)
        ex.verified = verified
        ex.outcome.key_id = verified.key_id
        if verified.tenant is not None:
            ex.outcome.tenant = verified.tenant
            ex.outcome.tenant_verified = "true" if verified.tenant_verified else "false"
        if verified.direct_reply is not None:
            ex.outcome.verdict = "direct"
            return respond(flow, ex, verified.direct_reply)
        if verified.replay_key is not None:
            # Remembered in the route's replay scope: every route accepting signatures made with its secrets
            # (RouteRuntime.replay_scope), so a request captured at one is not fresh at another.
            scope = route.replay_scope or route.name
            signed = f"nonce:{scope}:{hashlib.sha256(verified.replay_key.encode()).hexdigest()[:32]}"
            if route.config.dedup.enabled:
                # A signature reused with a *different* body is a forgery built from a captured request (MP's
                # plain ``signature`` does not cover the body) and is refused. An exact repeat — same signed
                # values, same body — is what a sender retry can look like: it is answered from the dedup
                # record, without reaching the backend (or refused when the message has no dedup key).
                body = hashlib.sha256(ex.inbound.body).hexdigest()[:16]
                if scope != route.name:  # the same request at another route of the scope is no retry
                    body = f"{route.name}:{body}"
                ex.replay = Replay(signed, body, verified.replay_ttl)
            else:  # any repeat is refused
                try:
                    fresh = await before_deadline(ex, self.remember(signed, verified.replay_ttl))
                except StoreUnavailable as e:
                    if (reply := store_down(ex, e)) is not None:
                        return respond(flow, ex, reply)
                    fresh = True
                if not fresh:
                    return reject(flow, ex, "replayed_nonce", 403)
        ex.outcome.verdict = "verified"
        return None
