"""A route's effective settings: what its configuration leaves unset comes from its protocol's class attributes
(methods, content types, backend-failure policy, dedup TTL, last attempt), and its label is the protocol's name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy.config import ROUTE_TAGS, Config, parse_config
from proxy.config.schema import Policy
from proxy.pipeline.routes import RouteRuntime, build_route
from tests.proxy.protocols import vectors as v

ENV = {"K": "k" * 32, "AES": v.MP_KEY}
XML = frozenset({"", "text/xml", "application/xml", "text/plain"})
JSON = frozenset({"", "application/json", "text/json", "text/plain"})
H = 3600.0


def routes(tmp_path: Path) -> dict[str, dict[str, Any]]:
    cert = tmp_path / "platform.pem"
    cert.write_bytes(v.V15_CERTIFICATE)
    return {
        "wechat-mp": {"token": "${K}"},
        "wecom": {"token": "${K}", "encoding_aes_key": "${AES}", "receive_id": "ww1"},
        "wechat-pay-v2": {"api_key": "${K}", "mch_id": "1900000001"},
        "wechat-pay-v3": {"apiv3_key": "${K}", "mch_id": "1900000001", "platform_certificates": [str(cert)]},
        "hmac": {"secret": "${K}"},
        "standard-webhooks": {"secret": "${K}"},
    }


def runtime(tmp_path: Path, proto: str, **extra: object) -> RouteRuntime:
    fields = {"name": "r", "path": "/r", "protocol": proto, **routes(tmp_path)[proto], **extra}
    config: Config = parse_config({"routes": [fields]}, ENV)
    return build_route(config, config.routes[0])


GET_POST, POST = frozenset({"GET", "POST"}), frozenset({"POST"})
# protocol -> (methods, content types, policy, dedup ttl, last attempt): what wxgate has always applied
DEFAULTS: dict[str, tuple[frozenset[str], frozenset[str] | None, Policy, float, int]] = {
    "wechat-mp": (GET_POST, XML, "ack", 600.0, 4),
    "wecom": (GET_POST, XML | JSON, "ack", 600.0, 4),
    "wechat-pay-v2": (POST, XML, "fail", 25 * H, 1),
    "wechat-pay-v3": (POST, JSON | XML, "fail", 25 * H, 1),
    "hmac": (GET_POST, None, "ack", 600.0, 1),
    "standard-webhooks": (POST, None, "ack", 600.0, 1),
}


@pytest.mark.parametrize("proto", DEFAULTS)
def test_unset_keys_take_the_protocols_defaults(tmp_path: Path, proto: str) -> None:
    methods, content_types, policy, ttl, last = DEFAULTS[proto]
    r = runtime(tmp_path, proto)
    assert r.protocol_name == proto and proto in ROUTE_TAGS
    assert (r.methods, r.content_types, r.policy, r.dedup_ttl) == (methods, content_types, policy, ttl)
    assert r.protocol.last_attempt == last


@pytest.mark.parametrize("proto", DEFAULTS)
def test_configured_keys_win_over_the_protocols_defaults(tmp_path: Path, proto: str) -> None:
    r = runtime(tmp_path, proto, methods=["PUT"], on_backend_failure="relay", dedup={"ttl": "2h"})
    assert (r.methods, r.policy, r.dedup_ttl) == (frozenset({"PUT"}), "relay", 2 * H)


def test_the_default_dedup_ttl_outlasts_a_long_timestamp_window(tmp_path: Path) -> None:
    # nonces are remembered for twice the window; a dedup record must live at least as long
    assert runtime(tmp_path, "wechat-mp", timestamp_window="15m").dedup_ttl == 1800.0
    assert runtime(tmp_path, "wechat-pay-v3", timestamp_window="15m").dedup_ttl == 25 * H


def test_check_prints_what_each_route_runs_with(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from proxy.cli import main

    mp = {"name": "mp", "path": "/mp", "protocol": "wechat-mp", "token": "${WXGATE_TEST_TOKEN:-a-real-token}"}
    pay = {**routes(tmp_path)["wechat-pay-v3"], "name": "pay", "path": "/pay", "protocol": "wechat-pay-v3"}
    pay["apiv3_key"] = "${WXGATE_TEST_KEY:-" + "k" * 32 + "}"
    (tmp_path / "proxy.yaml").write_text(
        yaml.safe_dump({"store": f"sqlite:///{tmp_path}/s.db", "routes": [mp, {**pay, "methods": ["PUT"]}]})
    )
    assert main(["-c", str(tmp_path / "proxy.yaml"), "check"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out.split("\n", 1)[1])["routes"]
    assert [(r["methods"], r["on_backend_failure"], r["dedup"]["ttl"]) for r in shown] == [
        (["GET", "POST"], "ack", 600.0),
        (["PUT"], "fail", 25 * H),
    ]
    assert shown[0]["token"] == "***"


def test_routes_sharing_a_secret_share_a_replay_scope() -> None:
    """Directly or through a rotation (one route's previous token is another's token), across protocols (MP and
    Mini Program signatures are the same); a route sharing nothing keeps its own name."""
    from proxy.pipeline.routes import RouteTable

    env = {"A": "token-a", "B": "token-b", "C": "token-c", "S": "s" * 32}
    mp = {"protocol": "wechat-mp"}
    raw = [
        {**mp, "name": "m2", "path": "/m2", "token": "${B}", "previous_token": "${A}"},
        {**mp, "name": "m1", "path": "/m1", "token": "${A}"},
        {
            "name": "mini",
            "path": "/mini",
            "protocol": "wechat-miniprogram",
            "token": "${B}",
            "format": "json",
        },
        {**mp, "name": "alone", "path": "/alone", "token": "${C}"},
        {"name": "h1", "path": "/h1", "protocol": "hmac", "secret": "${S}"},
        {"name": "h2", "path": "/h2", "protocol": "hmac", "secret": "${S}"},
    ]
    config = parse_config({"routes": raw}, env)
    table = RouteTable([build_route(config, r) for r in config.routes])
    scopes = {r.name: r.replay_scope for r in table.routes}
    assert scopes == {"m2": "m1", "m1": "m1", "mini": "m1", "alone": "alone", "h1": "h1", "h2": "h1"}
    assert table.match("/m2") is not None and table.match("/m2").replay_scope == "m1"  # type: ignore[union-attr]
