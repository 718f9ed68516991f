"""RespClient against real redis-server processes: reply types, scripts, pipelining, errors, AUTH, SELECT, TLS,
a killed, a stopped (SIGSTOP) and a hung Redis, cancelled callers, the pending cap and aclose."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import signal
import socket
import ssl
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from proxy.stores.resp import RespClient, RespConnectionError, RespError
from tests.support.certs import authority, server_cert
from tests.support.redis_servers import HOST, RedisServer, free_port

SECRET = "s3cret-Pa55word"


def key() -> str:
    return f"resp:{uuid.uuid4().hex}"


def sha1(script: str) -> str:
    return hashlib.sha1(script.encode()).hexdigest()


@pytest.fixture
async def client(redis_server: RedisServer) -> AsyncIterator[RespClient]:
    async with RespClient(HOST, redis_server.port) as c:
        yield c


async def command_calls(client: RespClient, name: str) -> int:
    stats = (await client.execute("INFO", "commandstats")).decode()
    found = re.search(rf"^cmdstat_{re.escape(name)}:calls=(\d+)", stats, re.MULTILINE)
    return int(found.group(1)) if found else 0


async def test_replies_come_back_as_their_types(client: RespClient) -> None:
    k, n, lst = key(), key(), key()
    assert await client.execute("SET", k, "héllo") == b"OK"
    assert await client.execute("GET", k) == "héllo".encode()
    await client.execute("SET", k, b"\x00\r\n$3\r\n")  # binary safe, RESP framing inside the value
    assert await client.execute("GET", k) == b"\x00\r\n$3\r\n"
    await client.execute("SET", k, memoryview(b"view"))
    assert await client.execute("GET", k) == b"view"
    await client.execute("SET", k, bytearray(b"array"))
    assert await client.execute("GET", k) == b"array"
    await client.execute("SET", k, 0.1)
    assert await client.execute("GET", k) == repr(0.1).encode()
    assert await client.execute("INCRBY", n, 41) == 41
    assert await client.execute("INCR", n) == 42
    assert await client.execute("GET", key()) is None
    assert await client.execute("RPUSH", lst, "a", b"b", 3) == 3
    assert await client.execute("LRANGE", lst, 0, -1) == [b"a", b"b", b"3"]
    assert await client.execute("LRANGE", key(), 0, -1) == []
    nested = "return {1, {2, 'x', {}}, ARGV[1], false}"
    assert await client.execute("EVAL", nested, 0, "y") == [1, [2, b"x", []], b"y", None]
    for bad in (None, True):
        with pytest.raises(TypeError, match=f"not {type(bad).__name__}"):
            await client.execute("SET", k, bad)  # type: ignore[arg-type]


async def test_evalsha_loads_a_script_it_never_sent_then_goes_straight_through(client: RespClient) -> None:
    script = f"-- {uuid.uuid4().hex}\nreturn {{KEYS[1], ARGV[1], tonumber(ARGV[2]) + 1}}"
    sha = sha1(script)
    assert await client.execute("SCRIPT", "EXISTS", sha) == [0]
    assert await client.evalsha(sha, script, ["k"], ["a", 41]) == [b"k", b"a", 42]
    assert await client.execute("SCRIPT", "EXISTS", sha) == [1]
    loads, evalshas = await command_calls(client, "script|load"), await command_calls(client, "evalsha")
    assert await client.evalsha(sha, script, ["k2"], [b"b", 1]) == [b"k2", b"b", 2]
    assert await command_calls(client, "script|load") == loads
    assert await command_calls(client, "evalsha") == evalshas + 1


async def test_a_script_that_does_not_compile_raises_why_and_the_client_carries_on(
    client: RespClient,
) -> None:
    bad = f"-- {uuid.uuid4().hex}\nreturn ("
    with pytest.raises(RespError, match="compiling script") as failure:
        await client.evalsha(sha1(bad), bad, [], [])
    assert failure.value.code == "ERR"
    assert await client.execute("PING") == b"PONG"


async def test_500_concurrent_calls_share_one_connection_and_each_get_their_own_answer(
    client: RespClient,
) -> None:
    script = f"-- {uuid.uuid4().hex}\nreturn ARGV[1] .. ':' .. KEYS[1]"

    async def one(i: int) -> bytes:
        if i % 3 == 0:
            return bytes(await client.evalsha(sha1(script), script, [f"k{i}"], [i]))
        if i % 3 == 1:
            return bytes(await client.execute("ECHO", f"{i}:k{i}"))
        return str(await client.execute("CLIENT", "ID")).encode()

    replies = await asyncio.gather(*(one(i) for i in range(500)))  # all start before the connection is up
    for i, reply in enumerate(replies):
        if i % 3 != 2:
            assert reply == f"{i}:k{i}".encode()
    assert len({reply for i, reply in enumerate(replies) if i % 3 == 2}) == 1  # one connection, one connect


async def test_error_replies_raise_resp_error_in_place_and_the_connection_stays(client: RespClient) -> None:
    k, push = key(), f"-- {uuid.uuid4().hex}\nreturn redis.call('LPUSH', KEYS[1], 'x')"
    await client.execute("SET", k, "text")
    conn_id = await client.execute("CLIENT", "ID")
    with pytest.raises(RespError, match="not an integer") as failure:
        await client.execute("INCR", k)
    assert failure.value.code == "ERR"
    replies = await asyncio.gather(
        client.execute("GET", k),
        client.execute("LPUSH", k, "x"),
        client.execute("ECHO", "after"),
        client.execute("NOSUCHCOMMAND"),
        client.evalsha(sha1(push), push, [k], []),  # NOSCRIPT, then the script's own error
        client.execute("ECHO", "last"),
        return_exceptions=True,
    )
    assert replies[0] == b"text" and replies[2] == b"after" and replies[5] == b"last"
    assert isinstance(replies[1], RespError) and replies[1].code == "WRONGTYPE"
    assert isinstance(replies[3], RespError) and "unknown command" in str(replies[3])
    assert isinstance(replies[4], RespError) and "WRONGTYPE" in str(replies[4])
    assert await client.execute("CLIENT", "ID") == conn_id


async def test_auth_with_the_right_password_and_never_showing_it(tmp_path: Path) -> None:
    with RedisServer(password=SECRET, data_dir=tmp_path / "redis") as server:
        async with RespClient(HOST, server.port, password=SECRET) as c:
            assert await c.execute("PING") == b"PONG"
            assert SECRET not in repr(c)
        async with RespClient(HOST, server.port, username="default", password=SECRET) as c:
            assert await c.execute("ACL", "WHOAMI") == b"default"
        async with RespClient.from_url(server.url) as c:
            assert await c.execute("PING") == b"PONG"
            assert SECRET not in repr(c)
        for wrong in (
            RespClient(HOST, server.port, password="not-" + SECRET),
            RespClient(HOST, server.port, username="nobody", password=SECRET),
        ):
            async with wrong:
                with pytest.raises(RespError) as failure:
                    await wrong.execute("PING")
                assert failure.value.code == "WRONGPASS"
                assert SECRET not in str(failure.value) and SECRET not in repr(failure.value)
        async with RespClient(HOST, server.port) as c:
            with pytest.raises(RespError) as failure:
                await c.execute("PING")
            assert failure.value.code == "NOAUTH"


async def test_select_keeps_databases_apart(redis_server: RedisServer) -> None:
    k = key()
    async with RespClient(HOST, redis_server.port) as zero, RespClient(HOST, redis_server.port, db=5) as five:
        await asyncio.gather(zero.execute("SET", k, "zero"), five.execute("SET", k, "five"))
        assert await zero.execute("GET", k) == b"zero"
        assert await five.execute("GET", k) == b"five"
        await five.execute("DEL", k)
        assert await zero.execute("GET", k) == b"zero"
    async with RespClient(HOST, redis_server.port, db=99) as bad:
        with pytest.raises(RespError, match="out of range"):
            await bad.execute("PING")


async def test_a_killed_redis_fails_pending_and_new_calls_fast_and_the_client_recovers(
    own_redis: RedisServer,
) -> None:
    async with RespClient(HOST, own_redis.port, timeout=5) as c:
        assert await c.execute("PING") == b"PONG"
        pending = asyncio.create_task(c.execute("BLPOP", key(), 4))
        await asyncio.sleep(0.05)
        started = time.monotonic()
        await asyncio.to_thread(own_redis.kill)
        with pytest.raises(RespConnectionError, match="lost"):
            await pending
        with pytest.raises(RespConnectionError, match=str(own_redis.port)) as failure:
            await c.execute("PING")
        assert isinstance(failure.value, OSError)
        assert time.monotonic() - started < 2
        await asyncio.to_thread(own_redis.restart)
        assert await c.execute("PING") == b"PONG"


async def test_a_stopped_redis_fails_calls_within_the_timeout_and_the_client_recovers(
    own_redis: RedisServer,
) -> None:
    assert own_redis.proc is not None
    pid = own_redis.proc.pid
    async with RespClient(HOST, own_redis.port, connect_timeout=0.3, timeout=0.3) as c:
        assert await c.execute("PING") == b"PONG"
        os.kill(pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            first = asyncio.create_task(c.execute("PING"))
            await asyncio.sleep(0.1)
            replies = await asyncio.gather(
                first, *(c.execute("ECHO", i) for i in range(20)), return_exceptions=True
            )
            elapsed = time.monotonic() - started
            assert all(isinstance(r, RespConnectionError) for r in replies), replies
            assert "within 0.3 s" in str(replies[0])
            assert 0.25 < elapsed < 1.0  # the oldest call's timeout fails the later ones with it
            started = time.monotonic()
            with pytest.raises(RespConnectionError):  # reconnects (the kernel accepts), then no reply
                await c.execute("PING")
            assert time.monotonic() - started < 1.0
        finally:
            os.kill(pid, signal.SIGCONT)
        assert await c.execute("PING") == b"PONG"


async def test_a_hung_server_fails_the_connect_within_connect_timeout() -> None:
    with socket.socket() as listener:  # accepts into the backlog, never answers
        listener.bind((HOST, 0))
        listener.listen(16)
        port = int(listener.getsockname()[1])
        async with RespClient(HOST, port, password=SECRET, connect_timeout=0.2, timeout=5) as c:
            started = time.monotonic()
            callers = await asyncio.gather(*(c.execute("PING") for _ in range(5)), return_exceptions=True)
            assert all(isinstance(r, RespConnectionError) for r in callers), callers
            assert "within 0.2 s" in str(callers[0]) and SECRET not in str(callers[0])
            assert time.monotonic() - started < 0.6


async def test_connection_refused_fails_fast() -> None:
    port = free_port()
    async with RespClient(HOST, port, connect_timeout=2) as c:
        started = time.monotonic()
        with pytest.raises(RespConnectionError, match=f"{HOST}:{port}"):
            await c.execute("PING")
        with pytest.raises(OSError):
            await c.evalsha("0" * 40, "return 1", [], [])
        assert time.monotonic() - started < 0.5


async def test_a_cancelled_caller_leaves_the_connection_in_step(client: RespClient) -> None:
    k = key()
    await client.execute("SET", k, "value")
    blocked = asyncio.create_task(client.execute("BLPOP", key(), 0.3))  # its nil arrives after cancel
    after = asyncio.create_task(client.execute("GET", k))
    await asyncio.sleep(0.05)
    blocked.cancel()
    assert await after == b"value"
    assert blocked.cancelled()

    tasks = [asyncio.create_task(client.execute("ECHO", i)) for i in range(300)]
    await asyncio.sleep(0)  # every command written, none answered yet
    for task in tasks[::3]:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for i, task in enumerate(tasks):
        if i % 3:
            assert task.result() == str(i).encode()
    assert await client.execute("ECHO", "next") == b"next"


async def test_pending_replies_are_capped(redis_server: RedisServer) -> None:
    async with RespClient(HOST, redis_server.port, max_pending=3) as c:
        await c.execute("PING")
        waiting = [
            asyncio.create_task(c.execute("BLPOP", key(), 0.2)),
            *(asyncio.create_task(c.execute("ECHO", i)) for i in range(2)),
        ]
        await asyncio.sleep(0.02)
        with pytest.raises(RespConnectionError, match="3 replies already pending"):
            await c.execute("PING")
        assert await asyncio.gather(*waiting) == [None, b"0", b"1"]
        assert await c.execute("PING") == b"PONG"


async def test_aclose_fails_pending_calls_is_idempotent_and_a_later_call_reconnects(
    redis_server: RedisServer,
) -> None:
    c = RespClient(HOST, redis_server.port)
    await c.aclose()  # never connected
    first = await c.execute("CLIENT", "ID")
    pending = asyncio.create_task(c.execute("BLPOP", key(), 1))
    await asyncio.sleep(0.02)
    await c.aclose()
    await c.aclose()
    with pytest.raises(RespConnectionError, match="closed"):
        await pending
    assert await c.execute("CLIENT", "ID") != first
    connecting = asyncio.create_task(c.execute("PING"))
    await asyncio.sleep(0)  # connect under way
    await c.aclose()
    with pytest.raises(RespConnectionError, match="closed"):
        await connecting
    assert await c.execute("PING") == b"PONG"
    await c.aclose()


async def test_a_connection_redis_dropped_between_calls_is_replaced_without_an_error(
    client: RespClient, redis_server: RedisServer
) -> None:
    victim = await client.execute("CLIENT", "ID")
    async with RespClient(HOST, redis_server.port) as other:
        assert await other.execute("CLIENT", "KILL", "ID", victim) == 1
    await asyncio.sleep(0.05)  # the loss is seen before the next command is written
    assert await client.execute("CLIENT", "ID") != victim


async def test_rediss_with_a_verified_certificate(tmp_path: Path) -> None:
    ca = authority()
    ca_file, cert_file, key_file = tmp_path / "ca.pem", tmp_path / "redis.pem", tmp_path / "redis.key"
    ca.write(ca_file)
    server_cert(ca, cert_file, key_file)
    tls_port = free_port()
    tls = ["--tls-port", str(tls_port), "--tls-cert-file", str(cert_file), "--tls-key-file", str(key_file)]
    tls += ["--tls-ca-cert-file", str(ca_file), "--tls-auth-clients", "no"]
    with RedisServer(data_dir=tmp_path / "redis", extra_args=tuple(tls)):
        context = ssl.create_default_context(cafile=str(ca_file))
        async with RespClient.from_url(f"rediss://{HOST}:{tls_port}/2", ssl_context=context) as c:
            assert repr(c) == f"RespClient(rediss://{HOST}:{tls_port}/2)"
            assert await c.execute("ECHO", "tls") == b"tls"
        async with RespClient.from_url(f"rediss://{HOST}:{tls_port}/0", connect_timeout=2) as untrusted:
            with pytest.raises(RespConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
                await untrusted.execute("PING")
    with pytest.raises(ValueError, match="one server"):
        RespClient.from_url(f"redis+cluster://{HOST}:7000")
