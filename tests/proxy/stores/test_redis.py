"""RedisStore beyond the contract: outages, recovery, crash durability, secrets, pub/sub wake-ups, Sentinel."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from proxy.stores import ClaimState, OutboxItem, RedisStore, StoreUnavailable
from proxy.stores.redis_target import RedisConnector
from proxy.stores.url import parse_redis_url
from tests.proxy.stores.conftest import namespace
from tests.support.redis_servers import HOST, RedisCluster, RedisSentinel, RedisServer

REPLY = b"<xml><Content>ok</Content></xml>\x00"


@pytest.fixture
async def hung_port() -> AsyncIterator[int]:
    """A port that accepts TCP connections (kernel backlog) but never answers, like a wedged Redis."""
    with socket.socket() as listener:
        listener.bind((HOST, 0))
        listener.listen(16)
        yield int(listener.getsockname()[1])


async def eventually_ok(store: RedisStore, within: float) -> float:
    """Seconds until ``ping`` succeeds again; fails the test after ``within``."""
    started = time.monotonic()
    while True:
        try:
            await store.ping()
            return time.monotonic() - started
        except StoreUnavailable:
            if time.monotonic() - started > within:
                raise
            await asyncio.sleep(0.05)


async def test_a_stopped_redis_fails_fast_and_the_store_recovers_on_its_own(own_redis: RedisServer) -> None:
    async with RedisStore(own_redis.url, namespace=namespace()) as store:
        await store.claim("before", 10, 60)
        own_redis.stop()
        started = time.monotonic()
        with pytest.raises(StoreUnavailable) as failure:
            await store.claim("k", 10, 60)
        assert time.monotonic() - started < 2.0
        message = str(failure.value)
        assert f"redis://127.0.0.1:{own_redis.port}/0" in message
        assert "check that redis is running" in message
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            await store.settle("before", 10, 5.0)  # a retry waiting on a key fails as fast, too
        assert time.monotonic() - started < 1.0
        own_redis.start()  # same port, same store object, no reopen
        assert await eventually_ok(store, within=3.0) < 3.0
        first = await store.claim("k", 10, 60)
        assert first.state is ClaimState.NEW
        assert await store.complete("k", first.token or "", REPLY, 60) is True
        assert (await store.claim("k", 10, 60)).reply == REPLY


async def test_a_hung_redis_costs_a_call_about_the_read_timeout_not_a_hang(hung_port: int) -> None:
    store = RedisStore(f"redis://{HOST}:{hung_port}/0", timeout=1.0)
    started = time.monotonic()
    with pytest.raises(StoreUnavailable, match=r"no reply from redis .* within 1\.0 s"):
        await store.claim("k", 10, 60)
    assert time.monotonic() - started < 2.0
    await store.close()


async def test_an_outbox_item_survives_kill_9_of_an_aof_redis(aof_redis: RedisServer) -> None:
    item = OutboxItem(
        "crash-1", "pay-v3", b'{"id":"EV-1"}\x00', 2, 1_700_000_000.5, 1_700_000_030.25, "HTTP 500"
    )
    async with RedisStore(aof_redis.url, namespace="aof") as store:
        await store.outbox_put(item)
        done = await store.claim("msg", 10, 600)
        await store.complete("msg", done.token or "", REPLY, 600)
        aof_redis.kill()
        aof_redis.start()
        await eventually_ok(store, within=3.0)
        assert await store.outbox_get("crash-1") == item
        assert [i.id for i in await store.outbox_lease(1_700_000_031.0, 30, 10)] == ["crash-1"]
        assert (await store.claim("msg", 10, 600)).reply == REPLY


async def test_passwords_never_reach_messages_or_logs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with RedisServer(password="right-pw-7f3a", data_dir=tmp_path / "redis") as server:
        wrong = RedisStore(f"redis://:wrong-pw-91c2@{HOST}:{server.port}/0")
        with pytest.raises(StoreUnavailable) as refused:
            await wrong.open()
        await wrong.close()
        assert "wrong-pw-91c2" not in str(refused.value) + repr(wrong)
        assert f"redis://127.0.0.1:{server.port}/0" in str(refused.value)
        async with RedisStore(server.url) as right:
            assert (await right.claim("k", 10, 60)).state is ClaimState.NEW
            server.stop()
            with pytest.raises(StoreUnavailable) as down:
                await right.claim("k", 10, 60)
            assert "right-pw-7f3a" not in str(down.value) + repr(right)
    assert not [r for r in caplog.records if "pw-" in r.getMessage()]


@pytest.mark.parametrize("topology", ["redis", "redis-cluster"])
async def test_settle_is_woken_by_pub_sub_from_another_replica(
    topology: str, request: pytest.FixtureRequest
) -> None:
    server = request.getfixturevalue("redis_server" if topology == "redis" else "redis_cluster")
    ns = namespace()
    async with (
        RedisStore(server.url, namespace=ns, settle_poll=30.0) as waiter,
        RedisStore(server.url, namespace=ns) as holder,
    ):
        for n in range(3):  # several keys, so on a cluster they land on different nodes
            first = await holder.claim(f"k{n}", 10, 60)
            started = time.monotonic()

            async def finish(key: str = f"k{n}", token: str = first.token or "") -> None:
                await asyncio.sleep(0.05)
                await holder.complete(key, token, REPLY, 60)

            settled, _ = await asyncio.gather(waiter.settle(f"k{n}", 10, 10.0), finish())
            assert time.monotonic() - started < 1.0  # the poll (30 s) could not have done it
            assert (settled.state, settled.reply) == (ClaimState.DONE, REPLY)


async def test_settle_takes_over_the_moment_a_crashed_holders_lease_ends(redis_server: RedisServer) -> None:
    async with RedisStore(redis_server.url, namespace=namespace(), settle_poll=30.0) as store:
        await store.claim("k", 0.5, 60)  # the holder then "crashes": no complete, no release
        started = time.monotonic()
        settled = await store.settle("k", 10, 5.0)
        elapsed = time.monotonic() - started
        assert (settled.state, settled.attempt) == (ClaimState.NEW, 1)
        assert 0.4 < elapsed < 1.5  # at the lease end, not at the 30 s poll


async def test_pub_sub_wake_ups_resume_after_a_redis_restart(own_redis: RedisServer) -> None:
    ns = namespace()
    async with (
        RedisStore(own_redis.url, namespace=ns, settle_poll=30.0) as waiter,
        RedisStore(own_redis.url, namespace=ns) as holder,
    ):
        own_redis.stop()
        own_redis.start()
        await eventually_ok(holder, within=3.0)
        first = await holder.claim("k", 10, 60)
        await asyncio.sleep(0.3)  # let the subscriber notice and resubscribe
        started = time.monotonic()
        settled, _ = await asyncio.gather(
            waiter.settle("k", 10, 10.0), holder.complete("k", first.token or "", REPLY, 60)
        )
        assert (settled.state, settled.reply) == (ClaimState.DONE, REPLY)
        assert time.monotonic() - started < 3.0


async def test_the_cluster_keeps_each_operation_on_one_slot(redis_cluster: RedisCluster) -> None:
    async with RedisStore(redis_cluster.url, namespace=namespace()) as store:
        keys = [f"msg-{n}" for n in range(30)]  # spread over all three masters
        for key in keys:
            first = await store.claim(key, 10, 60)
            await store.complete(key, first.token or "", key.encode(), 60)
        assert [(await store.claim(k, 10, 60)).reply for k in keys] == [k.encode() for k in keys]


async def test_sentinel_urls_reach_the_master(tmp_path: Path) -> None:
    with (
        RedisServer(password="s3nt-pw", data_dir=tmp_path / "master") as master,
        RedisSentinel(master) as sentinel,
    ):
        async with RedisStore(sentinel.url, namespace=namespace()) as store:
            first = await store.claim("k", 10, 60)
            assert await store.complete("k", first.token or "", REPLY, 60) is True
            assert (await store.claim("k", 10, 60)).reply == REPLY
            assert "s3nt-pw" not in repr(store)


@pytest.mark.parametrize(
    ("url", "kind", "safe", "nodes"),
    [
        ("redis://:pw@10.0.0.5:6380/2", "redis", "redis://10.0.0.5:6380/2", [("10.0.0.5", 6380)]),
        (
            "rediss://user:pw@cache.internal/0?ssl_cert_reqs=none",
            "redis",
            "rediss://user@cache.internal:6379/0",
            None,
        ),
        (
            "redis+cluster://:pw@a:7000,b:7001,[::1]:7002",
            "cluster",
            "redis+cluster://a:7000,b:7001,[::1]:7002",
            [("a", 7000), ("b", 7001), ("::1", 7002)],
        ),
        (
            "redis+sentinel://:pw@s1,s2:26380/mymaster",
            "sentinel",
            "redis+sentinel://s1:26379,s2:26380/mymaster",
            None,
        ),
    ],
)
def test_urls_parse_and_their_safe_form_has_no_password(
    url: str, kind: str, safe: str, nodes: list[tuple[str, int]] | None
) -> None:
    target = parse_redis_url(url)
    assert (target.kind, target.safe_url, target.password) == (kind, safe, "pw")
    assert "pw" not in repr(target).replace("password", "")
    if nodes is not None:
        assert list(target.nodes) == nodes


@pytest.mark.parametrize(
    ("url", "error"),
    [
        ("redis+cluster://", "at least one seed node"),
        ("redis+sentinel://s1:26379", "service"),
        ("redis+cluster://a:70x0", "port is not a number"),
        ("redis+cluster://:hunter2@:7000", "a node has no host"),
        ("redis://:hun/ter2@cache:6379/0", r"password holding / \? # or @ must be percent-encoded"),
    ],
)
def test_bad_urls_say_what_is_expected(url: str, error: str) -> None:
    with pytest.raises(ValueError, match=error) as e:
        parse_redis_url(url)
    assert "ter2" not in str(e.value)  # never a piece of the URL: it may be the password


def _lost_transport_write() -> None:
    """What CPython's selector transport raises when written to right after connection_lost (cpython#136234)."""
    namespace: dict[str, object] = {}
    exec(
        compile(
            "def writelines():\n    write_ready = None\n    write_ready()\n",
            "/usr/lib/python3.12/asyncio/selector_events.py",
            "exec",
        ),
        namespace,
    )
    namespace["writelines"]()  # type: ignore[operator]


def test_a_connection_lost_mid_write_is_an_outage_not_a_crash() -> None:
    # Seen with a Redis Cluster master SIGKILLed under load: the TypeError reached the addons, which answered
    # 500 verify_error instead of applying the route's store_down policy.
    connector = RedisConnector(
        parse_redis_url("redis://:pw@127.0.0.1:1/0"), connect_timeout=0.1, timeout=0.1, max_connections=1
    )
    with pytest.raises(StoreUnavailable, match="connection was lost"), connector.translate():
        _lost_transport_write()
    with pytest.raises(TypeError), connector.translate():  # wxgate's own bugs are not disguised as outages
        len(5)  # type: ignore[arg-type]


@pytest.mark.parametrize("topology", ["redis", "cluster"])
async def test_a_retried_call_whose_first_run_was_applied_is_not_a_repeat(
    request: pytest.FixtureRequest, topology: str
) -> None:
    # redis-py re-sends a command once when its connection is lost, and the first run may have been applied
    # with only its reply lost. With a Redis Cluster master SIGKILLed under load, genuine deliveries were
    # refused as replayed_nonce that way. Running a script twice with the same arguments is that retry.
    server = request.getfixturevalue("redis_server" if topology == "redis" else "redis_cluster")
    async with RedisStore(server.url, namespace=namespace()) as store:
        scripts = store._scripts
        nonce = [store._key("signed-request", "n")]
        assert await scripts.remember(keys=nonce, args=["tok-1", 60_000]) == 1
        assert await scripts.remember(keys=nonce, args=["tok-1", 60_000]) == 1  # the retry
        assert await scripts.remember(keys=nonce, args=["tok-2", 60_000]) == 0  # a real repeat
        assert not await store.remember("signed-request", 60)
        record = [store._key("notification", "d")]
        first = await scripts.claim(keys=record, args=["tok-1", 10_000, 60_000, "", "notification"])
        retried = await scripts.claim(keys=record, args=["tok-1", 10_000, 60_000, "", "notification"])
        assert [bytes(first[0]), first[1]] == [bytes(retried[0]), retried[1]] == [b"new", 1]
        other = await store.claim("notification", 10, 60)
        assert (other.state, other.attempt) == (ClaimState.IN_FLIGHT, 2)
