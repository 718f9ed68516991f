"""Routing: match the request path to a configured route; unmatched paths pass through or are denied.

A route matches its ``path`` exactly, or fills its template (``/open/{appid}/callback``: a canonical segment the
parameter's check accepts; the protocol reads the value from ``Inbound.path_params``). A path that is not exactly
a route's but names it in another spelling
(:meth:`~proxy.pipeline.routes.RouteTable.impersonated`: case, percent-encoding, dot segments, repeated or trailing
slashes, ``;`` parameters, a suffix, a script's path info) is refused with 400 ``noncanonical_path``: never
passed through unverified to a backend that may route it to the protected handler.

Owns ``unmatched`` and the route table.
"""

from __future__ import annotations

from mitmproxy import http

from proxy.pipeline.exchange import exchange
from proxy.pipeline.replies import reject
from proxy.pipeline.routes import RouteTable
from proxy.reload import Loaded


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
        route = self.table.match(flow.request.path)
        if route is None and (target := self.table.impersonated(flow.request.path)) is not None:
            # Another spelling of a route's path (``/wechat/callback/``, ``/WECHAT/%63allback;x``): the backend
            # may route it to the handler wxgate protects, so it is neither verified as that route nor passed
            # through. Counted under the route it names.
            ex.outcome.route, ex.outcome.protocol = target.name, target.protocol_name
            return reject(flow, ex, "noncanonical_path", 400)
        if route is None:
            if self.unmatched == "deny":
                reject(flow, ex, "unknown_route", 404)
                ex.outcome.verdict = "denied"
            else:
                ex.outcome.verdict = "passthrough"
                ex.outcome.reply_kind = "passthrough"
            return
        ex.route = route
        ex.outcome.route = route.name
        ex.outcome.protocol = route.protocol_name
