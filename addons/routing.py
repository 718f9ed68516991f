"""Routing: match the request path to a configured route; unmatched paths pass through or are denied.

A route matches its ``path`` exactly, or fills its template (``/open/{appid}/callback``: a canonical segment the
parameter's check accepts; the protocol reads the value from ``Inbound.path_params``). A path that is not exactly
a route's but names it in another spelling
(:meth:`~proxy.pipeline.routes.RouteTable.impersonated`: case, percent-encoding, dot segments, repeated or trailing
slashes, ``;`` parameters, a suffix, a script's path info) is refused with 400 ``noncanonical_path``: never
passed through unverified to a backend that may route it to the protected handler. A target that is not a path
(an HTTP/2 ``:path`` holding a whole URL, or ``//x/path``) is refused with 400 ``request_target``; a passed-through request loses
its authority (absolute-form) and any ``Upgrade`` but WebSocket's (:func:`refuse_upgrades`).

Owns ``unmatched`` and the route table.
"""

from __future__ import annotations

import re

from mitmproxy import http

from proxy.pipeline.exchange import exchange
from proxy.pipeline.replies import reject
from proxy.pipeline.routes import RouteTable
from proxy.reload import Loaded

_BLANK_OR_CONTROL = re.compile(r"[\x00-\x20\x7f]")


class Routing:
    def __init__(self, table: RouteTable, unmatched: str = "passthrough") -> None:
        if unmatched not in ("passthrough", "deny"):
            raise ValueError("unmatched must be passthrough or deny")
        self.table = table
        self.unmatched = unmatched

    def reconfigure(self, loaded: Loaded) -> None:
        """Swap in a reloaded route table. A request keeps the route it was matched with: the later addons read
        ``ex.route``, never the table."""
        self.table, self.unmatched = loaded.table, loaded.config.unmatched

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        ex = exchange(flow)
        if ex is None or flow.response or flow.error or not flow.live:
            return
        target = flow.request.path
        if _BLANK_OR_CONTROL.search(target):
            # Never in a request target (HTTP/1 refuses it; HTTP/2 lets a tab through to the request line), and a
            # URL parser drops tabs and newlines: ``/<TAB>/x/wechat/callback`` is ``//x/wechat/callback`` to one.
            return reject(flow, ex, "request_target", 400)
        with_host = not target.startswith("/") or target[1:2] in ("/", "\\")
        if with_host and self.table.impersonated(target) is None:
            # A target that is not a path: HTTP/2 lets a client put a whole URL in ``:path``
            # (``http://x/wechat/callback``), which mitmproxy hands on as the request line, and a target starting
            # with ``//`` or ``/\`` is a URL with a host to a WHATWG parser (Node's ``new URL(req.url, base)``):
            # a backend routes either by the path after the host, so it would reach the handler wxgate protects
            # without matching the route here. Only paths are served (a route's own path spelled ``//mp`` is
            # refused below as another spelling of it).
            named = self.table.impersonated(path_after_host(target))
            if named is not None:
                ex.outcome.route, ex.outcome.protocol = named.name, named.protocol_name
            return reject(flow, ex, "request_target", 400)
        if flow.request.authority and flow.request.http_version.startswith("HTTP/1"):
            # An absolute-form HTTP/1 target (``GET http://x/path``): mitmproxy would pass the client's
            # authority on in the request line, and a backend trusts it over the Host header wxgate sets.
            flow.request.authority = ""
        route = self.table.match(flow.request.path)
        if route is None and (spelled := self.table.impersonated(flow.request.path)) is not None:
            # Another spelling of a route's path (``/wechat/callback/``, ``/WECHAT/%63allback;x``): the backend
            # may route it to the handler wxgate protects, so it is neither verified as that route nor passed
            # through. Counted under the route it names.
            ex.outcome.route, ex.outcome.protocol = spelled.name, spelled.protocol_name
            return reject(flow, ex, "noncanonical_path", 400)
        if route is None:
            if self.unmatched == "deny":
                reject(flow, ex, "unknown_route", 404)
                ex.outcome.verdict = "denied"
            else:
                ex.outcome.verdict = "passthrough"
                ex.outcome.reply_kind = "passthrough"
                refuse_upgrades(flow.request.headers)
            return
        ex.route = route
        ex.outcome.route = route.name
        ex.outcome.protocol = route.protocol_name


def refuse_upgrades(headers: http.Headers) -> None:
    """Take away a protocol upgrade other than WebSocket (RFC 6455, version 13, which mitmproxy relays frame by
    frame) before a request is passed through: a backend answering ``101`` to ``Upgrade: h2c`` (or to an older
    WebSocket version) would turn the connection into a raw tunnel, and every later request on it would reach
    the backend unseen: unverified, its ``X-Wxgate-*`` headers not stripped. The backend answers the request
    itself, without upgrading."""
    upgrade = headers.get("upgrade")
    if upgrade is None:
        return
    if upgrade.strip().lower() == "websocket" and headers.get_all("sec-websocket-version") == ["13"]:
        return
    del headers["upgrade"]
    headers.pop("http2-settings", None)
    tokens = [t.strip() for v in headers.get_all("connection") for t in v.split(",")]
    kept = [t for t in tokens if t and t.lower() not in ("upgrade", "http2-settings")]
    if "connection" in headers:
        del headers["connection"]
    if kept:
        headers["connection"] = ", ".join(kept)


def path_after_host(target: str) -> str:
    """The path a URL parser finds in ``target`` when it reads a host there (``http://x/p``, ``//x/p``, ``/\\x/p``:
    ``/p``); ``/`` when there is none."""
    scheme, sep, rest = target.partition("://")
    if not sep or "/" in scheme:
        rest = target
    rest = rest.lstrip("/\\")
    cut = min((i for i in (rest.find(c) for c in "/\\?#") if i >= 0), default=len(rest))
    path = rest[cut:]
    return path if path[:1] in ("/", "\\") else "/"
