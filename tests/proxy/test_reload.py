from __future__ import annotations

from proxy.config import Config, parse_config
from proxy.reload import RESTART_KEYS, merge

BASE = {"listen": "127.0.0.1:8080", "store": "sqlite://:memory:", "unmatched": "passthrough"}


def test_live_keys_apply_and_restart_only_keys_keep_their_running_value() -> None:
    running = parse_config(BASE, {})
    new = parse_config({**BASE, "listen": "127.0.0.1:9999", "unmatched": "deny", "log_level": "debug"}, {})
    applied, pending = merge(running, new)
    assert pending == ("listen",)
    assert applied.listen == "127.0.0.1:8080"
    assert (applied.unmatched, applied.log_level) == ("deny", "debug")


def test_nothing_pending_when_only_live_keys_change() -> None:
    running = parse_config(BASE, {})
    new = parse_config({**BASE, "drain_timeout": "3s"}, {})
    assert merge(running, new) == (new, ())


def test_restart_keys_are_top_level_settings() -> None:
    fields = set(Config.model_fields)
    assert set(RESTART_KEYS) <= fields
    assert "routes" not in RESTART_KEYS and "tls" not in RESTART_KEYS
