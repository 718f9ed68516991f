"""SIGHUP reload: secrets and routes change live, an invalid file is rejected and the old configuration kept,
restart-only keys are reported, in-flight requests keep their route, and no connection is dropped."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from http.client import HTTPConnection
from pathlib import Path
from typing import Any

import pytest

from proxy.tools import sender
from tests.support.procs import Backend, Sidecar, http

pytestmark = pytest.mark.integration
PATH = "/wechat/callback"


@pytest.fixture(scope="module")
def secrets_dir(tmp_module: Path) -> Path:
    return tmp_module


@pytest.fixture(scope="module")
def running(tmp_module: Path, secrets_dir: Path, backend: Backend) -> Iterator[Sidecar]:
    (secrets_dir / "token").write_text("token-one\n")
    route = {"name": "mp", "path": PATH, "protocol": "wechat-mp", "token_file": str(secrets_dir / "token")}
    s = Sidecar(tmp_module, {"upstream": backend.url, "routes": [route]}, name="reload")
    s.start()
    yield s
    assert s.stop() == 0


@pytest.fixture(scope="module")
def initial(running: Sidecar) -> dict[str, Any]:
    return dict(running.config)


@pytest.fixture
def sidecar(running: Sidecar, initial: dict[str, Any], secrets_dir: Path) -> Sidecar:
    """The module's sidecar, reloaded back to its first configuration and token."""
    (secrets_dir / "token").write_text("token-one\n")
    running.config = dict(initial)
    running.reload({})
    return running


def last(s: Sidecar, level: str) -> str:
    return str([r for r in s.log_lines() if r.get("level") == level][-1]["msg"])


def text(token: str, msg_id: int) -> sender.Request:
    return sender.mp_message(PATH, token, sender.mp_text("gh_reload", "oUserR", f"m{msg_id}", msg_id))


def send(s: Sidecar, req: sender.Request, conn: HTTPConnection | None = None) -> int:
    if conn is None:
        return http(req.method, s.url + req.path_query, req.body, req.headers)[0]
    conn.request(req.method, req.path_query, req.body, req.headers)
    resp = conn.getresponse()
    resp.read()
    return resp.status


def test_sighup_rereads_the_secret_file(sidecar: Sidecar, secrets_dir: Path, fresh_backend: Backend) -> None:
    assert send(sidecar, text("token-one", 1)) == 200
    started = sidecar.metric("wxgate_config_last_reload_success_timestamp_seconds")
    reloads = sidecar.metric("wxgate_config_reloads_total", result="success")
    (secrets_dir / "token").write_text("token-two\n")
    sidecar.reload()
    assert send(sidecar, text("token-one", 2)) == 403
    assert send(sidecar, text("token-two", 3)) == 200
    assert fresh_backend.stats()["count"] == 2
    assert sidecar.metric("wxgate_config_reloads_total", result="success") == reloads + 1
    assert sidecar.metric("wxgate_config_last_reload_success_timestamp_seconds") > started
    assert "configuration reloaded from" in sidecar.logs()


def test_an_invalid_file_is_rejected_and_the_running_configuration_kept(
    sidecar: Sidecar, secrets_dir: Path, fresh_backend: Backend
) -> None:
    failures = sidecar.metric("wxgate_config_reloads_total", result="failure")
    bad_route = {**sidecar.config["routes"][0], "deadline": "soon"}
    sidecar.reload({"routes": [bad_route]}, expect="failure")
    assert sidecar.metric("wxgate_config_last_reload_successful") == 0
    line = last(sidecar, "error")
    assert "reload rejected, the running configuration is kept" in line
    assert "routes[0].deadline: expected a duration" in line
    assert send(sidecar, text("token-one", 10)) == 200  # still the old, valid configuration

    (secrets_dir / "token").unlink()
    sidecar.reload({"routes": [{**bad_route, "deadline": "4.5s"}]}, expect="failure")
    assert "routes[0].token_file: cannot read secret file" in last(sidecar, "error")
    assert send(sidecar, text("token-one", 11)) == 200

    (secrets_dir / "token").write_text("token-one")
    sidecar.reload()
    assert sidecar.metric("wxgate_config_last_reload_successful") == 1
    assert sidecar.metric("wxgate_config_reloads_total", result="failure") == failures + 2


def test_an_empty_or_placeholder_secret_file_is_rejected_on_reload(
    sidecar: Sidecar, secrets_dir: Path, fresh_backend: Backend
) -> None:
    failures = sidecar.metric("wxgate_config_reloads_total", result="failure")
    for content in (
        "",
        "  \n",
        "replace-with-the-official-account-token\n",
    ):  # half-written, blank, placeholder
        (secrets_dir / "token").write_text(content)
        sidecar.reload(expect="failure")
        line = last(sidecar, "error")
        assert "reload rejected, the running configuration is kept" in line
        assert "routes[0].token_file" in line and ("is empty" in line or "still holds a placeholder" in line)
        assert "replace-with-the-official" not in line
        assert send(sidecar, text("", 20)) == 403  # a signature keyed with the empty token forges nothing
        assert send(sidecar, text("token-one", 21 + len(content))) == 200  # the running token still verifies
    assert sidecar.metric("wxgate_config_reloads_total", result="failure") == failures + 3
    assert sidecar.metric("wxgate_config_last_reload_successful") == 0
    assert fresh_backend.stats()["count"] == 3


def test_restart_only_keys_keep_their_running_value_and_are_reported(
    sidecar: Sidecar, tmp_path: Path
) -> None:
    old_url = sidecar.url
    sidecar.reload({"listen": "127.0.0.1:1", "store": f"sqlite:///{tmp_path}/other.db", "unmatched": "deny"})
    assert "listen, store changed and only take effect after a restart" in last(sidecar, "warning")
    assert sidecar.metric("wxgate_config_restart_required") == 1
    assert http("POST", old_url + "/not/a/route", b"x")[0] == 404  # the live key applied: unmatched=deny
    assert send(sidecar, text("token-one", 20)) == 200


def test_an_in_flight_request_keeps_the_route_it_started_with(sidecar: Sidecar, backend: Backend) -> None:
    backend.set_mode("slow:1.5")
    results: list[int] = []
    try:
        worker = threading.Thread(target=lambda: results.append(send(sidecar, text("token-one", 30))))
        worker.start()
        time.sleep(0.4)  # the request is now waiting on the backend
        sidecar.reload({"routes": [], "unmatched": "deny"})
        worker.join(10)
    finally:
        backend.set_mode("passive")
    assert results == [200]  # verified and answered under the route it was matched with
    assert send(sidecar, text("token-one", 31)) == 404  # new requests see the new table


def test_no_connection_is_dropped_across_reloads(sidecar: Sidecar, fresh_backend: Backend) -> None:
    keepalive = HTTPConnection("127.0.0.1", sidecar.port, timeout=10)
    try:
        assert send(sidecar, text("token-one", 40), keepalive) == 200
        socket_before = keepalive.sock
        statuses: list[int] = []
        stop = threading.Event()

        ids = itertools.count(1000)  # one message id each: no request is a duplicate of another

        def traffic() -> None:
            while not stop.is_set():
                statuses.append(send(sidecar, text("token-one", next(ids))))

        workers = [threading.Thread(target=traffic) for _ in range(3)]
        for w in workers:
            w.start()
        for _ in range(3):
            sidecar.reload()
        stop.set()
        for w in workers:
            w.join(10)
        assert send(sidecar, text("token-one", 41), keepalive) == 200
        assert keepalive.sock is socket_before
    finally:
        keepalive.close()
    assert statuses and set(statuses) == {200}
    assert fresh_backend.stats()["count"] == len(statuses) + 2
