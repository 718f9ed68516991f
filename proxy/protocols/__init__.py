"""Sender protocols: one pure module per sender, and the factory that builds one for a configured route."""

from __future__ import annotations

from proxy.config import RouteBase, WechatMpRoute
from proxy.protocols.base import Protocol


def build_protocol(route: RouteBase) -> Protocol:
    """The protocol object for ``route``, holding that route's keys."""
    from proxy.protocols import wechat_mp

    if isinstance(route, WechatMpRoute):
        tokens = [("current", route.token.reveal())]
        if route.previous_token is not None:
            tokens.append(("previous", route.previous_token.reveal()))
        return wechat_mp.WechatMp(
            tokens,
            timestamp_window=route.timestamp_window,
            require_encryption=bool(route.require_encryption),
        )
    raise ValueError(f"protocol {getattr(route, 'protocol', '?')!r} is not supported yet")
