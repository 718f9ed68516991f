"""Store fixtures: real ``redis-server`` processes and a fresh store of every kind.

``redis_server`` and ``redis_cluster`` are session-scoped (a cluster takes ~2 s to form) and always torn
down; each store gets its own key namespace on them, so tests never see each other's state. ``aof_redis``
is a per-test server with ``appendfsync always`` in the test's tmp dir, for crash tests. ``subject`` is the
store under contract, with ``advance(seconds)`` to make store time pass: instantly through the injected clock
for SQLite, by sleeping for Redis (whose leases and TTLs run on the server's clock).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from proxy.stores import RedisStore, SqliteStore, Store
from tests.support.redis_servers import RedisCluster, RedisServer

KINDS = ["sqlite-file", "sqlite-memory", "redis", "redis-cluster"]


class FakeClock:
    """A settable Unix-seconds clock for ``SqliteStore(clock=...)``."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Subject:
    kind: str
    store: Store
    advance: Callable[[float], Awaitable[None]]


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A server this test may kill, stop and restart (the session one is shared)."""
    server = RedisServer(data_dir=tmp_path / "redis")
    try:
        yield server.start()
    finally:
        server.cleanup()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    try:
        yield server.start()
    finally:
        server.cleanup()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisCluster]:
    cluster = RedisCluster(masters=3)
    try:
        yield cluster.start()
    finally:
        cluster.stop()


@pytest.fixture
def aof_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(aof=True, data_dir=tmp_path / "redis")
    try:
        yield server.start()
    finally:
        server.cleanup()


def namespace() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture(params=KINDS)
async def subject(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Subject]:
    kind: str = request.param
    store: Store
    advance: Callable[[float], Awaitable[None]]
    if kind.startswith("sqlite"):
        clock = FakeClock()
        store = SqliteStore(str(tmp_path / "state.db") if kind == "sqlite-file" else ":memory:", clock=clock)

        async def advance_clock(seconds: float) -> None:
            clock.advance(seconds)

        advance = advance_clock

    else:
        server = request.getfixturevalue("redis_server" if kind == "redis" else "redis_cluster")
        store = RedisStore(server.url, namespace=namespace())
        advance = asyncio.sleep
    await store.open()
    try:
        yield Subject(kind, store, advance)
    finally:
        await store.close()
