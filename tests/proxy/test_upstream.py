"""The backend call against a real loopback server that answers each request with a scripted reply."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from proxy.upstream.client import UpstreamClient, split_url
from tests.support.redis_servers import free_port

Answer = Callable[[bytes], bytes | None]  # raw request -> raw reply (None: close without answering)


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Backend:
    """Counts connections and requests; ``answer`` decides each reply."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.connections = 0
        self.requests: list[bytes] = []
        self.writers: list[asyncio.StreamWriter] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                request = head + await reader.readexactly(length)
                self.requests.append(request)
                reply = self.answer(request)
                if reply is None:
                    break
                writer.write(reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    async def close_idle_connections(self) -> None:
        for w in self.writers:
            w.close()
        await asyncio.sleep(0.05)


class Servers:
    """Loopback servers for one test, all closed (with their connections) at its end."""

    def __init__(self) -> None:
        self.servers: list[asyncio.Server] = []
        self.writers: list[asyncio.StreamWriter] = []

    async def start(self, handler: Handler) -> int:
        async def tracked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.writers.append(writer)
            try:
                await handler(reader, writer)
            finally:
                writer.close()

        server = await asyncio.start_server(tracked, "127.0.0.1", 0)
        self.servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        for w in self.writers:
            w.close()
        for server in self.servers:
            server.close()
            await asyncio.wait_for(server.wait_closed(), 5)


def ok(body: bytes = b"success", extra: bytes = b"") -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
        + extra
        + b"Content-Length: %d\r\n\r\n" % len(body)
        + body
    )


@pytest.fixture
async def servers() -> AsyncIterator[Servers]:
    s = Servers()
    yield s
    await s.close()


@pytest.fixture
async def client(servers: Servers) -> AsyncIterator[UpstreamClient]:  # closed before the servers
    c = UpstreamClient(pool_size=4, connect_timeout=1.0)
    yield c
    await c.close()


@pytest.fixture
def serve(servers: Servers) -> Callable[[Answer], Awaitable[tuple[Backend, str]]]:
    async def start(answer: Answer) -> tuple[Backend, str]:
        b = Backend(answer)
        return b, f"http://127.0.0.1:{await servers.start(b.handle)}"

    return start


Serve = Callable[[Answer], Awaitable[tuple[Backend, str]]]


async def test_a_2xx_answer_and_what_the_backend_received(client: UpstreamClient, serve: Serve) -> None:
    backend, url = await serve(lambda req: ok(b"<xml>reply</xml>"))
    headers = {"content-type": "text/xml", "x-wxgate-verified": "1"}
    r = await client.send("POST", url + "/wx?a=1", headers, b"<x/>", 5)
    assert (r.kind, r.status, r.content_type, r.body, r.ok) == (
        "2xx",
        200,
        "text/plain",
        b"<xml>reply</xml>",
        True,
    )
    port = url.rsplit(":", 1)[1].encode()
    assert backend.requests == [
        b"POST /wx?a=1 HTTP/1.1\r\nhost: 127.0.0.1:" + port + b"\r\ncontent-length: 4\r\n"
        b"content-type: text/xml\r\nx-wxgate-verified: 1\r\n\r\n<x/>"
    ]


async def test_keep_alive_connections_are_reused(client: UpstreamClient, serve: Serve) -> None:
    backend, url = await serve(lambda req: ok())
    for _ in range(5):
        assert (await client.send("POST", url + "/", {}, b"x", 5)).ok
    assert (backend.connections, len(backend.requests)) == (1, 5)


async def test_connection_close_and_http10_answers_are_not_reused(
    client: UpstreamClient, serve: Serve
) -> None:
    answers = iter(
        [ok(extra=b"Connection: close\r\n"), b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", ok()]
    )
    backend, url = await serve(lambda req: next(answers))
    for _ in range(3):
        assert (await client.send("POST", url + "/", {}, b"", 5)).ok
    assert backend.connections == 3


async def test_a_chunked_body(client: UpstreamClient, serve: Serve) -> None:
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nsucc\r\n3\r\ness\r\n0\r\n\r\n"
    backend, url = await serve(lambda req: chunked)
    for _ in range(2):
        r = await client.send("POST", url + "/", {}, b"", 5)
        assert (r.kind, r.body) == ("2xx", b"success")
    assert backend.connections == 1


async def test_a_close_delimited_body_ends_with_the_connection(
    client: UpstreamClient, servers: Servers
) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nsucc")
        await writer.drain()
        writer.write(b"ess")

    port = await servers.start(handle)
    r = await client.send("GET", f"http://127.0.0.1:{port}/", {}, b"", 5)
    assert (r.kind, r.body) == ("2xx", b"success")


@pytest.mark.parametrize(("status", "kind"), [(302, "3xx"), (404, "4xx"), (503, "5xx")])
async def test_status_classes(client: UpstreamClient, serve: Serve, status: int, kind: str) -> None:
    _, url = await serve(lambda req: b"HTTP/1.1 %d X\r\nContent-Length: 0\r\n\r\n" % status)
    r = await client.send("POST", url + "/", {}, b"", 5)
    assert (r.kind, r.status, r.ok) == (kind, status, False)


async def test_refused(client: UpstreamClient) -> None:
    port = free_port()
    r = await client.send("POST", f"http://127.0.0.1:{port}/", {}, b"", 5)
    assert r.kind == "refused" and "111" in r.error  # ECONNREFUSED


async def test_timeout_and_the_connection_is_not_reused(client: UpstreamClient, servers: Servers) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await asyncio.sleep(0.3)
        writer.write(ok())  # too late: must never be read as the answer to a later request

    port = await servers.start(handle)
    r = await client.send("POST", f"http://127.0.0.1:{port}/", {}, b"", 0.1)
    assert (r.kind, r.error) == ("timeout", "timed out")
    assert not client._idle.get(("http", "127.0.0.1", port))


async def test_a_reply_over_1_mib_is_an_error(client: UpstreamClient, serve: Serve) -> None:
    _, url = await serve(lambda req: b"HTTP/1.1 200 OK\r\nContent-Length: 2000000\r\n\r\n")
    r = await client.send("POST", url + "/", {}, b"", 5)
    assert (r.kind, r.status, r.error) == ("error", 200, "reply larger than 1 MiB")


async def test_a_backend_that_hangs_up_without_answering_is_an_error(
    client: UpstreamClient, serve: Serve
) -> None:
    _, url = await serve(lambda req: None)
    r = await client.send("POST", url + "/", {}, b"", 5)
    assert r.kind == "error"


async def test_a_garbled_answer_is_an_error(client: UpstreamClient, serve: Serve) -> None:
    _, url = await serve(lambda req: b"garbage\r\n\r\n")
    r = await client.send("POST", url + "/", {}, b"", 5)
    assert (r.kind, r.error) == ("error", "ProtocolError")


@pytest.mark.parametrize(("method", "retried"), [("GET", True), ("POST", False)])
async def test_a_reused_connection_that_ends_without_an_answer_is_retried_only_for_idempotent_methods(
    client: UpstreamClient, serve: Serve, method: str, retried: bool
) -> None:
    """What a backend that closes idle keep-alive connections looks like when the close crosses our request."""
    answers = iter([ok(), None, ok()])  # the second request's connection ends without an answer
    backend, url = await serve(lambda req: next(answers))
    assert (await client.send(method, url + "/", {}, b"", 5)).ok

    r = await client.send(method, url + "/", {}, b"", 5)

    assert r.ok is retried  # a POST may have been processed already: never sent twice
    assert (backend.connections, len(backend.requests)) == ((2, 3) if retried else (1, 2))


async def test_a_connection_closed_while_idle_is_not_used(client: UpstreamClient, serve: Serve) -> None:
    backend, url = await serve(lambda req: ok())
    assert (await client.send("POST", url + "/", {}, b"", 5)).ok
    await backend.close_idle_connections()
    assert (await client.send("POST", url + "/", {}, b"", 5)).ok
    assert backend.connections == 2


async def test_calls_beyond_the_pool_wait_for_a_connection(servers: Servers) -> None:
    in_flight = peak = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal in_flight, peak
        while True:
            try:
                await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            in_flight += 1
            peak = max(peak, in_flight)
            await asyncio.sleep(0.05)
            in_flight -= 1
            writer.write(ok())

    port = await servers.start(handle)
    client = UpstreamClient(pool_size=2)
    try:
        calls = (client.send("POST", f"http://127.0.0.1:{port}/", {}, b"", 5) for _ in range(6))
        results = await asyncio.gather(*calls)
    finally:
        await client.close()
    assert all(r.ok for r in results)
    assert peak == 2


async def test_https_backends_are_verified(client: UpstreamClient, serve: Serve) -> None:
    """A plain-HTTP server on an https:// URL fails the TLS handshake: refused, never taken as an answer."""
    _, url = await serve(lambda req: ok())
    r = await client.send("POST", url.replace("http://", "https://") + "/", {}, b"", 5)
    assert r.kind == "refused"


@pytest.mark.parametrize(
    ("url", "parts"),
    [
        ("http://127.0.0.1:9000/wx?a=1", ("http", "127.0.0.1", 9000, "/wx?a=1", "127.0.0.1:9000")),
        ("http://backend/wx", ("http", "backend", 80, "/wx", "backend")),
        ("https://backend", ("https", "backend", 443, "/", "backend")),
        ("https://backend:8443/x", ("https", "backend", 8443, "/x", "backend:8443")),
        ("http://[::1]:9000/x", ("http", "::1", 9000, "/x", "[::1]:9000")),
    ],
)
def test_split_url(url: str, parts: tuple[str, str, int, str, str]) -> None:
    t = split_url(url)
    assert (t.scheme, t.host, t.port, t.request_target, t.authority) == parts


@pytest.mark.parametrize("url", ["ftp://x/", "backend:9000/x", "http://:80/", "http://h:port/"])
def test_split_url_refuses_what_is_not_http(url: str) -> None:
    with pytest.raises(ValueError):
        split_url(url)
