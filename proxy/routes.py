"""The route table: which configured route a request belongs to, with everything built for it once at start."""

from __future__ import annotations

from dataclasses import dataclass

from proxy.config import Config, RouteBase, default_dedup_ttl, default_policy
from proxy.protocols import build_protocol
from proxy.protocols.base import Protocol

# Methods a sender uses when a route does not list its own (GET is URL verification where it exists).
DEFAULT_METHODS = {
    "wechat-mp": ("GET", "POST"),
    "wecom": ("GET", "POST"),
    "wechat-pay-v2": ("POST",),
    "wechat-pay-v3": ("POST",),
    "hmac": ("GET", "POST"),
    "standard-webhooks": ("POST",),
}
_XML = frozenset({"", "text/xml", "application/xml", "text/plain"})
_JSON = frozenset({"", "application/json", "text/json", "text/plain"})
# Content types a POST may carry; anything else is refused before parsing (415).
CONTENT_TYPES: dict[str, frozenset[str] | None] = {
    "wechat-mp": _XML,
    "wecom": _XML | _JSON,  # smart robots post JSON {"encrypt": ...}
    "wechat-pay-v2": _XML,
    "wechat-pay-v3": _JSON | _XML,  # console refunds send v2 XML to v3 URLs (PROTOCOLS §3.6)
    "hmac": None,
    "standard-webhooks": None,
}


@dataclass(frozen=True, slots=True)
class RouteRuntime:
    name: str
    protocol_name: str
    config: RouteBase
    protocol: Protocol
    upstream: str  # base URL without trailing slash
    policy: str  # ack | relay | fail
    dedup_ttl: float
    methods: frozenset[str]
    content_types: frozenset[str] | None


def build_route(config: Config, route: RouteBase) -> RouteRuntime:
    proto: str = getattr(route, "protocol")  # noqa: B009 - every concrete route has it
    return RouteRuntime(
        name=route.name,
        protocol_name=proto,
        config=route,
        protocol=build_protocol(route),
        upstream=config.upstream_for(route),
        policy=default_policy(route),
        dedup_ttl=default_dedup_ttl(route),
        methods=frozenset(route.methods or DEFAULT_METHODS[proto]),
        content_types=CONTENT_TYPES[proto],
    )


class RouteTable:
    """Exact-path lookup (WeChat callback URLs are fixed strings; query strings are ignored)."""

    def __init__(self, routes: list[RouteRuntime]) -> None:
        self.routes = tuple(routes)
        self._by_path: dict[str, RouteRuntime] = {}
        for r in routes:
            self._by_path.setdefault(r.config.path, r)

    @classmethod
    def from_config(cls, config: Config) -> RouteTable:
        return cls([build_route(config, r) for r in config.routes])

    def match(self, path: str) -> RouteRuntime | None:
        return self._by_path.get(path.split("?", 1)[0])
