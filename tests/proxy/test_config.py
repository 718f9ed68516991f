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
