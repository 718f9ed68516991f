"""HTTP/1.1 on the wire for the backend call: the request's bytes, and a sans-I/O parser for the answer.

Only what a client needs (RFC 9112): one request with a ``Content-Length`` body, and a response framed by
``Transfer-Encoding: chunked``, ``Content-Length``, or the connection's end; interim 1xx answers are skipped;
``HEAD``/204/304 answers have no body. Anything else — a malformed status line or header, a bad chunk, an
oversized head — is a :class:`ProtocolError` and the connection is dropped. A body over ``max_body`` raises
:class:`BodyTooLarge` as soon as it is known to be too large (before it is buffered).

Written for the hot path (every forwarded request parses one response): the head is split once, names are
lower-cased, and the common case — a small ``Content-Length`` body that arrives with its head — costs one
``find`` and two slices.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

MAX_HEAD = 64 * 1024
MAX_CHUNK_LINE = 4096
_NO_BODY_STATUS = frozenset({204, 304})
_HEX = re.compile(rb"[0-9A-Fa-f]{1,16}")  # not int(x, 16) alone: it also takes "0x1f", "+1f" and "1_f"
_SKIP_REQUEST_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection"})


class ProtocolError(ValueError):
    """The backend's answer cannot be framed as HTTP/1.x; the connection must not be reused."""


class BodyTooLarge(ProtocolError):
    def __init__(self, status: int, limit: int) -> None:
        super().__init__(f"reply larger than {limit} bytes")
        self.status = status


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    headers: Mapping[str, str]  # lower-cased names; a repeated header's values joined with ", "
    body: bytes
    keep_alive: bool  # the connection may carry the next request


def request_bytes(method: str, target: str, host: str, headers: Mapping[str, str], body: bytes) -> bytes:
    """The request head and body; ``Host``, ``Content-Length`` and framing headers are wxgate's, not the caller's.

    Header text is encoded back with surrogateescape, so bytes mitmproxy decoded that way reach the backend
    unchanged. A CR or LF inside any value (header injection) is refused with ``ValueError``."""
    lines = [f"{method} {target} HTTP/1.1", f"host: {host}", f"content-length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in headers.items() if k.lower() not in _SKIP_REQUEST_HEADERS]
    head = "\r\n".join(lines)
    if head.count("\n") != len(lines) - 1 or head.count("\r") != len(lines) - 1:
        raise ValueError("a request line or header contains a line break")
    return (head + "\r\n\r\n").encode("utf-8", "surrogateescape") + body


def _parse_head(head: bytes) -> tuple[int, bool, dict[str, str]]:
    """``(status, http/1.1?, headers)`` of a response head (without its final blank line)."""
    status_line, _, rest = head.partition(b"\r\n")
    version, _, status_reason = status_line.partition(b" ")
    status_text = status_reason[:3]
    if version not in (b"HTTP/1.1", b"HTTP/1.0") or not status_text.isdigit() or len(status_text) != 3:
        raise ProtocolError(f"bad status line {status_line[:64]!r}")
    if len(status_reason) > 3 and status_reason[3:4] != b" ":
        raise ProtocolError(f"bad status line {status_line[:64]!r}")
    headers: dict[str, str] = {}
    if rest:
        for line in rest.split(b"\r\n"):
            name, colon, value = line.partition(b":")
            if not colon or not name or name != name.strip() or line[:1] in (b" ", b"\t"):
                raise ProtocolError(f"bad header line {line[:64]!r}")
            key = name.decode("latin-1").lower()
            text = value.strip(b" \t").decode("latin-1")
            headers[key] = f"{headers[key]}, {text}" if key in headers else text
    return int(status_text), version == b"HTTP/1.1", headers


class ResponseParser:
    """One response: :meth:`feed` bytes as they arrive until it returns the :class:`Response`; when the
    connection ends first, :meth:`eof` completes a body framed by the connection's end or raises."""

    def __init__(self, max_body: int, head_request: bool = False) -> None:
        self.max_body = max_body
        self.head_request = head_request
        self._buf = b""
        self._status = 0
        self._headers: dict[str, str] = {}
        self._keep_alive = False
        self._mode = "head"  # head | length | chunked | close | done
        self._length = 0  # Content-Length framing: the body's size
        self._chunk_state = "size"  # chunked framing: size | data | trailers
        self._chunks: list[bytes] = []
        self._need = 0  # chunked: bytes of the current chunk's data
        self._received = 0  # chunked: body bytes so far
        self._trailer_bytes = 0

    def feed(self, data: bytes) -> Response | None:
        self._buf = self._buf + data if self._buf else data
        if self._mode == "head" and not self._read_head():
            return None
        if self._mode == "length":
            if len(self._buf) < self._length:
                return None
            body, self._buf = self._buf[: self._length], self._buf[self._length :]
            return self._done(body)
        if self._mode == "chunked":
            return self._read_chunks()
        self._check_size(len(self._buf))  # close-delimited: everything until the end
        return None

    def eof(self) -> Response:
        if self._mode == "close":
            return self._done(self._buf, keep_alive=False)
        raise ProtocolError("the backend closed the connection before the answer was complete")

    def _read_head(self) -> bool:
        while True:
            end = self._buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buf) > MAX_HEAD:
                    raise ProtocolError("response head too large")
                return False
            if end > MAX_HEAD:
                raise ProtocolError("response head too large")
            status, http11, headers = _parse_head(self._buf[:end])
            self._buf = self._buf[end + 4 :]
            if 100 <= status < 200:
                if status == 101:
                    raise ProtocolError("the backend switched protocols")
                continue  # interim answer (100 Continue, 103 Early Hints): the final one follows
            self._status, self._headers = status, headers
            self._keep_alive = http11 and "close" not in headers.get("connection", "").lower()
            self._frame()
            return True

    def _frame(self) -> None:
        headers = self._headers
        if self.head_request or self._status in _NO_BODY_STATUS:
            self._mode, self._length = "length", 0
        elif "transfer-encoding" in headers:
            codings = [c.strip().lower() for c in headers["transfer-encoding"].split(",")]
            if codings[-1] == "chunked":
                self._mode = "chunked"
            else:
                self._mode, self._keep_alive = "close", False
            if "content-length" in headers:
                self._keep_alive = False  # both framings: RFC 9112 §6.3, drop the connection after it
        elif "content-length" in headers:
            values = {v.strip() for v in headers["content-length"].split(",")}
            value = values.pop() if len(values) == 1 else ""
            if not (value.isascii() and value.isdigit()):
                raise ProtocolError("bad Content-Length")
            self._mode, self._length = "length", int(value)
            self._check_size(self._length)
        else:
            self._mode, self._keep_alive = "close", False

    def _read_chunks(self) -> Response | None:
        buf = self._buf
        while True:
            if self._chunk_state == "data":
                if len(buf) < self._need + 2:
                    self._buf = buf
                    return None
                if buf[self._need : self._need + 2] != b"\r\n":
                    raise ProtocolError("chunk data not followed by CRLF")
                self._chunks.append(buf[: self._need])
                buf = buf[self._need + 2 :]
                self._chunk_state = "size"
                continue
            line_end = buf.find(b"\r\n")
            if line_end < 0:
                if len(buf) > MAX_CHUNK_LINE:
                    raise ProtocolError("chunk size or trailer line too long")
                self._buf = buf
                return None
            line, buf = buf[:line_end], buf[line_end + 2 :]
            if self._chunk_state == "size":
                size_text = line.split(b";", 1)[0].strip(b" \t")
                if not _HEX.fullmatch(size_text):
                    raise ProtocolError(f"bad chunk size {size_text[:16]!r}")
                self._need = int(size_text, 16)
                self._received += self._need
                self._check_size(self._received)
                self._chunk_state = "data" if self._need else "trailers"
            elif line:  # a trailer field: read past it
                self._trailer_bytes += len(line)
                if self._trailer_bytes > MAX_HEAD:
                    raise ProtocolError("trailers too large")
            else:
                self._buf = buf
                return self._done(b"".join(self._chunks))

    def _check_size(self, size: int) -> None:
        if size > self.max_body:
            raise BodyTooLarge(self._status, self.max_body)

    def _done(self, body: bytes, keep_alive: bool | None = None) -> Response:
        self._mode = "done"
        alive = self._keep_alive if keep_alive is None else keep_alive
        # Bytes after the answer would belong to no request: do not reuse such a connection.
        return Response(self._status, self._headers, body, alive and not self._buf)
