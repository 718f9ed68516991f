"""``protocol: wechat-miniprogram`` and ``protocol: wechat-open-platform`` routes: their keys, the errors a user
meets, and the authorizers map (inline, or a file read again by every reload)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from proxy.config import ConfigError, load_config, parse_config, redacted
from proxy.pipeline.routes import RouteTable
from proxy.protocols.base import Inbound, Rejected
from proxy.protocols.wechat_miniprogram import WechatMiniProgram
from proxy.protocols.wechat_open import WechatOpenPlatform
from proxy.tools import traffic_open

TOKEN, KEY = "platform-token", "A" * 43
ENV = {"T": TOKEN, "K": KEY}
COMPONENT, APPID, GH = "wx134c8103faa5a59e", "wxba5fad812f8e6fb9", "gh_97417a04a28d"
MINI = {"name": "mini", "path": "/mini", "protocol": "wechat-miniprogram", "token": "${T}"}
OPEN = {
    "name": "open",
    "path": "/open/{appid}/callback",
    "protocol": "wechat-open-platform",
    "kind": "messages",
    "component_app_id": COMPONENT,
    "token": "${T}",
    "encoding_aes_key": "${K}",
}


def errors(*routes: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as e:
        RouteTable.from_config(parse_config({"routes": list(routes)}, ENV))
    return str(e.value)


def test_a_mini_program_route_builds_its_protocol_with_the_configured_format() -> None:
    cfg = parse_config(
        {"routes": [{**MINI, "format": "xml", "app_id": APPID, "encoding_aes_key": "${K}"}]}, ENV
    )
    route = RouteTable.from_config(cfg).routes[0]
    assert isinstance(route.protocol, WechatMiniProgram)
    assert (route.protocol.format, route.protocol.require_encryption, route.protocol.app_id) == (
        "xml",
        True,
        APPID,
    )
    assert route.protocol_name == "wechat-miniprogram"
    plain = RouteTable.from_config(parse_config({"routes": [MINI]}, ENV)).routes[0].protocol
    assert isinstance(plain, WechatMiniProgram) and (plain.format, plain.require_encryption) == (
        "json",
        False,
    )


def test_a_channels_shop_route_requires_encryption() -> None:
    shop = {
        **MINI,
        "channels": True,
        "app_id": APPID,
        "encoding_aes_key": "${K}",
        "require_encryption": False,
    }
    protocol = RouteTable.from_config(parse_config({"routes": [shop]}, ENV)).routes[0].protocol
    assert isinstance(protocol, WechatMiniProgram) and protocol.channels and protocol.require_encryption


@pytest.mark.parametrize(
    ("route", "message"),
    [
        ({**MINI, "channels": True}, "routes[0]: a Channels shop pushes in safe mode only"),
        (
            {**MINI, "channels": True, "format": "xml", "app_id": APPID, "encoding_aes_key": "${K}"},
            "a Channels shop pushes JSON only",
        ),
        ({**MINI, "format": "yaml"}, "routes[0].format"),
        ({**MINI, "encoding_aes_key": "${K}"}, "encoding_aes_key needs app_id"),
        (
            {**MINI, "decrypt_for_backend": True},
            "decrypt_for_backend / require_encryption need encoding_aes_key",
        ),
        ({**MINI, "app_id": "wxABC"}, "routes[0].app_id"),
        ({**MINI, "token": "inline-token"}, "routes[0].token: secrets are never written inline"),
        ({**MINI, "path": "/mini/{appid}"}, "protocol wechat-miniprogram does not take"),
        ({**OPEN, "path": "/open/callback"}, "holds {appid} where the console URL has $APPID$"),
        ({**OPEN, "kind": "authorization"}, "the authorization URL has no $APPID$"),
        ({**OPEN, "path": "/open/x{appid}"}, "must be a whole segment"),
        ({**OPEN, "path": "/{appid}"}, "a template needs a fixed segment too"),
        ({**OPEN, "path": "/open/{appid}/{openid}"}, "{openid} is a template segment"),
        ({**OPEN, "kind": "both"}, "routes[0].kind"),
        ({**OPEN, "component_app_id": "wx1"}, "routes[0].component_app_id"),
        ({**OPEN, "encoding_aes_key": "${T}"}, "route open: an EncodingAESKey is exactly 43"),
        (
            {**OPEN, "authorizers": {APPID: GH}, "authorizers_file": "/etc/a.yaml"},
            "either authorizers or authorizers_file",
        ),
        (
            {**OPEN, "kind": "authorization", "path": "/open/auth", "authorizers": {APPID: GH}},
            "authorizers bind the {appid} of a messages route",
        ),
        ({**OPEN, "authorizers": {"wxNOPE": GH}}, "'wxNOPE' is not an appid"),
        ({**OPEN, "authorizers": {APPID: "97417a04a28d"}}, "original id must start with gh_"),
    ],
)
def test_errors_say_what_to_fix(route: dict[str, Any], message: str) -> None:
    assert message in errors(route)


def test_two_templates_of_one_shape_are_one_path_routed_twice() -> None:
    assert "is routed twice" in errors(OPEN, {**OPEN, "name": "other"})


def test_secrets_of_the_new_routes_are_redacted() -> None:
    cfg = parse_config({"routes": [OPEN, {**MINI, "app_id": APPID, "encoding_aes_key": "${K}"}]}, ENV)
    shown = str(redacted(cfg))
    assert TOKEN not in shown and KEY not in shown and COMPONENT in shown


def _push(appid: str, to: str) -> Inbound:
    """A text message for authorizer ``appid`` addressed to original id ``to``, as the message route sees it."""
    out = traffic_open.message_delivery(
        "/open/{appid}/callback",
        appid,
        TOKEN,
        KEY,
        COMPONENT,
        traffic_open.mp_text(to, "oUser", "hi", 1, 1_700_000_000),
        "1700000000",
        "nonce1",
    )
    path, _, query = out.target.partition("?")
    params = dict(p.split("=", 1) for p in query.split("&"))
    return Inbound("POST", path, params, dict(out.headers), out.body, {"appid": appid})


def _verify(table: RouteTable, inbound: Inbound) -> tuple[str | None, bool]:
    protocol = table.routes[0].protocol
    assert isinstance(protocol, WechatOpenPlatform)
    verified = protocol.verify(inbound, 1_700_000_000)
    return verified.tenant, verified.tenant_verified


def test_the_authorizers_file_is_read_again_on_every_build(tmp_path: Path) -> None:
    (tmp_path / "authorizers.yaml").write_text(f"{APPID}: {GH}\n")
    (tmp_path / "proxy.yaml").write_text(
        "routes:\n  - name: open\n    path: /open/{appid}/callback\n    protocol: wechat-open-platform\n"
        f"    kind: messages\n    component_app_id: {COMPONENT}\n    token: ${{T}}\n"
        "    encoding_aes_key: ${K}\n    authorizers_file: authorizers.yaml\n"
    )
    cfg = load_config(tmp_path / "proxy.yaml", ENV)
    assert _verify(RouteTable.from_config(cfg), _push(APPID, GH)) == (APPID, True)
    with pytest.raises(Rejected) as e:  # bound: a push for another account under this appid's path
        _verify(RouteTable.from_config(cfg), _push(APPID, "gh_aaaaaaaaaaaa"))
    assert e.value.reason == "authorizer_mismatch"
    # JSON is YAML: the file after an edit, read by the next build (what a reload runs)
    (tmp_path / "authorizers.yaml").write_text('{"wx0000000000000001": "gh_000000000001"}')
    with pytest.raises(Rejected) as e:
        _verify(RouteTable.from_config(cfg), _push(APPID, GH))
    assert e.value.reason == "unknown_authorizer"
    # 全网发布 test accounts are always accepted, bound to their original ids
    assert _verify(RouteTable.from_config(cfg), _push("wx570bc396a51b8ff8", "gh_3c884a361561")) == (
        "wx570bc396a51b8ff8",
        True,
    )


def test_without_authorizers_any_appid_passes_marked_unverified() -> None:
    table = RouteTable.from_config(parse_config({"routes": [OPEN]}, ENV))
    assert _verify(table, _push(APPID, GH)) == (APPID, False)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("- just\n- a list\n", "must map each authorizer's appid to its original id"),
        (f"{APPID}: [gh_1]\n", "must map each authorizer's appid to its original id"),
        ("{unclosed: [", "is neither YAML nor JSON"),
    ],
)
def test_a_broken_authorizers_file_is_a_config_error_naming_it(
    tmp_path: Path, content: str, message: str
) -> None:
    (tmp_path / "a.yaml").write_text(content)
    text = errors({**OPEN, "authorizers_file": str(tmp_path / "a.yaml")})
    assert message in text and "route open" in text and str(tmp_path / "a.yaml") in text


def test_a_missing_authorizers_file_is_named(tmp_path: Path) -> None:
    text = errors({**OPEN, "authorizers_file": str(tmp_path / "missing.yaml")})
    assert "cannot read authorizers file" in text and "missing.yaml" in text
