"""The user in wxgate's log lines is keyed: through a running wxgate, the ``user`` of an access line is the
HMAC-SHA256 of the openid under ``log_hash_key`` (not the plain SHA-256 anybody can compute from a list of
openids), a reload with a new key applies it, and without a key wxgate says that hashes will not correlate."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterator
from pathlib import Path

import pytest

from proxy.config import parse_config
from proxy.tools import sender
from tests.integration.conftest import ENV, mp_route
from tests.support.procs import Backend, Sidecar, http

pytestmark = pytest.mark.integration

OPENID = "oS3cr3tUser000000000000001"
KEY = "0123456789abcdef0123456789abcdef"
NEW_KEY = "fedcba9876543210fedcba9876543210"


def keyed(key: str) -> str:
    return hmac.new(key.encode(), OPENID.encode(), hashlib.sha256).hexdigest()[:16]


PLAIN = hashlib.sha256(OPENID.encode()).hexdigest()[:16]


def send(sidecar: Sidecar, msg_id: str) -> str:
    """The ``user`` of the access line of one message from OPENID."""
    (route,) = parse_config({"routes": [mp_route()]}, ENV).routes
    req = sender.build(route, sender.SendOptions(user=OPENID, message_id=msg_id))
    assert http(req.method, sidecar.url + req.path_query, req.body, req.headers)[0] == 200
    lines = [ln for ln in sidecar.log_lines() if ln.get("logger") == "wxgate.access"]
    user: str = lines[-1]["user"]
    return user


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    f = tmp_path / "log-hash-key"
    f.write_text(KEY + "\n")
    return f


@pytest.fixture
def keyed_sidecar(tmp_path: Path, fresh_backend: Backend, key_file: Path) -> Iterator[Sidecar]:
    s = Sidecar(
        tmp_path,
        {"upstream": fresh_backend.url, "log_hash_key_file": str(key_file), "routes": [mp_route()]},
        env=ENV,
        name="keyed",
    )
    s.start()
    yield s
    s.stop()


def test_the_logged_user_is_keyed_by_log_hash_key_and_a_reload_applies_a_new_key(
    keyed_sidecar: Sidecar, key_file: Path
) -> None:
    assert send(keyed_sidecar, "8001") == keyed(KEY) != PLAIN
    key_file.write_text(NEW_KEY + "\n")
    keyed_sidecar.reload()
    assert send(keyed_sidecar, "8002") == keyed(NEW_KEY)
    logs = keyed_sidecar.logs()
    assert "log_hash_key is not set" not in logs
    assert KEY not in logs and NEW_KEY not in logs and OPENID not in logs


def test_without_a_key_the_hash_is_still_keyed_and_wxgate_warns(
    tmp_path: Path, fresh_backend: Backend
) -> None:
    s = Sidecar(tmp_path, {"upstream": fresh_backend.url, "routes": [mp_route()]}, env=ENV, name="unkeyed")
    s.start()
    try:
        user = send(s, "8003")
        assert len(user) == 16 and user not in (PLAIN, keyed(KEY))
        (warning,) = [ln for ln in s.log_lines() if "log_hash_key is not set" in ln.get("msg", "")]
        assert (
            warning["level"] == "warning" and "do not correlate across replicas or restarts" in warning["msg"]
        )
    finally:
        s.stop()
