"""SqliteStore beyond the contract: durability, staying off the event loop, purging, errors."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from proxy.stores import ClaimState, OutboxItem, OutboxStats, SqliteStore, StoreUnavailable
from tests.proxy.stores.conftest import FakeClock

NOW = 1_700_000_000.0
REPLY = b"<xml><Content>\xe4\xbd\xa0\xe5\xa5\xbd</Content></xml>"


def rows(path: Path, table: str) -> int:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


async def test_records_and_outbox_survive_close_and_reopen(tmp_path: Path) -> None:
    path = str(tmp_path / "state.db")
    queued = OutboxItem("q", "mp", b"\x00queued", 3, NOW - 60, NOW + 5, "HTTP 502")
    async with SqliteStore(path) as store:
        first = await store.claim("msg-1", 10, 600)
        await store.complete("msg-1", first.token or "", REPLY, 600)
        await store.remember("nonce-1", 600)
        await store.outbox_put(queued)
        await store.outbox_put(OutboxItem("d", "mp", b"dead", 8, NOW - 90, NOW))
        await store.outbox_bury("d", "exhausted")
    async with SqliteStore(path) as store:
        again = await store.claim("msg-1", 10, 600)
        assert (again.state, again.attempt, again.reply) == (ClaimState.DONE, 2, REPLY)
        assert await store.remember("nonce-1", 600) is False
        assert await store.outbox_get("q") == queued
        assert [(i.id, i.last_error) for i in await store.outbox_list(dead=True)] == [("d", "exhausted")]
        assert await store.outbox_stats(NOW) == OutboxStats(depth=1, oldest_age=60.0, dead=1)


async def test_an_outbox_put_survives_kill_9_once_it_returned(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    script = textwrap.dedent(
        f"""
        import asyncio, sys
        from proxy.stores import OutboxItem, SqliteStore
        async def main():
            store = SqliteStore({str(path)!r})
            await store.open()
            await store.outbox_put(OutboxItem("crash", "mp", b"payload\\x00", 0, 1.0, 2.0))
            print("put", flush=True)
            await asyncio.sleep(60)
        asyncio.run(main())
        """
    )
    with subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, cwd=os.getcwd()) as child:
        try:
            assert child.stdout is not None
            assert child.stdout.readline() == b"put\n"
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait()
    async with SqliteStore(str(path)) as store:
        assert await store.outbox_get("crash") == OutboxItem("crash", "mp", b"payload\x00", 0, 1.0, 2.0)


async def test_claims_never_block_the_event_loop(tmp_path: Path) -> None:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    async with SqliteStore(str(tmp_path / "state.db")) as store:
        task = asyncio.create_task(ticker())
        await asyncio.sleep(0)
        before = ticks
        for n in range(500):
            await store.claim(f"k{n}", 10, 600)
        during = ticks - before
        task.cancel()
    # Each claim waits on the worker thread, so the loop runs the ticker at least once per claim;
    # a store doing its SQL on the loop would never yield and the ticker would not move.
    assert during >= 500


async def test_settle_is_woken_in_process_not_by_the_poll(tmp_path: Path) -> None:
    async with SqliteStore(str(tmp_path / "state.db"), settle_poll=30.0) as store:
        first = await store.claim("k", 10, 600)
        started = time.monotonic()

        async def finish() -> None:
            await asyncio.sleep(0.05)
            await store.complete("k", first.token or "", REPLY, 600)

        settled, _ = await asyncio.gather(store.settle("k", 10, 10.0), finish())
        assert time.monotonic() - started < 1.0  # the poll (30 s) could not have done it
        assert (settled.state, settled.reply) == (ClaimState.DONE, REPLY)


async def test_settle_polls_for_writes_by_another_process(tmp_path: Path) -> None:
    path = str(tmp_path / "state.db")
    async with SqliteStore(path, settle_poll=0.1) as waiter, SqliteStore(path) as other:
        first = await other.claim("k", 10, 600)
        settled, _ = await asyncio.gather(
            waiter.settle("k", 10, 5.0), other.complete("k", first.token or "", REPLY, 600)
        )
        assert (settled.state, settled.reply) == (ClaimState.DONE, REPLY)


async def test_expired_rows_are_purged_so_the_file_stops_growing(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    clock = FakeClock()
    async with SqliteStore(str(path), clock=clock, purge_interval=60) as store:
        for n in range(100):
            claim = await store.claim(f"k{n}", 5, 30)
            await store.complete(f"k{n}", claim.token or "", REPLY, 30)
            await store.remember(f"n{n}", 30)
        assert (rows(path, "dedup"), rows(path, "nonce")) == (100, 100)
        clock.advance(59)
        await store.claim("fresh", 5, 30)
        assert rows(path, "dedup") == 101  # expired but not yet purged: the interval has not passed
        clock.advance(2)
        await store.remember("fresh", 30)
        assert (rows(path, "dedup"), rows(path, "nonce")) == (1, 1)


async def test_an_unwritable_path_fails_open_with_a_hint(tmp_path: Path) -> None:
    (tmp_path / "not-a-dir").write_text("a file where the state directory should be")
    store = SqliteStore(str(tmp_path / "not-a-dir" / "state.db"))
    with pytest.raises(StoreUnavailable, match=r"not-a-dir/state\.db.*directory exists"):
        await store.open()


async def test_a_closed_store_refuses_calls(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "state.db"))
    await store.open()
    await store.close()
    with pytest.raises(StoreUnavailable, match="not open"):
        await store.claim("k", 10, 600)


def test_a_relative_path_is_rejected() -> None:
    with pytest.raises(ValueError, match="absolute"):
        SqliteStore("state.db")


async def test_missing_state_directory_is_created(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "fresh" / "volume" / "state.db"))
    await store.open()
    try:
        assert await store.remember("k", 60)
    finally:
        await store.close()
    assert (tmp_path / "fresh" / "volume" / "state.db").exists()


V1_DEDUP = """
CREATE TABLE dedup (key TEXT PRIMARY KEY, state TEXT NOT NULL, attempt INTEGER NOT NULL, owner TEXT,
    lease_until REAL NOT NULL DEFAULT 0, ttl REAL NOT NULL, expires_at REAL NOT NULL, reply BLOB);
INSERT INTO dedup VALUES ('r:old', 'd', 2, NULL, 0, 600, 1700000600, x'6f6b');
PRAGMA user_version = 1;
"""


async def test_a_version_1_database_is_migrated_and_keeps_its_records(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.executescript(V1_DEDUP)
    async with SqliteStore(str(path), clock=FakeClock(NOW)) as store:
        old = await store.inspect("r:old")
        assert old is not None and (old.state, old.attempt, old.reply) == ("done", 2, b"ok")
        assert (old.first_seen, old.trace_id) == (None, "")  # not recorded before version 2
        again = await store.claim("r:old", 10, 600)
        assert (again.state, again.reply) == (ClaimState.DONE, b"ok")
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 2


OPEN_TOGETHER = """
import asyncio, sys, time
from proxy.stores import SqliteStore
path, start, name = sys.argv[1], float(sys.argv[2]), sys.argv[3]
async def main():
    time.sleep(max(0.0, start - time.time()))
    async with SqliteStore(path) as store:
        claim = await store.claim("msg-" + name, 10, 600)
        await store.complete("msg-" + name, claim.token or "", b"ok", 600)
    print("ok", flush=True)
asyncio.run(main())
"""


@pytest.mark.parametrize("existing", ["fresh", "version-1"])
def test_processes_opening_one_file_at_once_all_open_it(tmp_path: Path, existing: str) -> None:
    """Workers sharing one file start together: none may fail with "database is locked" (nor migrate twice)."""
    path = tmp_path / "state.db"
    if existing == "version-1":
        with contextlib.closing(sqlite3.connect(path)) as conn:
            conn.executescript(V1_DEDUP)
    count, rounds = 8, 2 if existing == "fresh" else 1
    for round_ in range(rounds):
        start = time.time() + 1.0
        children = [
            subprocess.Popen(
                [sys.executable, "-c", OPEN_TOGETHER, str(path), str(start), f"{round_}-{i}"],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=os.getcwd(),
            )
            for i in range(count)
        ]
        results = [child.communicate(timeout=60) for child in children]
        failures = [err.decode() for (out, err) in results if out != b"ok\n"]
        assert failures == []
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 2
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        done = conn.execute("SELECT count(*) FROM dedup WHERE state = 'd'").fetchone()[0]
    assert done == rounds * count + (1 if existing == "version-1" else 0)


async def test_a_file_locked_past_the_busy_timeout_is_opened_once_released(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lock held longer than one statement waits (a backup, another process's migration) delays the open;
    it does not fail it while the open timeout lasts."""
    from proxy.stores import sqlite_worker

    monkeypatch.setattr(sqlite_worker, "_BUSY_TIMEOUT", 0.05)
    path = tmp_path / "state.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    loop = asyncio.get_running_loop()
    loop.call_later(0.6, holder.execute, "COMMIT")
    started = time.monotonic()
    try:
        async with SqliteStore(str(path)) as store:
            assert time.monotonic() - started >= 0.5
            assert (await store.claim("m", 10, 600)).state is ClaimState.NEW
    finally:
        holder.close()
    monkeypatch.setattr(sqlite_worker, "_OPEN_TIMEOUT", 0.3)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(StoreUnavailable, match=r"locked.*another process kept it locked"):
            await SqliteStore(str(path)).open()
    finally:
        holder.close()
