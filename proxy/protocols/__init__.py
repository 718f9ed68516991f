"""Sender protocols: one pure module per sender, and the factory that builds one for a configured route.

:func:`build_protocol` is the only place that reads key files (Pay v3 platform certificates and public keys);
the protocol modules themselves never do I/O. An Open Platform route's ``authorizers_file`` is read here too, so a
reload re-reads it. A problem is a :class:`~proxy.config.ConfigError` naming the route and, for key files, the
file.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from proxy.config import (
    ConfigError,
    HmacRoute,
    RouteBase,
    Secret,
    StandardWebhooksRoute,
    WechatMiniProgramRoute,
    WechatMpRoute,
    WechatOpenPlatformRoute,
    WechatPayV2Route,
    WechatPayV3Route,
    WecomRoute,
)
from proxy.protocols.base import Inbound, Protocol, Rejected, Reply, Verified


def _rotated(current: Secret | None, previous: Secret | None) -> list[tuple[str, str]]:
    """``[("current", …), ("previous", …)]`` for the secrets that are set."""
    pairs = [("current", current), ("previous", previous)]
    return [(key_id, secret.reveal()) for key_id, secret in pairs if secret is not None]


def _account(route: WechatMpRoute | WechatMiniProgramRoute) -> dict[str, Any]:
    """What an Official Account or Mini Program push protocol takes from its route (encryption is required by
    default once a key is set)."""
    aes_keys = _rotated(route.encoding_aes_key, route.previous_encoding_aes_key)
    require = route.require_encryption if route.require_encryption is not None else bool(aes_keys)
    return {
        "tokens": _rotated(route.token, route.previous_token),
        "timestamp_window": route.timestamp_window,
        "require_encryption": require,
        "aes_keys": aes_keys,
        "app_id": route.app_id,
        "decrypt_for_backend": route.decrypt_for_backend,
    }


def _wechat_mp(route: WechatMpRoute) -> Protocol:
    from proxy.protocols.wechat_mp import WechatMp

    return WechatMp(**_account(route))


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


def _wechat_miniprogram(route: WechatMiniProgramRoute) -> Protocol:
    from proxy.protocols.wechat_miniprogram import WechatMiniProgram

    return WechatMiniProgram(**_account(route), format=route.format, channels=route.channels)


def _authorizers(route: WechatOpenPlatformRoute) -> dict[str, str] | None:
    """``authorizers``, or the map in ``authorizers_file`` (YAML or JSON; read again on every reload)."""
    path = route.authorizers_file
    if path is None:
        return route.authorizers
    try:
        data = yaml.safe_load(_read(route, "authorizers file", path))
    except yaml.YAMLError as e:
        raise ConfigError(f"route {route.name}: {path} is neither YAML nor JSON ({e})") from None
    data = {} if data is None else data  # an empty file: only the 全网发布 test accounts
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise ConfigError(
            f"route {route.name}: {path} must map each authorizer's appid to its original id (wx…: gh_…)"
        )
    return {str(k): v for k, v in data.items()}


def _wechat_open_platform(route: WechatOpenPlatformRoute) -> Protocol:
    from proxy.protocols.wechat_open import WechatOpenPlatform

    return WechatOpenPlatform(
        route.component_app_id,
        _rotated(route.token, route.previous_token),
        _rotated(route.encoding_aes_key, route.previous_encoding_aes_key),
        kind=route.kind,
        timestamp_window=route.timestamp_window,
        decrypt_for_backend=route.decrypt_for_backend,
        authorizers=_authorizers(route),
    )


_BUILDERS: dict[type[RouteBase], Callable[[Any], Protocol]] = {
    WechatMpRoute: _wechat_mp,
    WecomRoute: _wecom,
    WechatPayV2Route: _wechat_pay_v2,
    WechatPayV3Route: _wechat_pay_v3,
    HmacRoute: _hmac,
    StandardWebhooksRoute: _standard_webhooks,
    WechatMiniProgramRoute: _wechat_miniprogram,
    WechatOpenPlatformRoute: _wechat_open_platform,
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


__all__ = ["Inbound", "Protocol", "Rejected", "Reply", "Verified", "build_protocol"]
