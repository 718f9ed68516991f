from __future__ import annotations

import asyncio
from collections.abc import Mapping

import pytest

from addons.forward import Forward
from addons.verify import Verify
from proxy.pipeline.settlement import Settlement
from proxy.tasks import BackgroundTasks
from proxy.upstream.client import UpstreamClient, UpstreamResult
from tests.addons.conftest import Nonces, mp_flow, routed, table

PASSIVE = (
    b"<xml><ToUserName><![CDATA[oUser]]></ToUserName><FromUserName><![CDATA[gh]]></FromUserName>"
    b"<CreateTime>1</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[hey]]></Content></xml>"
)


class FakeUpstream(UpstreamClient):
    """Answers with a fixed result after ``delay`` seconds and records what it was sent."""

    def __init__(self, result: UpstreamResult, delay: float = 0.0) -> None:
        super().__init__()
        self.result, self.delay = result, delay
        self.calls: list[tuple[str, str, dict[str, str], bytes]] = []

    async def send(
        self, method: str, url: str, headers: Mapping[str, str], body: bytes, timeout: float
    ) -> UpstreamResult:
        self.calls.append((method, url, dict(headers), body))
        await asyncio.sleep(self.delay)
        return self.result


async def run(
    result: UpstreamResult, delay: float = 0.0, **route: object
) -> tuple[object, object, FakeUpstream]:
    f = mp_flow()
    ex = routed(f, table(**{"dedup": {"enabled": False}, **route}))  # these tests are about forwarding alone
    await Verify(Nonces().remember).request(f)
    up = FakeUpstream(result, delay)
    tasks = BackgroundTasks()
    await Forward(up, Settlement(), tasks).request(f)
    await tasks.drain(2)
    return f, ex, up


async def test_passive_reply_is_returned_verbatim_with_trusted_headers() -> None:
    f, _, up = await run(UpstreamResult("2xx", 200, "application/xml", PASSIVE))
    assert f.response.content == PASSIVE  # type: ignore[attr-defined]
    (method, url, headers, body) = up.calls[0]
    assert method == "POST" and url.startswith("http://127.0.0.1:9000/wx?signature=")
    assert headers["x-wxgate-verified"] == "1" and b"<MsgId>1</MsgId>" in body


@pytest.mark.parametrize(
    ("result", "normalized"),
    [
        (UpstreamResult("2xx", 200, "application/json", b'{"ok":1}'), "json"),
        (UpstreamResult("2xx", 200, "text/html", b"<html><body>hi</body></html>"), "html"),
        (UpstreamResult("2xx", 201, "text/plain", b"created"), "status_201"),
        (UpstreamResult("2xx", 200, "text/plain", b"ok"), "not_xml"),
    ],
)
async def test_contract_breaking_answers_become_success(result: UpstreamResult, normalized: str) -> None:
    f, ex, _ = await run(result)
    assert (f.response.status_code, f.response.content) == (200, b"success")  # type: ignore[attr-defined]
    assert ex.outcome.normalized == normalized  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "result",
    [
        UpstreamResult("5xx", 500, "text/html", b"<h1>oops</h1>"),
        UpstreamResult("refused"),
        UpstreamResult("timeout"),
    ],
)
async def test_backend_failure_under_ack_is_success_and_counted_unacked(result: UpstreamResult) -> None:
    f, ex, _ = await run(result)
    assert f.response.content == b"success"  # type: ignore[attr-defined]
    assert ex.outcome.outbox == "unacked"  # type: ignore[attr-defined]


async def test_backend_failure_under_fail_is_passed_on() -> None:
    f, _, _ = await run(UpstreamResult("5xx", 500), on_backend_failure="fail")
    assert f.response.status_code == 502  # type: ignore[attr-defined]


async def test_deadline_answers_before_a_slow_backend() -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    f, ex, _ = await run(UpstreamResult("2xx", 200, "text/plain", b"success"), delay=0.6, deadline="0.2s")
    assert f.response.content == b"success"  # type: ignore[attr-defined]
    assert ex.outcome.deadline == "ack"  # type: ignore[attr-defined]
    # The late success clears the unacked mark: nothing was lost.
    assert ex.outcome.outbox == ""  # type: ignore[attr-defined]
    assert loop.time() - started >= 0.6


async def test_unverified_flows_are_never_forwarded() -> None:
    f = mp_flow()
    ex = routed(f, table())
    up = FakeUpstream(UpstreamResult("2xx", 200))
    await Forward(up, Settlement(), BackgroundTasks()).request(f)
    assert up.calls == []
    assert f.response is not None and f.response.status_code == 403
    assert ex.outcome.reason == "not_verified"


async def test_a_request_whose_replay_check_never_ran_is_never_forwarded() -> None:
    """With dedup on, verify leaves the replay check to the dedup claim: a chain without it forwards nothing."""
    f = mp_flow()
    ex = routed(f, table())
    await Verify(Nonces().remember).request(f)
    assert ex.outcome.verdict == "verified" and ex.replay is not None
    up = FakeUpstream(UpstreamResult("2xx", 200))
    await Forward(up, Settlement(), BackgroundTasks()).request(f)
    assert up.calls == []
    assert f.response is not None and f.response.status_code == 403
    assert ex.outcome.reason == "not_verified"
