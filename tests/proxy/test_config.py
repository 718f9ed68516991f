from __future__ import annotations

from pathlib import Path

import pytest

from proxy.config import ConfigError, Secret, load_config, parse_config, redacted

MP = {"name": "mp", "path": "/wx", "protocol": "wechat-mp", "token": "${T}"}


def errors(raw: object, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as e:
        parse_config(raw, {"T": "x"} if env is None else env)
    return str(e.value)


def test_defaults_and_per_protocol_policies() -> None:
    cfg = parse_config({"routes": [MP]}, {"T": "tok"})
    r = cfg.routes[0]
    assert r.token.reveal() == "tok" and r.deadline == 4.5 and r.timestamp_window == 300
    assert cfg.listen_addr == ("0.0.0.0", 8080)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"routes": [{**MP, "deadline": "soon"}]}, "routes[0].deadline: expected a duration"),
        ({"routes": [{**MP, "tokne": "x"}]}, "routes[0].tokne: unknown key"),
        ({"routes": [{**MP, "token": "plain-secret"}]}, "routes[0].token: secrets are never written inline"),
        ({"routes": [{**MP, "protocol": "wechat-mq"}]}, "routes[0]"),
        ({"listen": "8080"}, "listen: expected host:port"),
        ({"store": "mysql://x"}, "store: expected one of"),
        ({"routes": [MP, {**MP, "name": "other"}]}, "is routed twice"),
        ({"routes": [MP, {**MP, "path": "/other"}]}, "is used twice"),
        ({"routes": [{**MP, "encoding_aes_key": "${T}"}]}, "needs app_id"),
        ({"routes": [{**MP, "dedup": {"store_down": "maybe"}}]}, "routes[0].dedup.store_down"),
        ({"routes": [{**MP, "name": "Bad Name"}]}, "routes[0].name"),
    ],
)
def test_errors_name_the_key_path(raw: object, message: str) -> None:
    assert message in errors(raw)


def test_missing_env_var_is_named() -> None:
    assert "routes[0].token: environment variable T is not set" in errors({"routes": [MP]}, {})


def test_env_default_and_secret_files(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("from-file\n")
    (tmp_path / "c.yaml").write_text(
        "routes:\n  - {name: a, path: /a, protocol: wechat-mp, token_file: token}\n"
        "  - {name: b, path: /b, protocol: wechat-mp, token: '${NOPE:-demo}'}\n"
    )
    cfg = load_config(tmp_path / "c.yaml", {})
    assert [r.token.reveal() for r in cfg.routes] == ["from-file", "demo"]


def test_unreadable_secret_file_is_named(tmp_path: Path) -> None:
    assert "cannot read secret file" in errors(
        {
            "routes": [
                {**{k: v for k, v in MP.items() if k != "token"}, "token_file": str(tmp_path / "missing")}
            ]
        }
    )


def test_secrets_never_show() -> None:
    cfg = parse_config({"routes": [MP]}, {"T": "super-secret-token"})
    assert "super-secret-token" not in repr(cfg) and "super-secret-token" not in str(redacted(cfg))
    assert repr(Secret("x")) == "Secret('***')"


def test_shipped_proxy_yaml_is_valid() -> None:
    cfg = load_config(Path(__file__).parents[2] / "proxy.yaml", {})
    assert cfg.routes and cfg.routes[0].name == "mp"


def test_relative_key_files_are_read_next_to_the_config(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text(
        "routes:\n  - name: pay\n    path: /pay\n    protocol: wechat-pay-v3\n    apiv3_key: ${K}\n"
        "    mch_id: '1900000001'\n    platform_certificates: [certs/platform.pem]\n"
        "    public_keys: [{id: PUB_KEY_ID_0114, file: keys/pub.pem}]\n"
    )
    cfg = load_config(tmp_path / "c.yaml", {"K": "k" * 32})
    route = cfg.routes[0]
    assert route.platform_certificates == [tmp_path / "certs/platform.pem"]  # type: ignore[union-attr]
    assert route.public_keys[0].file == tmp_path / "keys/pub.pem"  # type: ignore[union-attr]


# -- empty and placeholder secrets ---------------------------------------------------------------------------

ROUTES: dict[str, dict[str, object]] = {
    "wechat-mp": {"token": "${K}", "app_id": "wx0123456789abcdef", "encoding_aes_key": "${K}"},
    "wecom": {"token": "${K}", "encoding_aes_key": "${K}", "receive_id": "ww1"},
    "wechat-pay-v2": {"api_key": "${K}", "mch_id": "1900000001"},
    "wechat-pay-v3": {
        "apiv3_key": "${K}",
        "mch_id": "1900000001",
        "platform_certificates": ["/etc/p.pem"],
        "api_key": "${K}",
    },
    "hmac": {"secret": "${K}"},
    "standard-webhooks": {"secret": "${K}"},
    "wechat-miniprogram": {"token": "${K}", "app_id": "wx0123456789abcdef", "encoding_aes_key": "${K}"},
    "wechat-open-platform": {
        "kind": "authorization",
        "component_app_id": "wx0123456789abcdef",
        "token": "${K}",
        "encoding_aes_key": "${K}",
    },
}
SECRETS = [
    (proto, key)
    for proto, fields in ROUTES.items()
    for field in fields
    if field in ("token", "encoding_aes_key", "api_key", "apiv3_key", "secret")
    for key in (field, f"previous_{field}")
]


def route(proto: str, **extra: object) -> dict[str, object]:
    return {"name": "r", "path": "/r", "protocol": proto, **ROUTES[proto], **extra}


@pytest.mark.parametrize(("proto", "key"), SECRETS)
@pytest.mark.parametrize("value", ["", "   ", "\t\n"])
def test_an_empty_secret_is_refused_naming_the_key(proto: str, key: str, value: str) -> None:
    raw = {"routes": [route(proto, **{key: "${E}"})]}
    if key.startswith("previous_"):
        # An empty previous_* is simply absent: nothing to rotate from.
        cfg = parse_config(raw, {"K": "real-secret", "E": value})
        assert getattr(cfg.routes[0], key) is None
    else:
        assert f"routes[0].{key}: is empty" in errors(raw, {"K": "real-secret", "E": value})


@pytest.mark.parametrize(("proto", "key"), SECRETS)
def test_an_empty_or_half_written_secret_file_is_refused(tmp_path: Path, proto: str, key: str) -> None:
    (tmp_path / "empty").write_text("  \n")
    r = {k: v for k, v in route(proto).items() if k != key}
    raw = {"routes": [{**r, f"{key}_file": str(tmp_path / "empty")}]}
    if key.startswith("previous_"):
        assert getattr(parse_config(raw, {"K": "real-secret"}).routes[0], key) is None
    else:
        message = errors(raw, {"K": "real-secret"})
        assert f"routes[0].{key}_file ({tmp_path / 'empty'}): is empty" in message


@pytest.mark.parametrize(("proto", "key"), SECRETS)
def test_the_kubernetes_placeholder_is_refused(tmp_path: Path, proto: str, key: str) -> None:
    placeholder = "replace-with-the-official-account-token"
    message = errors({"routes": [route(proto, **{key: "${E}"})]}, {"K": "real-secret", "E": placeholder})
    assert f"routes[0].{key}: still holds a placeholder (replace-with-" in message
    (tmp_path / "s").write_text(placeholder + "\n")
    r = {k: v for k, v in route(proto).items() if k != key}
    message = errors({"routes": [{**r, f"{key}_file": str(tmp_path / "s")}]}, {"K": "real-secret"})
    assert "still holds a placeholder" in message and placeholder not in message


def test_secret_errors_never_show_the_value() -> None:
    message = errors({"routes": [route("hmac", secret="${E}")]}, {"E": "replace-with-hunter2-hunter2"})
    assert "hunter2" not in message


def test_env_default_applies_to_set_but_empty_variables() -> None:
    raw = {"routes": [{**MP, "token": "${T:-demo-token}", "previous_token": "${OLD:-}"}]}
    cfg = parse_config(raw, {"T": "", "OLD": ""})
    assert cfg.routes[0].token.reveal() == "demo-token"
    assert cfg.routes[0].previous_token is None  # type: ignore[union-attr]
    assert parse_config(raw, {"T": "set"}).routes[0].token.reveal() == "set"
    # ${T} set but empty stays empty, and an empty token is refused
    assert "routes[0].token: is empty" in errors({"routes": [MP]}, {"T": ""})
    assert "routes[0].token: is empty" in errors({"routes": [{**MP, "token": "${T:-}"}]}, {})


# -- windows and TTLs ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("window", [0, "0s", "500ms"])
def test_a_zero_timestamp_window_is_refused(window: object) -> None:
    assert "routes[0].timestamp_window: timestamp_window must be at least 1s" in errors(
        {"routes": [{**MP, "timestamp_window": window}]}
    )


def test_a_dedup_ttl_shorter_than_twice_the_window_is_refused() -> None:
    message = errors({"routes": [{**MP, "timestamp_window": "5m", "dedup": {"ttl": "9m"}}]})
    assert "routes[0]: dedup.ttl (540s) must be at least twice timestamp_window (600s)" in message
    assert parse_config({"routes": [{**MP, "dedup": {"ttl": "10m"}}]}, {"T": "x"}).routes
    # no timestamp on Pay v2 notices, and no dedup record when dedup is off
    assert parse_config({"routes": [route("wechat-pay-v2", dedup={"ttl": "1m"})]}, {"K": "k"}).routes
    assert parse_config({"routes": [{**MP, "dedup": {"enabled": False, "ttl": "1m"}}]}, {"T": "x"}).routes


# -- store URLs --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis:/:hunter2pw@127.0.0.1:6379/0", "store: expected one of"),
        ("rediss//:hunter2pw@127.0.0.1:6379/0", "store: expected one of"),
        ("mysql://root:hunter2pw@db/0", "got mysql://…"),
        ("redis://:hunter2pw/x@127.0.0.1:6379/0", "store: redis:// URL has an '@' after its host part"),
        ("redis://:hunter2pw@127.0.0.1:63x9/0", "store: redis:// URL has no valid host:port"),
        ("redis+cluster://:hunter2pw/x@127.0.0.1:7000", "store: redis+cluster:// URL has an '@' after"),
        ("redis+cluster://:hunter2pw@", "store: redis+cluster:// needs at least one seed node"),
        ("redis+cluster://:hunter2pw@h:7x", "store: a node's port is not a number"),
        ("sqlite://hunter2pw", "store: expected sqlite:///absolute/path"),
        ("redis://:@127.0.0.1:6379/0", "store: the URL's password is empty"),
        (
            "redis://:replace-with-hunter2pw@redis:6379/0",
            "store: the URL's password still holds a placeholder",
        ),
    ],
)
def test_a_mistyped_store_url_never_echoes_the_password(url: str, message: str) -> None:
    text = errors({"store": url})
    assert message in text and "hunter2pw" not in text


def test_log_hash_key_is_a_secret_of_at_least_16_characters(tmp_path: Path) -> None:
    assert parse_config({}, {}).log_hash_key is None
    assert "log_hash_key: secrets are never written inline" in errors(
        {"log_hash_key": "inline-key-0123456789"}
    )
    assert "log_hash_key: must be at least 16 characters" in errors({"log_hash_key": "${K}"}, {"K": "short"})
    (tmp_path / "hash-key").write_text("0123456789abcdef0123456789abcdef\n")
    cfg = parse_config({"log_hash_key_file": str(tmp_path / "hash-key")}, {})
    assert cfg.log_hash_key == Secret("0123456789abcdef0123456789abcdef")
    assert redacted(cfg)["log_hash_key"] == "***"


@pytest.mark.parametrize(
    ("listen", "admin", "ok"),
    [
        ("0.0.0.0:8080", "127.0.0.1:8080", False),
        ("127.0.0.1:8080", "127.0.0.1:8080", False),
        ("10.0.0.5:8080", "127.0.0.1:8080", True),
        ("0.0.0.0:8080", "127.0.0.1:9090", True),
    ],
)
def test_listen_and_admin_cannot_share_a_port(listen: str, admin: str, ok: bool) -> None:
    raw = {"listen": listen, "admin": admin}
    if ok:
        assert parse_config(raw, {}).admin == admin
    else:
        assert "listen and admin both bind port 8080" in errors(raw)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:hunter2pw@cache:6379/0", "redis://:***@cache:6379/0"),
        ("redis://app:hunter2pw@cache:6379/0", "redis://app:***@cache:6379/0"),
        ("rediss://:p%2Fhunter2pw@cache:6380/0", "rediss://:***@cache:6380/0"),
        ("redis://:a@hunter2pw@cache:6379/0", "redis://:***@cache:6379/0"),
        (
            "redis+sentinel://:hunter2pw@s1:26379,s2:26379/mymaster",
            "redis+sentinel://:***@s1:26379,s2:26379/mymaster",
        ),
        ("redis://cache:6379/0?password=hunter2pw&db=1", "redis://cache:6379/0?password=***&db=1"),
        ("redis://cache:6379/0", "redis://cache:6379/0"),
    ],
)
def test_check_shows_the_store_url_without_its_password(url: str, shown: str) -> None:
    assert redacted(parse_config({"store": url}, {}))["store"] == shown


def test_a_password_with_an_unencoded_slash_is_refused_not_misread() -> None:
    # it would otherwise parse as host "localhost" (the default) with the password's tail as the path
    text = errors({"store": "redis://:1234/hunter2pw@cache:6379/0"})
    assert "must be percent-encoded" in text and "hunter2pw" not in text
