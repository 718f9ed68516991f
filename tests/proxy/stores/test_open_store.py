"""``open_store``: the store URL in ``proxy.yaml`` picks the implementation."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.stores import RedisStore, SqliteStore, open_store
from tests.proxy.stores.conftest import FakeClock
from tests.support.redis_servers import RedisServer


async def test_sqlite_file_url_opens_that_file(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = open_store(f"sqlite://{path}")
    assert isinstance(store, SqliteStore)
    async with store:
        assert await store.remember("n", 60) is True
    assert path.exists()


async def test_sqlite_memory_url_passes_keyword_arguments_through() -> None:
    clock = FakeClock()
    async with open_store("sqlite://:memory:", clock=clock) as store:
        assert isinstance(store, SqliteStore)
        assert await store.remember("n", 60) is True
        clock.advance(61)
        assert await store.remember("n", 60) is True  # expired by the injected clock, not wall time


async def test_redis_url_builds_a_redis_store(redis_server: RedisServer) -> None:
    async with open_store(redis_server.url, namespace="factory") as store:
        assert isinstance(store, RedisStore)
        assert await store.remember("n", 60) is True
        assert await store.remember("n", 60) is False


@pytest.mark.parametrize(
    "url",
    ["rediss://cache:6380/0", "redis+cluster://a:7000,b:7001", "redis+sentinel://s1:26379,s2:26379/mymaster"],
)
def test_every_redis_scheme_builds_a_redis_store_without_connecting(url: str) -> None:
    assert isinstance(open_store(url), RedisStore)


def test_a_relative_sqlite_path_explains_the_three_slashes() -> None:
    with pytest.raises(ValueError, match="three slashes"):
        open_store("sqlite://state.db")


@pytest.mark.parametrize("url", ["mysql://app:hunter2@db/wx", "app:hunter2@db"])
def test_an_unknown_scheme_lists_the_accepted_ones_without_echoing_secrets(url: str) -> None:
    with pytest.raises(ValueError, match=r"redis\+cluster://") as error:
        open_store(url)
    assert "hunter2" not in str(error.value)


def test_redis_query_options_are_checked_when_the_store_is_built() -> None:
    assert isinstance(open_store("redis://:hunter2@127.0.0.1:6379/0?socket_timeout=2"), RedisStore)
    for url in ("redis://:hunter2@127.0.0.1:6379/0?socket_timeout=soon", "redis://:hunter2@h:6379/0?bogus=1"):
        with pytest.raises(ValueError, match=r"^redis:// store URL is not usable") as error:
            open_store(url)
        assert "hunter2" not in str(error.value)
