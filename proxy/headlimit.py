"""Bounded request heads: a head over :data:`MAX_HEAD` bytes, or one not complete ``head_timeout`` seconds after
its first partial read, is dropped before it is buffered any further.

mitmproxy's HTTP/1 server layer (``Http1Server.read_headers``) appends every byte a client sends to its receive
buffer until a blank line ends the head, with no size limit and no deadline (its own ``FIXME: protect against
header size DoS``), and before any addon sees the request: wxgate's admission check (431 above 64 KiB) only ran
once the whole head had been buffered (one 16 MB head added ~140 MB to the resident set), and a client
trickling a byte now and then held its connection and buffer until mitmproxy's idle timeout (600 s without a
byte), which each byte resets. This bounds both at the layer that accumulates the head, on every path (routed,
unmatched, passthrough) and on both listeners (TLS terminates below this layer):

- **size**: on each read while a head is incomplete, a buffer over :data:`MAX_HEAD` bytes with no end of head
  within its first :data:`MAX_HEAD` bytes is answered 431 and the connection closed (the client may see the
  close before the answer when it is still sending);
- **time**: a head still incomplete after its first read arms one timer (mitmproxy's ``RequestWakeup``); if the
  same head is still incomplete when it fires, 408 and close.

Each drop counts ``wxgate_connections_dropped_total{reason="head_too_large"|"head_timeout"}`` and logs one
line without the head's bytes. A head that arrives in one read (every real callback) costs one length check and
arms no timer, so the hot path is unchanged.

Not bounded here: a body that trickles in. Its size is capped by ``body_size_limit`` (mitmproxy refuses it
while reading), its time only by mitmproxy's idle timeout; see docs/reliability.md "Limits".

:func:`bound_request_heads` installs it, once per process, by making :class:`BoundedHttp1Server` the class
mitmproxy's ``HttpLayer`` instantiates for each HTTP/1 client connection; calling it again (a configuration
reload) changes the deadline for heads that start afterwards.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import ClassVar

from h11._receivebuffer import ReceiveBuffer
from mitmproxy.proxy import commands, events, layer
from mitmproxy.proxy.layers import http as http_layers
from mitmproxy.proxy.layers.http._http1 import Http1Server
from mitmproxy.utils import human

logger = logging.getLogger("wxgate")

MAX_HEAD = 64 * 1024  # request line, header fields and the blank line; WeChat's heads are under 1 KiB
DEFAULT_HEAD_TIMEOUT = 10.0
_END_OF_HEAD = re.compile(rb"\n\r?\n")  # what h11's ReceiveBuffer.maybe_extract_lines looks for


def _answer(status: int, reason: str, text: str) -> bytes:
    body = text.encode()
    return (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain; charset=utf-8\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    ).encode() + body


TOO_LARGE = _answer(431, "Request Header Fields Too Large", f"request head larger than {MAX_HEAD} bytes\n")
TIMEOUT = _answer(408, "Request Timeout", "request head not complete in time\n")


def _ignore(reason: str) -> None:
    return None


class _Discard(ReceiveBuffer):
    """The receive buffer of a dropped connection: what arrives is not kept."""

    def __iadd__(self, byteslike: bytes | bytearray) -> _Discard:
        return self


class BoundedHttp1Server(Http1Server):
    """mitmproxy's HTTP/1 server layer with a size limit and a deadline on each request head."""

    head_timeout: ClassVar[float] = DEFAULT_HEAD_TIMEOUT
    on_drop: ClassVar[Callable[[str], None]] = _ignore
    # The timer armed for the head of stream ``_timer_stream`` (one per incomplete head; stale ones are ignored).
    _timer: commands.RequestWakeup | None = None
    _timer_stream: int = 0

    def _handle_event(self, event: events.Event) -> layer.CommandGenerator[None]:
        if type(event) is events.Wakeup:
            return self._deadline(event)
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

    def _deadline(self, event: events.Wakeup) -> layer.CommandGenerator[None]:
        if (
            event.command is self._timer
            and self._timer_stream == self.stream_id
            and self.state == self.read_headers
            and self.buf
        ):
            yield from self._drop("head_timeout", TIMEOUT)

    def _drop(self, reason: str, answer: bytes) -> layer.CommandGenerator[None]:
        size = len(self.buf)
        self._timer = None
        # Release the partial head now, and keep nothing that still arrives before the close takes effect (the
        # layer lives until the connection's objects are collected).
        self.buf = _Discard()
        self.state = self.done
        type(self).on_drop(reason)
        logger.warning(
            "request head dropped (%s) after %d bytes from %s",
            reason,
            size,
            human.format_address(self.conn.peername),
        )
        yield commands.SendData(self.conn, answer)
        yield commands.CloseConnection(self.conn)


def bound_request_heads(
    head_timeout: float = DEFAULT_HEAD_TIMEOUT, on_drop: Callable[[str], None] | None = None
) -> None:
    """Make mitmproxy's HTTP layer use :class:`BoundedHttp1Server` for new client connections, with this
    deadline for heads that start from now on; ``on_drop(reason)`` is called for each dropped head."""
    BoundedHttp1Server.head_timeout = head_timeout
    if on_drop is not None:
        BoundedHttp1Server.on_drop = on_drop
    http_layers.Http1Server = BoundedHttp1Server  # type: ignore[attr-defined]
