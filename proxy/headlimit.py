"""Bounded request heads and bodies: a head over :data:`MAX_HEAD` bytes, or one not complete ``head_timeout``
seconds after its first partial read, is dropped before it is buffered any further; so is a body not complete
``body_timeout`` seconds after its first partial read, and a flood sent while a request is being answered.

mitmproxy's HTTP/1 server layer (``Http1Server.read_headers``) appends every byte a client sends to its receive
buffer until a blank line ends the head, with no size limit and no deadline (its own note ``protect against
header size DoS``), and before any addon sees the request: wxgate's admission check (431 above 64 KiB) only ran
once the whole head had been buffered (one 16 MB head added ~140 MB to the resident set), and a client
trickling a byte now and then held its connection and buffer until mitmproxy's idle timeout (600 s without a
byte), which each byte resets. Bodies had the same missing deadline (their size is capped by
``body_size_limit``), and whatever a client sends while its request is answered (a pipelined next request) was
buffered without any limit. This bounds all of them at the layer that accumulates the bytes, on every path
(routed, unmatched, passthrough) and on both listeners (TLS terminates below this layer):

- **head size**: on each read while a head is incomplete, a buffer over :data:`MAX_HEAD` bytes with no end of
  head within its first :data:`MAX_HEAD` bytes is answered 431 and the connection closed (a client still
  sending may see the close before the answer);
- **head time**: a head still incomplete after its first read arms one timer (mitmproxy's ``RequestWakeup``);
  if the same head is still incomplete when it fires, 408 and close;
- **body time**: the same for a body (``body_timeout``); the addons, which saw the request's head, see the
  request fail as when a client disconnects mid-body (no access line of a finished request, the error hook);
- **pipelined**: while a request is answered, at most :data:`MAX_HEAD` plus ``body_size_limit`` more bytes are
  buffered; beyond, the connection is closed (no answer can precede the pending one).

Each drop counts ``wxgate_connections_dropped_total{reason}`` (``head_too_large``, ``head_timeout``,
``body_timeout``, ``pipelined_too_large``, ``chunk_line_too_large``: see :class:`_BoundedReader`) and logs one line without the bytes. A request that arrives in one
read (every real callback, and every benchmark request) costs a few length checks and arms no timer.

:func:`bound_request_heads` installs it, once per process, by making :class:`BoundedHttp1Server` the class
mitmproxy's ``HttpLayer`` instantiates for each HTTP/1 client connection; calling it again (a configuration
reload) changes the limits for heads and bodies that start afterwards.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any, ClassVar

import h11
from h11._receivebuffer import ReceiveBuffer
from mitmproxy.proxy import commands, events, layer
from mitmproxy.proxy.layers import http as http_layers
from mitmproxy.proxy.layers.http._base import ReceiveHttp
from mitmproxy.proxy.layers.http._events import (
    ErrorCode,
    HttpEvent,
    RequestProtocolError,
    ResponseData,
    ResponseHeaders,
)
from mitmproxy.proxy.layers.http._http1 import Http1Server
from mitmproxy.utils import human

logger = logging.getLogger("wxgate")

MAX_HEAD = 64 * 1024  # request line, header fields and the blank line; WeChat's heads are under 1 KiB
DEFAULT_HEAD_TIMEOUT = 10.0
DEFAULT_BODY_TIMEOUT = 30.0
DEFAULT_BODY_LIMIT = 1024 * 1024
_END_OF_HEAD = re.compile(rb"\n\r?\n")  # what h11's ReceiveBuffer.maybe_extract_lines looks for


def _answer(status: int, reason: str, text: str) -> bytes:
    body = text.encode()
    return (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain; charset=utf-8\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    ).encode() + body


TOO_LARGE = _answer(431, "Request Header Fields Too Large", f"request head larger than {MAX_HEAD} bytes\n")
HEAD_TIMEOUT = _answer(408, "Request Timeout", "request head not complete in time\n")
BODY_TIMEOUT = _answer(408, "Request Timeout", "request body not complete in time\n")
CHUNK_LINE_TOO_LARGE = _answer(400, "Bad Request", f"chunk framing line longer than {MAX_HEAD} bytes\n")


def _ignore(reason: str) -> None:
    return None


class _Discard(ReceiveBuffer):
    """The receive buffer of a dropped connection: what arrives is not kept."""

    def __iadd__(self, byteslike: bytes | bytearray) -> _Discard:
        return self


class BoundedHttp1Server(Http1Server):
    """mitmproxy's HTTP/1 server layer with a size limit and a deadline on each request head, a deadline on each
    request body, and a limit on what a client may send while its request is being answered."""

    head_timeout: ClassVar[float] = DEFAULT_HEAD_TIMEOUT
    body_timeout: ClassVar[float] = DEFAULT_BODY_TIMEOUT
    max_waiting: ClassVar[int] = MAX_HEAD + DEFAULT_BODY_LIMIT
    on_drop: ClassVar[Callable[[str], None]] = _ignore
    # The timer armed for the head of stream ``_timer_stream`` (one per incomplete head; stale ones are ignored).
    _timer: commands.RequestWakeup | None = None
    _timer_stream: int = 0
    _body_timer: commands.RequestWakeup | None = None  # the same for the body of stream ``_body_stream``
    _body_stream: int = 0
    _held_head: bytes = b""  # an answer's head, sent with its body in one write (see send)

    def send(self, event: HttpEvent) -> layer.CommandGenerator[None]:
        """mitmproxy's, with a whole answer's head and body in one write instead of two.

        mitmproxy writes an HTTP/1 answer as two ``SendData`` commands, the head then the body, and asyncio
        sends each with a system call of its own: on loopback a send also runs the peer's receive path, and
        the answer was one of five sends a verified request makes. The head of a final answer (status 200 or
        more) whose body is complete and not empty (every answer wxgate makes, and a backend's unless streamed)
        is held until its body is sent, in the same step of the layer; any other event first sends a held head.
        An interim answer (``100 Continue``), a streamed, chunked or empty answer goes out at once, as before."""
        if self._held_head:
            head, self._held_head = self._held_head, b""
            if type(event) is ResponseData and event.data:
                yield commands.SendData(self.conn, head + event.data)
                return
            yield commands.SendData(self.conn, head)
        if (
            type(event) is ResponseHeaders
            and not event.end_stream
            and event.response.status_code >= 200
            and event.response.raw_content  # complete and not empty: a ResponseData follows at once
            and "chunked" not in event.response.headers.get("transfer-encoding", "").lower()
        ):
            for command in super().send(event):
                if type(command) is commands.SendData and not self._held_head:
                    self._held_head = command.data
                else:
                    yield command
            return
        yield from super().send(event)

    def _handle_event(self, event: events.Event) -> layer.CommandGenerator[None]:
        if type(event) is events.Wakeup:
            return self._deadline(event)
        if (
            type(event) is events.DataReceived
            and len(self.buf) + len(event.data) > self.max_waiting
            and self.state == self.wait
        ):
            # mitmproxy buffers what arrives while a request is answered (the next, pipelined, request): at most
            # one more request's head and body. No answer is possible before the pending one: close.
            return self._drop("pipelined_too_large", b"", stream_open=True)
        return super()._handle_event(event)

    def read_headers(self, event: events.ConnectionEvent) -> layer.CommandGenerator[None]:
        if (
            type(event) is events.DataReceived
            and len(self.buf) > MAX_HEAD
            and _END_OF_HEAD.search(bytes(self.buf), 0, MAX_HEAD) is None
        ):
            yield from self._drop("head_too_large", TOO_LARGE)
            return
        yield from super().read_headers(event)
        # Still reading this head after a read: the first partial read of a head starts its deadline.
        if self.buf and self._timer_stream != self.stream_id and self.state == self.read_headers:
            self._timer = commands.RequestWakeup(self.head_timeout)
            self._timer_stream = self.stream_id
            yield self._timer

    def read_body(self, event: events.Event) -> layer.CommandGenerator[None]:
        reader: Any = self.body_reader
        if type(reader) is not _BoundedReader:
            reader = self.body_reader = _BoundedReader(reader)  # type: ignore[assignment]
        yield from super().read_body(event)
        if reader.overflowed and self.state == self.read_body:
            # Answered and closed, its buffer let go (the drop ends this layer's reading), and the request's end
            # told to the stream at once, as mitmproxy does for a malformed chunk: the connection's end cannot be
            # relied on to reach it (a close made while this read is handled cancels the connection's task
            # before it reports the close).
            yield from self._drop("chunk_line_too_large", CHUNK_LINE_TOO_LARGE)
            yield ReceiveHttp(
                RequestProtocolError(
                    self.stream_id, "chunk framing line longer than the limit", ErrorCode.GENERIC_CLIENT_ERROR
                )
            )
            return
        # Still reading this body after a read: its deadline starts.
        if self._body_stream != self.stream_id and self.state == self.read_body:
            self._body_timer = commands.RequestWakeup(self.body_timeout)
            self._body_stream = self.stream_id
            yield self._body_timer

    def _deadline(self, event: events.Wakeup) -> layer.CommandGenerator[None]:
        if (
            event.command is self._timer
            and self._timer_stream == self.stream_id
            and self.state == self.read_headers
            and self.buf
        ):
            yield from self._drop("head_timeout", HEAD_TIMEOUT)
        elif (
            event.command is self._body_timer
            and self._body_stream == self.stream_id
            and self.state == self.read_body
        ):
            yield from self._drop("body_timeout", BODY_TIMEOUT, stream_open=True)

    def _drop(self, reason: str, answer: bytes, stream_open: bool = False) -> layer.CommandGenerator[None]:
        """Close the connection after ``answer``. With ``stream_open`` (the addons have seen the request's head)
        the layer stays in its state, so that the connection's end reaches the request as a client's disconnect
        does (mitmproxy's own path: the error hook, no request left in flight)."""
        size = len(self.buf)
        self._timer = self._body_timer = None
        # Release the buffered bytes now, and keep nothing that still arrives before the close takes effect (the
        # layer lives until the connection's objects are collected).
        self.buf = _Discard()
        if not stream_open:
            self.state = self.done
        type(self).on_drop(reason)
        logger.warning(
            "client connection dropped (%s) with %d bytes buffered, from %s",
            reason,
            size,
            human.format_address(self.conn.peername),
        )
        if answer:
            yield commands.SendData(self.conn, answer)
        yield commands.CloseConnection(self.conn)


class _BoundedReader:
    """h11's body reader with what mitmproxy's HTTP/1 layer cannot take taken out.

    - Framing that never ends: a chunk-size line (or its extension) or a trailer section is buffered by h11 until
      its line ends, outside ``body_size_limit`` (no body byte has arrived) and outside every other limit: one
      connection sending ``0000…`` without a line break grew the sidecar by ~200 MB a second until
      ``body_timeout``. More than :data:`MAX_HEAD` bytes buffered without the reader producing anything marks
      the reader ``overflowed``; the layer then answers 400 and closes the connection.
    - Trailers: mitmproxy raises "not implemented" for a chunked request with trailer fields, which kills
      the connection's handler without an answer and without the request's end ever reaching the addons (it
      stayed in flight for good). Trailers are dropped here, as a proxy may do: nothing wxgate verifies or a
      sender relies on is in them."""

    __slots__ = ("overflowed", "reader")

    def __init__(self, reader: Any) -> None:
        self.reader = reader
        self.overflowed = False

    def __call__(self, buf: ReceiveBuffer) -> Any:
        event = self.reader(buf)
        if event is None:
            if len(buf) > MAX_HEAD:
                self.overflowed = True
        elif type(event) is h11.EndOfMessage and event.headers:
            return h11.EndOfMessage()
        return event

    def read_eof(self) -> Any:
        return self.reader.read_eof()


def bound_request_heads(
    head_timeout: float = DEFAULT_HEAD_TIMEOUT,
    on_drop: Callable[[str], None] | None = None,
    body_timeout: float = DEFAULT_BODY_TIMEOUT,
    body_limit: int = DEFAULT_BODY_LIMIT,
) -> None:
    """Make mitmproxy's HTTP layer use :class:`BoundedHttp1Server` for new client connections, with these
    deadlines for heads and bodies that start from now on (``body_limit``: ``body_size_limit``, what a pipelined
    request may add); ``on_drop(reason)`` is called for each dropped connection."""
    BoundedHttp1Server.head_timeout = head_timeout
    BoundedHttp1Server.body_timeout = body_timeout
    BoundedHttp1Server.max_waiting = MAX_HEAD + body_limit
    if on_drop is not None:
        BoundedHttp1Server.on_drop = on_drop
    http_layers.Http1Server = BoundedHttp1Server  # type: ignore[attr-defined]
