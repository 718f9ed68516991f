"""Helpers for unit tests of addons: flows from mitmproxy.test.tflow, a route table, an in-memory nonce set."""

from __future__ import annotations

import time
from typing import Any

from mitmproxy import http
from mitmproxy.test import tflow

from proxy.config import parse_config
from proxy.pipeline.exchange import Exchange, ensure_exchange
from proxy.pipeline.routes import RouteTable
from proxy.tools.sender import Request, mp_message, mp_text

TOKEN = "unit-token"


def table(**route: Any) -> RouteTable:
    cfg = parse_config(
        {"routes": [{"name": "mp", "path": "/wx", "protocol": "wechat-mp", "token": "${T}", **route}]},
        {"T": TOKEN},
    )
    return RouteTable.from_config(cfg)


def flow_of(req: Request, peer: str = "203.0.113.7") -> http.HTTPFlow:
    f = tflow.tflow()
    path, _, query = req.path_query.partition("?")
    f.request = http.Request.make(
        req.method, f"http://wxgate.test{path}{'?' + query if query else ''}", req.body, req.headers
    )
    f.client_conn.peername = (peer, 40000)
    return f


def mp_flow(msg_id: int = 1, content: str = "hi", now: int | None = None) -> http.HTTPFlow:
    return flow_of(mp_message("/wx", TOKEN, mp_text("gh", "oUser", content, msg_id, now=now), now=now))


def routed(f: http.HTTPFlow, rt: RouteTable) -> Exchange:
    from addons.routing import Routing
    from addons.start import ExchangeStart

    ExchangeStart().requestheaders(f)
    Routing(rt).requestheaders(f)
    return ensure_exchange(f)


class Nonces:
    """An in-memory stand-in for the store's replay cache (pure logic tests only)."""

    def __init__(self) -> None:
        self.seen: dict[str, float] = {}

    async def remember(self, key: str, ttl: float) -> bool:
        now = time.monotonic()
        if key in self.seen and self.seen[key] > now:
            return False
        self.seen[key] = now + ttl
        return True
