"""Answers on the wire, read byte by byte from a raw socket through the running proxy: an answer's head and body
go out in one write (``BoundedHttp1Server.send``), and nothing else may change because of it — found by
attacking that change: an ``Expect: 100-continue`` request got no ``100 Continue`` and then an answer whose body
began with the held ``100`` head (25 bytes past its ``Content-Length``, poisoning the next answer on the
connection)."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from proxy.protocols import xmlmsg
from proxy.tools.traffic import Outbound, mp_message
from tests.support.procs import Backend, Sidecar

pytestmark = pytest.mark.integration

TOKEN = "wire-token"
GH, OPENID = "gh_97417a04a28d", "o9AgO5Kd5ggOC-bXrbNODIiE3bGY"


@pytest.fixture(scope="module")
def sidecar(tmp_module: Path, backend: Backend) -> Iterator[Sidecar]:
    route = {"name": "mp", "path": "/mp", "protocol": "wechat-mp", "token": "${TOKEN}"}
    s = Sidecar(tmp_module, {"upstream": backend.url, "routes": [route]}, env={"TOKEN": TOKEN})
    s.start()
    yield s
    s.stop()


def message(msg_id: int) -> Outbound:
    xml = xmlmsg.build(
        {
            "ToUserName": GH,
            "FromUserName": OPENID,
            "CreateTime": int(time.time()),
            "MsgType": "text",
            "Content": "hello",
            "MsgId": msg_id,
        }
    )
    return mp_message("/mp", TOKEN, xml, str(int(time.time())), os.urandom(6).hex())


def head_of(out: Outbound, extra: str = "") -> bytes:
    headers = "".join(f"{k}: {v}\r\n" for k, v in out.headers)
    return (
        f"POST {out.target} HTTP/1.1\r\nhost: 127.0.0.1\r\n{headers}content-length: {len(out.body)}\r\n{extra}\r\n"
    ).encode()


class Reader:
    """One client connection that reads exactly one HTTP/1.1 answer at a time, by its Content-Length."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.buf = b""

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        assert chunk, f"connection closed with {self.buf!r} unread"
        self.buf += chunk

    def answer(self) -> tuple[bytes, bytes]:
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        length = next(
            (
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            ),
            0,
        )
        while len(self.buf) < length:
            self._fill()
        body, self.buf = self.buf[:length], self.buf[length:]
        return head, body

    def interim(self, timeout: float = 2.0) -> bytes:
        """What arrives before the body is sent (a ``100 Continue`` head, or nothing)."""
        self.sock.settimeout(timeout)
        try:
            while b"\r\n\r\n" not in self.buf:
                self._fill()
        except TimeoutError:
            return b""
        finally:
            self.sock.settimeout(5)
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        return head

    def close(self) -> None:
        self.sock.close()


def test_expect_100_continue_gets_its_interim_answer_then_an_intact_answer_on_a_verified_route(
    sidecar: Sidecar,
) -> None:
    conn = Reader(sidecar.port)
    try:
        for msg_id in (7100000001, 7100000002):  # two on one keep-alive connection: no bytes left over
            out = message(msg_id)
            conn.sock.sendall(head_of(out, "expect: 100-continue\r\n"))
            assert conn.interim() == b"HTTP/1.1 100 Continue"
            conn.sock.sendall(out.body)
            head, body = conn.answer()
            assert head.startswith(b"HTTP/1.1 200 "), head
            assert body == b"success" or body.startswith(b"<xml>"), (
                body
            )  # the backend's passive reply, intact
            assert b"Continue" not in body
        assert conn.buf == b""
    finally:
        conn.close()


def test_expect_100_continue_on_an_unmatched_path_is_forwarded_with_its_answer_intact(
    sidecar: Sidecar, backend: Backend
) -> None:
    conn = Reader(sidecar.port)
    try:
        for _ in range(2):
            conn.sock.sendall(
                b"POST /_demo/echo HTTP/1.1\r\nhost: 127.0.0.1\r\nexpect: 100-continue\r\ncontent-length: 3\r\n\r\n"
            )
            assert conn.interim() == b"HTTP/1.1 100 Continue"
            conn.sock.sendall(b"abc")
            head, body = conn.answer()
            assert head.startswith(b"HTTP/1.1 "), head
            assert b"100 Continue" not in body
        assert conn.buf == b""
    finally:
        conn.close()


def test_answers_without_expect_arrive_whole_and_back_to_back_on_one_connection(sidecar: Sidecar) -> None:
    conn = Reader(sidecar.port)
    try:
        first, second = message(7100000003), message(7100000004)
        conn.sock.sendall(head_of(first) + first.body)
        assert conn.answer()[0].startswith(b"HTTP/1.1 200 ")
        conn.sock.sendall(head_of(second) + second.body)
        head, body = conn.answer()
        assert head.startswith(b"HTTP/1.1 200 ") and body
        # A forged one is refused with its whole answer, and the connection goes on.
        forged = message(7100000005)
        conn.sock.sendall(
            head_of(forged._replace(target=forged.target.replace("signature=", "signature=0"))) + forged.body
        )
        head, body = conn.answer()
        assert head.startswith(b"HTTP/1.1 403 ") and conn.buf == b""
    finally:
        conn.close()
