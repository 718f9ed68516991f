"""Bounded request heads at mitmproxy's HTTP/1 server layer: a head over 64 KiB is answered 431 as soon as the
buffer passes the limit, a head not complete within ``head_timeout`` after its first partial read is answered
408, and a head that arrives at once is parsed as before, with no timer."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from mitmproxy import http, options
from mitmproxy.proxy import commands, events
from mitmproxy.proxy.context import Context
from mitmproxy.proxy.layers import http as http_layers
from mitmproxy.proxy.layers.http._events import (
    RequestHeaders,
    RequestProtocolError,
    ResponseData,
    ResponseEndOfMessage,
    ResponseHeaders,
)
from mitmproxy.proxy.mode_specs import ProxyMode
from mitmproxy.test import tflow

from proxy.headlimit import MAX_HEAD, BoundedHttp1Server, bound_request_heads

HEAD = b"POST /mp?signature=1 HTTP/1.1\r\nHost: wxgate.test\r\nContent-Length: 2\r\n\r\n"


@pytest.fixture
def drops() -> Iterator[list[str]]:
    """Installs the bounded layer (head deadline 3 s, body deadline 5 s, body limit 1000 bytes) and restores
    mitmproxy's afterwards; yields the drop reasons."""
    cls = BoundedHttp1Server
    saved = (http_layers.Http1Server, cls.head_timeout, cls.body_timeout, cls.max_waiting, cls.on_drop)
    seen: list[str] = []
    bound_request_heads(3.0, seen.append, 5.0, 1000)
    yield seen
    http_layers.Http1Server, cls.head_timeout, cls.body_timeout, cls.max_waiting = saved[:4]
    cls.on_drop = saved[4]


def server() -> tuple[BoundedHttp1Server, Context]:
    ctx = Context(tflow.tclient_conn(), options.Options())
    layer = BoundedHttp1Server(ctx)
    assert list(layer.handle_event(events.Start())) == []
    return layer, ctx


def feed(layer: Any, ctx: Context, data: bytes) -> list[commands.Command]:
    return list(layer.handle_event(events.DataReceived(ctx.client, data)))


def sent(cmds: list[commands.Command]) -> bytes:
    return b"".join(c.data for c in cmds if isinstance(c, commands.SendData))


def closed(cmds: list[commands.Command]) -> bool:
    return any(isinstance(c, commands.CloseConnection) for c in cmds)


def wakeups(cmds: list[commands.Command]) -> list[commands.RequestWakeup]:
    return [c for c in cmds if isinstance(c, commands.RequestWakeup)]


def failed(cmds: list[commands.Command]) -> list[RequestProtocolError]:
    return [c.event for c in cmds if isinstance(getattr(c, "event", None), RequestProtocolError)]  # type: ignore[attr-defined]


def heads(cmds: list[commands.Command]) -> list[RequestHeaders]:
    return [c.event for c in cmds if isinstance(getattr(c, "event", None), RequestHeaders)]  # type: ignore[attr-defined]


def test_a_head_that_arrives_at_once_is_parsed_and_arms_no_timer(drops: list[str]) -> None:
    layer, ctx = server()
    cmds = feed(layer, ctx, HEAD + b"ok")
    assert [h.request.path for h in heads(cmds)] == ["/mp?signature=1"]
    assert wakeups(cmds) == [] and not closed(cmds) and drops == []


def test_a_head_still_incomplete_at_its_deadline_is_answered_408_and_closed(drops: list[str]) -> None:
    layer, ctx = server()
    first = feed(layer, ctx, HEAD[:10])
    [timer] = wakeups(first)
    assert timer.delay == 3.0
    assert wakeups(feed(layer, ctx, HEAD[10:20])) == []  # one deadline per head, from its first partial read
    cmds = list(layer.handle_event(events.Wakeup(timer)))
    assert sent(cmds).startswith(b"HTTP/1.1 408 ") and closed(cmds)
    assert drops == ["head_timeout"] and len(layer.buf) == 0


def test_a_head_completed_before_its_deadline_is_kept(drops: list[str]) -> None:
    layer, ctx = server()
    [timer] = wakeups(feed(layer, ctx, HEAD[:10]))
    assert len(heads(feed(layer, ctx, HEAD[10:] + b"ok"))) == 1
    assert list(layer.handle_event(events.Wakeup(timer))) == []  # stale: that head is complete
    assert drops == []


def test_each_head_on_a_keep_alive_connection_has_its_own_deadline(drops: list[str]) -> None:
    layer, ctx = server()
    [first] = wakeups(feed(layer, ctx, HEAD[:10]))
    feed(layer, ctx, HEAD[10:] + b"ok")
    response = http.Response.make(200, b"", {"content-length": "0"})
    list(layer.handle_event(ResponseHeaders(1, response, False)))
    list(layer.handle_event(ResponseEndOfMessage(1)))
    assert layer.stream_id == 3
    [second] = wakeups(feed(layer, ctx, HEAD[:10]))
    assert second is not first
    assert list(layer.handle_event(events.Wakeup(first))) == []  # the first head's timer no longer counts
    cmds = list(layer.handle_event(events.Wakeup(second)))
    assert sent(cmds).startswith(b"HTTP/1.1 408 ") and drops == ["head_timeout"]


def test_an_unterminated_head_over_64_kib_is_refused_431_at_the_read_that_passes_the_limit(
    drops: list[str],
) -> None:
    layer, ctx = server()
    feed(layer, ctx, b"POST /mp HTTP/1.1\r\nX-Big: ")
    reads = 0
    while not drops:
        cmds = feed(layer, ctx, b"a" * 4096)
        reads += 1
        assert reads < 20
    assert 64 * 1024 < 4096 * reads + 30 < 64 * 1024 + 4096  # refused at the first read over the limit
    assert sent(cmds).startswith(b"HTTP/1.1 431 ") and closed(cmds)
    assert drops == ["head_too_large"] and len(layer.buf) == 0
    assert feed(layer, ctx, b"a" * 4096) == [] and len(layer.buf) == 0  # dropped: nothing more is kept


def test_a_complete_head_over_64_kib_in_one_read_is_refused_not_parsed(drops: list[str]) -> None:
    layer, ctx = server()
    big = b"POST /mp HTTP/1.1\r\nX-Big: " + b"a" * MAX_HEAD + b"\r\nContent-Length: 0\r\n\r\n"
    cmds = feed(layer, ctx, big)
    assert heads(cmds) == [] and sent(cmds).startswith(b"HTTP/1.1 431 ") and drops == ["head_too_large"]


def test_a_head_just_under_the_limit_with_its_body_is_accepted(drops: list[str]) -> None:
    layer, ctx = server()
    prefix = b"POST /mp HTTP/1.1\r\nContent-Length: 2\r\nX-Big: "
    head = prefix + b"a" * (MAX_HEAD - len(prefix) - 4) + b"\r\n\r\n"
    assert len(head) == MAX_HEAD
    cmds = feed(
        layer, ctx, head + b"ok" + b"x" * 10_000
    )  # body and more bytes past the limit in the same read
    assert len(heads(cmds)) == 1 and drops == []


def test_installed_layer_serves_http_connections_and_its_timer_is_routed_back(drops: list[str]) -> None:
    ctx = Context(tflow.tclient_conn(), options.Options())
    ctx.client.proxy_mode = ProxyMode.parse("reverse:http://127.0.0.1:1")
    layer = http_layers.HttpLayer(ctx, http_layers.HTTPMode.transparent)
    list(layer.handle_event(events.Start()))
    assert type(layer.connections[ctx.client]) is BoundedHttp1Server
    [timer] = wakeups(list(layer.handle_event(events.DataReceived(ctx.client, HEAD[:10]))))
    cmds = list(layer.handle_event(events.Wakeup(timer)))
    assert sent(cmds).startswith(b"HTTP/1.1 408 ") and closed(cmds) and drops == ["head_timeout"]


def test_a_reload_changes_the_deadline_of_later_heads(drops: list[str]) -> None:
    bound_request_heads(0.5)
    layer, ctx = server()
    [timer] = wakeups(feed(layer, ctx, HEAD[:10]))
    assert timer.delay == 0.5
    list(layer.handle_event(events.Wakeup(timer)))
    assert drops == ["head_timeout"]  # the drop callback given at start is kept


def test_a_body_still_incomplete_at_its_deadline_is_answered_408_and_its_request_fails(
    drops: list[str],
) -> None:
    layer, ctx = server()
    cmds = feed(layer, ctx, HEAD + b"o")
    assert len(heads(cmds)) == 1
    [timer] = wakeups(cmds)
    assert timer.delay == 5.0
    assert wakeups(feed(layer, ctx, b"")) == []  # one deadline per body
    cmds = list(layer.handle_event(events.Wakeup(timer)))
    assert sent(cmds).startswith(b"HTTP/1.1 408 ") and closed(cmds) and drops == ["body_timeout"]
    assert feed(layer, ctx, b"k" * 10) == [] and len(layer.buf) == 0  # nothing more is read
    # the connection's end reaches the request as a client's disconnect does: the addons see it fail
    cmds = list(layer.handle_event(events.ConnectionClosed(ctx.client)))
    assert [e.stream_id for e in failed(cmds)] == [1]


def test_a_body_completed_before_its_deadline_is_kept(drops: list[str]) -> None:
    layer, ctx = server()
    [timer] = wakeups(feed(layer, ctx, HEAD + b"o"))
    assert not closed(feed(layer, ctx, b"k"))
    assert list(layer.handle_event(events.Wakeup(timer))) == [] and drops == []


def test_a_client_that_floods_while_its_request_is_answered_is_closed(drops: list[str]) -> None:
    layer, ctx = server()
    feed(layer, ctx, HEAD + b"ok")
    assert feed(layer, ctx, HEAD + b"ok") == []  # a pipelined request waits for the answer to the first
    cmds: list[commands.Command] = []
    while not drops:
        cmds = feed(layer, ctx, b"a" * 100)
        assert len(layer.buf) <= MAX_HEAD + 1000
    assert drops == ["pipelined_too_large"] and closed(cmds) and sent(cmds) == b"" and len(layer.buf) == 0
    cmds = list(layer.handle_event(events.ConnectionClosed(ctx.client)))
    assert [e.stream_id for e in failed(cmds)] == [1]  # the pending request fails as on a client's disconnect


def answer(layer: Any, response: http.Response, body: bytes) -> list[bytes]:
    """The writes the layer makes for ``response`` sent as mitmproxy's HTTP layer sends it."""
    stream = layer.stream_id
    cmds = list(layer.handle_event(ResponseHeaders(stream, response, end_stream=not body)))
    if body:
        cmds += list(layer.handle_event(ResponseData(stream, body)))
    cmds += list(layer.handle_event(ResponseEndOfMessage(stream)))
    return [c.data for c in cmds if isinstance(c, commands.SendData)]


def test_a_whole_answer_is_one_write_head_and_body(drops: list[str]) -> None:
    layer, ctx = server()
    feed(layer, ctx, HEAD + b"ok")
    response = http.Response.make(200, b"<xml>success</xml>", {"content-type": "application/xml"})
    (write,) = answer(layer, response, b"<xml>success</xml>")
    assert write.startswith(b"HTTP/1.1 200 OK\r\n") and write.endswith(b"\r\n\r\n<xml>success</xml>")
    assert b"content-length: 18\r\n" in write.lower()
    # the connection goes on: the next request on it is read and answered the same way
    assert heads(feed(layer, ctx, HEAD + b"ok")) != []
    (empty,) = answer(layer, http.Response.make(204, b""), b"")  # no body: the head alone, once
    assert empty.startswith(b"HTTP/1.1 204 ")


def test_a_streamed_or_chunked_answer_sends_its_head_at_once(drops: list[str]) -> None:
    layer, ctx = server()
    feed(layer, ctx, HEAD + b"ok")
    streamed = http.Response.make(200, b"", {"content-type": "text/event-stream"})
    streamed.raw_content = None  # a backend's answer mitmproxy streams: the body is not there yet
    head = list(layer.handle_event(ResponseHeaders(1, streamed, end_stream=False)))
    assert sent(head).startswith(b"HTTP/1.1 200 ")
    assert sent(list(layer.handle_event(ResponseData(1, b"data: 1\n\n")))) == b"data: 1\n\n"

    layer, ctx = server()
    feed(layer, ctx, HEAD + b"ok")
    chunked = http.Response.make(200, b"abc", {"transfer-encoding": "chunked"})
    writes = answer(layer, chunked, b"abc")
    assert writes[0].startswith(b"HTTP/1.1 200 ") and writes[1:] == [b"3\r\nabc\r\n", b"0\r\n\r\n"]


def test_an_interim_100_continue_goes_out_at_once_and_the_final_answer_stays_whole(drops: list[str]) -> None:
    layer, ctx = server()
    feed(layer, ctx, HEAD + b"ok")
    stream = layer.stream_id
    interim = list(layer.handle_event(ResponseHeaders(stream, http.Response.make(100), end_stream=False)))
    assert sent(interim).startswith(b"HTTP/1.1 100 Continue\r\n")  # at once, not held for a body
    (write,) = answer(layer, http.Response.make(200, b"success"), b"success")
    assert write.startswith(b"HTTP/1.1 200 OK\r\n") and write.endswith(b"\r\n\r\nsuccess")
