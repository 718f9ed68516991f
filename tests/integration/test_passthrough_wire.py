"""What a passed-through request looks like at a backend that reads raw bytes, through the running proxy.

Found by attacking the edge: a backend answering ``101`` to ``Upgrade: h2c`` (or to a WebSocket version other
than 13) made mitmproxy tunnel the connection raw, so the next request on it — unsigned, with a forged
``X-Wxgate-Verified`` header — reached the backend unseen; and an absolute-form target (``GET http://x/path``)
was passed on with the client's authority in the request line, which a backend trusts over ``Host``.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import mp_route
from tests.support.procs import Sidecar
from tests.support.redis_servers import free_port

pytestmark = pytest.mark.integration

FORGED = b"<xml><MsgType>text</MsgType><Content>FORGED via tunnel</Content><MsgId>77</MsgId></xml>"


class RawBackend:
    """Records every byte each connection sends; answers ``101`` to any request with an ``Upgrade`` header (and
    then only listens, as an upgraded server would), ``200 success`` to the rest."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.received: list[bytes] = []
        self._server = socket.create_server(("127.0.0.1", self.port))
        self._server.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._server.accept()
            except TimeoutError:
                continue
            threading.Thread(target=self._connection, args=(conn,), daemon=True).start()

    def _connection(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        upgraded, buf = False, b""
        with conn:
            while True:
                try:
                    data = conn.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                self.received.append(data)
                if upgraded:
                    continue
                buf += data
                while b"\r\n\r\n" in buf:
                    head, _, rest = buf.partition(b"\r\n\r\n")
                    fields = dict(
                        (k.strip().lower(), v.strip())
                        for k, _, v in (line.partition(b":") for line in head.split(b"\r\n")[1:])
                    )
                    length = int(fields.get(b"content-length", b"0") or 0)
                    if len(rest) < length:
                        break
                    buf = rest[length:]
                    if b"upgrade" in fields:
                        conn.sendall(
                            b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: "
                            + fields[b"upgrade"]
                            + b"\r\n\r\n"
                        )
                        upgraded = True
                        break
                    conn.sendall(
                        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 7\r\n\r\nsuccess"
                    )

    def everything(self) -> bytes:
        return b"".join(self.received)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self._server.close()


@pytest.fixture(scope="module")
def raw_backend() -> Iterator[RawBackend]:
    b = RawBackend()
    yield b
    b.close()


@pytest.fixture(scope="module")
def sidecar(tmp_module: Path, raw_backend: RawBackend) -> Iterator[Sidecar]:
    s = Sidecar(tmp_module, {"upstream": raw_backend.url, "routes": [mp_route()]}, env={"WX_TOKEN": "t0k"})
    s.start()
    yield s
    s.stop()


def exchange(port: int, *requests: bytes, wait: float = 1.0) -> bytes:
    """Send each request on one connection (a pause between them) and return everything answered."""
    out = b""
    with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
        for req in requests:
            s.sendall(req)
            time.sleep(0.3)
        s.settimeout(0.2)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                data = s.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
            if not data:
                break
            out += data
    return out


def smuggled(path: bytes = b"/wechat/callback") -> bytes:
    return (
        b"POST " + path + b" HTTP/1.1\r\nHost: a\r\nContent-Type: text/xml\r\nX-Wxgate-Verified: 1\r\n"
        b"Content-Length: %d\r\n\r\n" % len(FORGED) + FORGED
    )


@pytest.mark.parametrize(
    "upgrade",
    [
        b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n",
        b"Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 8\r\nSec-WebSocket-Key: x\r\n",
        b"Connection: keep-alive, Upgrade\r\nUpgrade: foo/1\r\n",
    ],
    ids=["h2c", "websocket-8", "other"],
)
def test_an_upgrade_on_a_passed_through_path_never_tunnels_the_connection(
    sidecar: Sidecar, raw_backend: RawBackend, upgrade: bytes
) -> None:
    before = len(raw_backend.everything())
    answer = exchange(sidecar.port, b"GET /legacy HTTP/1.1\r\nHost: a\r\n" + upgrade + b"\r\n", smuggled())
    seen = raw_backend.everything()[before:]
    assert answer.startswith(b"HTTP/1.1 200 OK"), answer[:200]  # answered by the backend, not upgraded
    assert b"101" not in answer.split(b"\r\n", 1)[0]
    assert b"upgrade" not in seen.lower() and b"http2-settings" not in seen.lower()
    assert (
        FORGED not in seen and b"x-wxgate-verified" not in seen.lower()
    )  # refused as the route's, not tunnelled
    assert b" 403 " in answer or b" 400 " in answer


def test_a_websocket_upgrade_is_still_passed_through(sidecar: Sidecar, raw_backend: RawBackend) -> None:
    """RFC 6455 (version 13) stays: mitmproxy relays it frame by frame, so nothing can be smuggled in it."""
    before = len(raw_backend.everything())
    ws = b"Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    answer = exchange(sidecar.port, b"GET /chat HTTP/1.1\r\nHost: a\r\n" + ws + b"\r\n")
    assert answer.startswith(b"HTTP/1.1 101"), answer[:200]
    assert b"upgrade: websocket" in raw_backend.everything()[before:].lower()


def test_an_absolute_form_target_reaches_the_backend_in_origin_form(
    sidecar: Sidecar, raw_backend: RawBackend
) -> None:
    before = len(raw_backend.everything())
    answer = exchange(sidecar.port, b"GET http://evil.example/legacy?x=1 HTTP/1.1\r\nHost: a\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 OK"), answer[:200]
    seen = raw_backend.everything()[before:]
    assert b"GET /legacy?x=1 HTTP/1.1\r\n" in seen, seen[:300]  # (after whatever an earlier connection sent)
    assert b"evil.example" not in seen


@pytest.mark.parametrize(
    "target",
    [
        b"//x/wechat/callback",
        b"/\\x/wechat/callback",
        b"//user@x/wechat/callback?a=1",
        b"http://x//y/wechat/callback",  # absolute-form whose path is itself a URL with a host
    ],
)
def test_a_target_with_a_host_of_its_own_never_reaches_the_backend(
    sidecar: Sidecar, raw_backend: RawBackend, target: bytes
) -> None:
    """``//x/wechat/callback`` is a URL with host ``x`` to a WHATWG parser (Node's ``new URL(req.url, base)``),
    which routes it to ``/wechat/callback``: it was passed through as an unmatched path, unverified."""
    before = len(raw_backend.everything())
    answer = exchange(sidecar.port, smuggled(target))
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]
    assert FORGED not in raw_backend.everything()[before:]
