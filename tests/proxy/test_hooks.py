"""HookDispatch calls exactly the handlers mitmproxy's AddonManager would, in the same order, with its error
handling, and only looks them up once per event name."""

from __future__ import annotations

import asyncio
import logging
import warnings
from typing import Any

import pytest
from mitmproxy import exceptions, hooks, http, options
from mitmproxy.proxy.layers.http import HttpRequestHook, HttpResponseHook
from mitmproxy.test import tflow

with warnings.catch_warnings():
    # mitmproxy.master imports every default addon; proxyauth's ldap3 uses a deprecated pyasn1 name on import.
    warnings.simplefilter("ignore", DeprecationWarning)
    from proxy.hooks import HookDispatch, embedded_master
    from proxy.pipeline.exchange import exchange


class Recorder:
    def __init__(self, name: str, calls: list[str]) -> None:
        self.name = name
        self.calls = calls

    def request(self, flow: Any) -> None:
        self.calls.append(f"{self.name}.request")


class AsyncRecorder(Recorder):
    async def request(self, flow: Any) -> None:
        self.calls.append(f"{self.name}.request(async)")

    def response(self, flow: Any) -> None:
        self.calls.append(f"{self.name}.response")


class Parent(Recorder):
    def __init__(self, name: str, calls: list[str]) -> None:
        super().__init__(name, calls)
        self.addons = [Recorder(f"{name}.child", calls)]


class Failing:
    def request(self, flow: Any) -> None:
        raise RuntimeError("boom")


class Halting:
    def request(self, flow: Any) -> None:
        raise exceptions.AddonHalt


async def test_calls_only_implementers_in_chain_order_including_sub_addons() -> None:
    calls: list[str] = []
    master = embedded_master(options.Options())
    assert isinstance(master.addons, HookDispatch)
    master.addons.add(Recorder("a", calls), AsyncRecorder("b", calls), Parent("c", calls))
    flow = tflow.tflow()

    await master.addons.trigger_event(HttpRequestHook(flow))
    await master.addons.trigger_event(HttpResponseHook(flow))

    assert calls == ["a.request", "b.request(async)", "c.request", "c.child.request", "b.response"]


async def test_an_addon_error_fails_the_request_closed_and_the_next_handler_still_runs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls: list[str] = []
    master = embedded_master(options.Options())
    master.addons.add(Failing(), Recorder("after", calls))
    flow = tflow.tflow()

    with caplog.at_level(logging.ERROR):
        await master.addons.trigger_event(HttpRequestHook(flow))

    assert calls == ["after.request"]  # metrics and the access log still see the request
    assert "Addon error in request: boom" in caplog.text
    assert flow.response is not None and flow.response.status_code == 500  # never proxied on
    ex = exchange(flow)
    assert ex is not None and (ex.outcome.verdict, ex.outcome.reason) == ("rejected", "internal_error")


async def test_an_addon_error_on_a_route_answers_in_the_protocols_failure_form() -> None:
    from tests.addons.conftest import routed, table

    master = embedded_master(options.Options())
    master.addons.add(Failing())
    flow = tflow.tflow()
    flow.request.path = "/wx"
    ex = routed(flow, table())
    pay = tflow.tflow()
    pay.request.path = "/pay"
    pay_ex = routed(pay, _pay_table())

    await master.addons.trigger_event(HttpRequestHook(flow))
    await master.addons.trigger_event(HttpRequestHook(pay))

    assert flow.response is not None and (flow.response.status_code, flow.response.content) == (502, b"")
    assert ex.outcome.reason == "internal_error"
    assert pay.response is not None  # Pay v2's retry answer: its FAIL XML (the sender retries on it)
    assert b"<return_code><![CDATA[FAIL]]></return_code>" in (pay.response.content or b"")
    assert pay_ex.outcome.reason == "internal_error"


def _pay_table() -> Any:
    from proxy.config import parse_config
    from proxy.pipeline.routes import RouteTable

    cfg = parse_config(
        {
            "routes": [
                {
                    "name": "pay",
                    "path": "/pay",
                    "protocol": "wechat-pay-v2",
                    "mch_id": "1900000109",
                    "api_key": "${K}",
                }
            ]
        },
        {"K": "k" * 32},
    )
    return RouteTable.from_config(cfg)


async def test_an_addon_error_outside_a_flow_is_only_logged(caplog: pytest.LogCaptureFixture) -> None:
    class FailsOnRunning:
        def running(self) -> None:
            raise RuntimeError("boom at start")

    master = embedded_master(options.Options())
    master.addons.add(FailsOnRunning())
    with caplog.at_level(logging.ERROR):
        await master.addons.trigger_event(hooks.RunningHook())
    assert "Addon error in running: boom at start" in caplog.text


async def test_addon_halt_ends_the_event() -> None:
    calls: list[str] = []
    master = embedded_master(options.Options())
    master.addons.add(Halting(), Recorder("after", calls))

    await master.addons.trigger_event(HttpRequestHook(tflow.tflow()))

    assert calls == []


async def test_the_cache_follows_changes_to_the_chain() -> None:
    calls: list[str] = []
    master = embedded_master(options.Options())
    first = Recorder("first", calls)
    master.addons.add(first)
    flow = tflow.tflow()
    await master.addons.trigger_event(HttpRequestHook(flow))

    master.addons.add(Recorder("second", calls))
    await master.addons.trigger_event(HttpRequestHook(flow))
    master.addons.remove(first)
    await master.addons.trigger_event(HttpRequestHook(flow))

    assert calls == ["first.request", "first.request", "second.request", "second.request"]


async def test_option_changes_reach_the_addons_once() -> None:
    seen: list[set[str]] = []

    class Watcher:
        def configure(self, updated: set[str]) -> None:
            seen.append(updated)

    master = embedded_master(options.Options())
    master.addons.add(Watcher())
    seen.clear()
    master.options.update(showhost=True)

    assert seen == [{"showhost"}]


async def test_log_records_do_not_become_add_log_events(caplog: pytest.LogCaptureFixture) -> None:
    seen: list[object] = []

    class OldStyle:
        def add_log(self, entry: object) -> None:
            seen.append(entry)

    master = embedded_master(options.Options())
    master.addons.add(OldStyle())
    logging.getLogger("wxgate.access").warning("request")
    await asyncio.sleep(0.01)  # add_log was scheduled on the loop with call_soon_threadsafe

    assert seen == []


async def test_a_flow_event_is_followed_by_update_only_for_addons_that_handle_it() -> None:
    calls: list[str] = []

    class Updater(Recorder):
        def update(self, flows: list[Any]) -> None:
            calls.append(f"update({len(flows)})")

    flow = tflow.tflow()
    quiet = embedded_master(options.Options())
    quiet.addons.add(Recorder("a", calls))
    await quiet.addons.handle_lifecycle(HttpRequestHook(flow))
    assert calls == ["a.request"]

    calls.clear()
    watching = embedded_master(options.Options())
    watching.addons.add(Updater("u", calls))
    await watching.addons.handle_lifecycle(HttpRequestHook(flow))
    assert calls == ["u.request", "update(1)"]


async def test_messages_are_built_without_mitmproxys_debug_type_check() -> None:
    def build() -> http.Response:
        # mitmproxy's debug-only check refuses a float timestamp_end given as a str; nothing else reads it here.
        return http.Response(b"HTTP/1.1", 200, b"OK", http.Headers(), b"x", None, 0.0, "late")  # type: ignore[arg-type]

    saved = http.MessageData.__post_init__  # type: ignore[attr-defined]
    try:
        if saved.__name__ == "__post_init__":  # not switched off yet in this process
            with pytest.raises(TypeError):
                build()
        embedded_master(options.Options())
        assert build().status_code == 200  # the check (~50 µs per request) no longer runs
    finally:
        http.MessageData.__post_init__ = saved  # type: ignore[attr-defined]


async def test_option_reads_return_immutable_values_as_they_are_and_copy_mutable_ones() -> None:
    master = embedded_master(options.Options())
    master.options.update(listen_host="127.0.0.1", allow_hosts=["a"])
    assert master.options.listen_host == "127.0.0.1" and master.options.listen_port is None
    hosts = master.options.allow_hosts
    hosts.append("b")  # a copy: the option itself is unchanged
    assert master.options.allow_hosts == ["a"]


class _NoEnviron(dict[str, str]):
    def get(self, key: str, default: Any = None) -> Any:
        raise AssertionError(f"os.environ read for {key}")


async def test_mitmproxys_tasks_are_named_without_reading_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import os

    from mitmproxy.utils import asyncio_utils

    embedded_master(options.Options())
    monkeypatch.setattr(os, "environ", _NoEnviron())

    async def hook() -> None:
        await asyncio.sleep(0)

    task = asyncio_utils.create_task(
        hook(), name="handle_hook(request)", keep_ref=True, client=("10.0.0.1", 5)
    )
    await task
    assert task.get_name() == "handle_hook(request)"  # as mitmproxy shows it, minus the running test's name
    assert asyncio_utils.task_repr(task).startswith("10.0.0.1:5: handle_hook(request) (age: ")
