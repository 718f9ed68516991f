"""``wxgate lookup`` through a running wxgate, on the embedded SQLite store and on a real redis-server: an
operator finds an MP message by its MsgId (or FromUserName + CreateTime) and a Pay notice by its transaction_id
or out_trade_no, and sees its attempts, claim state, trace id and outbox state; content only when asked."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from proxy.tools import sender, traffic
from tests.integration.conftest import ENV, TOKEN, mp_route
from tests.support.procs import ROOT, WXGATE, Backend, Sidecar, http, wait_until
from tests.support.redis_servers import RedisServer, free_port

pytestmark = pytest.mark.integration
PAY_KEY = "0123456789abcdef0123456789abcdef"
MCH = "1900000109"
CONTENT = "a message the operator must not see by default"


def start(tmp: Path, backend: Backend, store: str | None = None, name: str = "lookup") -> Sidecar:
    closed = free_port()  # the dead-letter route's backend never answers
    routes = [
        mp_route(),
        mp_route(
            name="mpdead",
            path="/wechat/dead",
            upstream=f"http://127.0.0.1:{closed}",
            outbox={"max_attempts": 1, "backoff_base": "0.05s", "backoff_max": "0.1s"},
        ),
        {"name": "pay2", "path": "/pay/v2", "protocol": "wechat-pay-v2", "api_key": "${PAY}", "mch_id": MCH},
    ]
    cfg: dict[str, Any] = {"upstream": backend.url, "routes": routes, **({"store": store} if store else {})}
    env = {**ENV, "PAY": PAY_KEY, "OTEL_TRACES_EXPORTER": "console"}  # tracing on: trace ids to look for
    s = Sidecar(tmp, cfg, env=env, name=name)
    s.start()
    return s


@pytest.fixture(scope="module")
def sidecar(tmp_module: Path, backend: Backend) -> Iterator[Sidecar]:
    s = start(tmp_module, backend)
    yield s
    s.stop()


def lookups(s: Sidecar, *calls: Sequence[str]) -> list[subprocess.CompletedProcess[str]]:
    """``wxgate lookup`` with each argument list, run side by side (each start imports all of wxgate)."""
    env = {**(s.env or {}), "PATH": "/usr/bin:/bin"}
    procs = [
        subprocess.Popen(
            [*WXGATE, "lookup", "-c", str(s.config_path), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env=env,
        )
        for args in calls
    ]
    done = []
    for p, args in zip(procs, calls, strict=True):
        out, err = p.communicate(timeout=30)
        done.append(subprocess.CompletedProcess(args, p.returncode, out, err))
    return done


def lookup(s: Sidecar, *args: str) -> subprocess.CompletedProcess[str]:
    return lookups(s, args)[0]


def found(out: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """The one notification a ``--json`` lookup found."""
    assert out.returncode == 0, out.stdout + out.stderr
    (one,) = json.loads(out.stdout)["found"]
    return one  # type: ignore[no-any-return]


def post(s: Sidecar, req: sender.Request | traffic.Outbound) -> tuple[int, bytes]:
    r = req if isinstance(req, sender.Request) else sender.Request.of(req)
    status, body, _ = http(r.method, s.url + r.path_query, r.body, r.headers)
    return status, body


def trace_of(s: Sidecar, route: str) -> list[str]:
    return [line["trace_id"] for line in s.log_lines() if line.get("route") == route and "trace_id" in line]


def send_mp(s: Sidecar, path: str, msg_id: int, user: str, now: int | None = None) -> tuple[int, bytes]:
    msg = sender.mp_text("gh_test", user, CONTENT, msg_id, now=now)
    return post(s, sender.mp_message(path, TOKEN, msg))


def send_pay(s: Sidecar, serial: str) -> None:
    fields = {
        "return_code": "SUCCESS",
        "appid": "wx0000000000000000",
        "mch_id": MCH,
        "nonce_str": f"n{serial}",
        "result_code": "SUCCESS",
        "openid": "oPayer",
        "total_fee": "1",
        "transaction_id": f"4200{serial}",
        "out_trade_no": f"T{serial}",
    }
    status, body = post(s, traffic.pay_v2_notify("/pay/v2", PAY_KEY, fields, sign_type="HMAC-SHA256"))
    assert status == 200 and b"SUCCESS" in body


def test_an_mp_message_is_found_by_msg_id_and_by_sender_and_time(sidecar: Sidecar) -> None:
    msg_id, now = int(time.time() * 1000), int(time.time())
    status, passive = send_mp(sidecar, "/wechat/callback", msg_id, "oLookupUser", now)
    assert status == 200 and CONTENT.encode() in passive  # the demo backend echoes it in a passive reply
    assert send_mp(sidecar, "/wechat/callback", msg_id, "oLookupUser", now) == (200, passive)  # a retry

    by_id, by_sender, text = lookups(
        sidecar,
        ["--json", "--msg-id", str(msg_id)],
        ["--json", "--from", "oLookupUser", "--create-time", str(now), "--route", "mp"],
        ["--msg-id", str(msg_id)],
    )
    shown = found(by_id)
    assert (shown["route"], shown["protocol"], shown["found_by"]) == ("mp", "wechat-mp", f"MsgId={msg_id}")
    record = shown["record"]
    assert (record["state"], record["attempts"]) == ("done", 2)
    assert abs(record["first_seen"] - now) < 30
    assert record["trace_id"] and record["trace_id"] == trace_of(sidecar, "mp")[-2]  # the first delivery's
    assert record["reply"] == {"status": 200, "kind": "passive", "bytes": len(passive)}  # no body by default
    assert shown["outbox"] == []
    assert found(by_sender)["dedup_key"] == shown["dedup_key"]

    assert text.returncode == 0
    assert "done" in text.stdout and "attempts     2" in text.stdout and record["trace_id"] in text.stdout
    assert CONTENT not in text.stdout


def test_a_pay_notice_is_found_by_transaction_id_and_out_trade_no_and_an_unknown_id_is_not(
    sidecar: Sidecar,
) -> None:
    serial = str(int(time.time() * 1000))
    send_pay(sidecar, serial)
    transaction_out, order_out, unknown, bad = lookups(
        sidecar,
        ["--json", "--transaction-id", f"4200{serial}"],
        ["--json", "--out-trade-no", f"T{serial}"],
        ["--out-trade-no", f"T{serial}0"],
        ["--from", "oUser"],
    )
    by_transaction, by_order = found(transaction_out), found(order_out)
    assert by_transaction["dedup_key"] == by_order["dedup_key"]
    assert (by_order["route"], by_order["found_by"]) == ("pay2", f"out_trade_no=T{serial}")
    assert (by_order["record"]["state"], by_order["record"]["attempts"]) == ("done", 1)
    assert by_order["record"]["reply"]["kind"] == "ack" and "body" not in by_order["record"]["reply"]
    assert unknown.returncode == 1 and "not found" in unknown.stdout
    assert bad.returncode == 2 and "--create-time" in bad.stderr


def test_a_dead_letter_is_shown_with_its_last_error(sidecar: Sidecar) -> None:
    msg_id = int(time.time() * 1000) + 7
    # The backend is down: acknowledged, kept in the outbox, redelivered once, then buried.
    assert send_mp(sidecar, "/wechat/dead", msg_id, "oDead") == (200, b"success")
    wait_until(
        lambda: sidecar.metric("wxgate_outbox_dead_lettered_total", route="mpdead") >= 1, 20, "a dead letter"
    )
    as_json, as_text = lookups(
        sidecar, ["--json", "--msg-id", str(msg_id)], ["--msg-id", str(msg_id), "--show-content"]
    )
    shown = found(as_json)
    (dead,) = shown["outbox"]
    assert dead["dead_letter"] and dead["last_error"] and dead["next_at"] is None
    assert dead["trace_id"] == shown["record"]["trace_id"] and "body" not in dead
    assert shown["record"]["state"] == "released"
    assert (
        "dead letter" in as_text.stdout
        and dead["id"] in as_text.stdout
        and dead["last_error"] in as_text.stdout
    )
    assert CONTENT in as_text.stdout  # --show-content: the message body


def test_lookup_reads_a_redis_store(tmp_path: Path, backend: Backend) -> None:
    redis = RedisServer().start()
    s = start(tmp_path, backend, store=redis.url, name="lookup-redis")
    try:
        msg_id, serial = int(time.time() * 1000) + 11, str(int(time.time() * 1000) + 11)
        assert send_mp(s, "/wechat/callback", msg_id, "oRedisUser")[0] == 200
        send_pay(s, serial)
        mp, pay = map(
            found, lookups(s, ["--json", "--msg-id", str(msg_id)], ["--json", "--out-trade-no", f"T{serial}"])
        )
        assert (mp["route"], mp["record"]["state"], mp["record"]["attempts"]) == ("mp", "done", 1)
        assert mp["record"]["trace_id"] == trace_of(s, "mp")[-1]
        assert (pay["route"], pay["record"]["state"]) == ("pay2", "done")
        assert abs(pay["record"]["first_seen"] - time.time()) < 30
    finally:
        s.stop()
        redis.cleanup()
