"""Sender protocols: one pure module per sender, and the factory that builds one for a configured route.

:func:`build_protocol` is the only place that reads key files (Pay v3 platform certificates and public keys);
the protocol modules themselves never do I/O. A problem is a :class:`~proxy.config.ConfigError` naming the route
and, for key files, the file.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from proxy.config import (
    ConfigError,
    HmacRoute,
    RouteBase,
    Secret,
    StandardWebhooksRoute,
    WechatMpRoute,
    WechatPayV2Route,
    WechatPayV3Route,
    WecomRoute,
)
from proxy.protocols.base import Protocol


def _rotated(current: Secret | None, previous: Secret | None) -> list[tuple[str, str]]:
    """``[("current", …), ("previous", …)]`` for the secrets that are set."""
    pairs = [("current", current), ("previous", previous)]
    return [(key_id, secret.reveal()) for key_id, secret in pairs if secret is not None]


def _wechat_mp(route: WechatMpRoute) -> Protocol:
    from proxy.protocols.wechat_mp import WechatMp

    aes_keys = _rotated(route.encoding_aes_key, route.previous_encoding_aes_key)
    require = route.require_encryption if route.require_encryption is not None else bool(aes_keys)
    return WechatMp(
        _rotated(route.token, route.previous_token),
        timestamp_window=route.timestamp_window,
        require_encryption=require,
        aes_keys=aes_keys,
        app_id=route.app_id,
        decrypt_for_backend=route.decrypt_for_backend,
    )


def _wecom(route: WecomRoute) -> Protocol:
    from proxy.protocols.wecom import Wecom

    return Wecom(
        _rotated(route.token, route.previous_token),
        _rotated(route.encoding_aes_key, route.previous_encoding_aes_key),
        route.receive_id,
        timestamp_window=route.timestamp_window,
        decrypt_for_backend=route.decrypt_for_backend,
    )


def _wechat_pay_v2(route: WechatPayV2Route) -> Protocol:
    from proxy.protocols.wechat_pay_v2 import WechatPayV2

    return WechatPayV2(
        _rotated(route.api_key, route.previous_api_key),
        route.mch_id,
        app_id=route.app_id,
        decrypt_for_backend=route.decrypt_for_backend,
    )


def _read(route: RouteBase, what: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise ConfigError(f"route {route.name}: cannot read {what} {path} ({e.strerror})") from None


def _wechat_pay_v3(route: WechatPayV3Route) -> Protocol:
    from proxy.protocols import wechat_pay_v3
    from proxy.protocols.wechat_pay_v2 import WechatPayV2

    keys = []
    for path in route.platform_certificates:
        try:
            keys.append(wechat_pay_v3.load_certificate(_read(route, "platform certificate", path)))
        except ValueError as e:
            raise ConfigError(
                f"route {route.name}: {path} is not a WeChat Pay platform certificate in PEM form ({e})"
            ) from None
    for ref in route.public_keys:
        try:
            keys.append(wechat_pay_v3.load_public_key(ref.id, _read(route, "public key", ref.file)))
        except ValueError as e:
            raise ConfigError(
                f"route {route.name}: {ref.file} is not a WeChat Pay public key in PEM form ({e})"
            ) from None
    v2 = None
    if route.api_key is not None:
        v2 = WechatPayV2(_rotated(route.api_key, route.previous_api_key), route.mch_id, app_id=route.app_id)
    return wechat_pay_v3.WechatPayV3(
        _rotated(route.apiv3_key, route.previous_apiv3_key),
        route.mch_id,
        keys,
        app_id=route.app_id,
        timestamp_window=route.timestamp_window,
        decrypt_for_backend=route.decrypt_for_backend,
        v2=v2,
    )


def _hmac(route: HmacRoute) -> Protocol:
    from proxy.protocols.hmac_sig import HmacSignature

    return HmacSignature(
        _rotated(route.secret, route.previous_secret),
        sign_param=route.sign_param,
        sign_header=route.sign_header,
        timestamp_param=route.timestamp_param,
        nonce_param=route.nonce_param,
        timestamp_window=route.timestamp_window,
        dedup_fields=route.dedup.fields,
    )


def _standard_webhooks(route: StandardWebhooksRoute) -> Protocol:
    from proxy.protocols.standard_webhooks import StandardWebhooks

    return StandardWebhooks(
        _rotated(route.secret, route.previous_secret), timestamp_window=route.timestamp_window
    )


_BUILDERS: dict[type[RouteBase], Callable[[Any], Protocol]] = {
    WechatMpRoute: _wechat_mp,
    WecomRoute: _wecom,
    WechatPayV2Route: _wechat_pay_v2,
    WechatPayV3Route: _wechat_pay_v3,
    HmacRoute: _hmac,
    StandardWebhooksRoute: _standard_webhooks,
}


def build_protocol(route: RouteBase) -> Protocol:
    """The protocol object for ``route``, holding that route's keys; ConfigError if its keys are unusable."""
    builder = _BUILDERS.get(type(route))
    if builder is None:
        raise ValueError(f"protocol {getattr(route, 'protocol', '?')!r} is not supported")
    try:
        return builder(route)
    except ValueError as e:
        raise ConfigError(f"route {route.name}: {e}") from None
