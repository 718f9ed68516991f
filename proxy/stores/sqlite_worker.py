"""The one thread that owns a SQLite connection, so no store call ever blocks the event loop.

Callers submit operations (functions of the connection) from the loop; the thread takes whatever is
queued, up to ``max_batch`` operations, runs them in one ``BEGIN IMMEDIATE … COMMIT`` and hands each result
back to its caller's loop. Under load this is group commit: 32 concurrent claims cost one commit, not 32.
If a batch fails, its operations are re-run one per transaction so only the failing one reports an error.

Durability: WAL with ``synchronous=NORMAL`` for dedup and nonce writes (a commit survives a crash of this
process, since the WAL is written before COMMIT returns; a power cut may lose the last few, which costs at
most a duplicate forward), switched to ``synchronous=FULL`` for any batch holding an outbox write, whose
COMMIT then returns only after fsync.

Expired dedup and nonce rows are deleted every ``purge_interval`` seconds of the store clock, before a batch,
in chunks, so the file stops growing once the TTLs are reached.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from proxy.stores import sqlite_ops
from proxy.stores.base import StoreUnavailable

PURGE_CHUNK = 2000
_BUSY_TIMEOUT = 5.0  # seconds one statement waits for another process's lock
_OPEN_TIMEOUT = 15.0  # seconds to keep trying a file other processes hold locked while it opens


def _busy(exc: sqlite3.OperationalError) -> bool:
    """SQLITE_BUSY or SQLITE_LOCKED, extended codes (``SQLITE_BUSY_RECOVERY``…) included."""
    return exc.sqlite_errorcode & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


@dataclass(slots=True)
class _Job:
    fn: Callable[[sqlite3.Connection], Any]
    durable: bool
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop


def _resolve(future: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    if future.done():  # the caller was cancelled; its result has nowhere to go
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)


class SqliteWorker:
    """A dedicated thread with a job queue, owning one ``sqlite3.Connection`` for its whole life."""

    def __init__(
        self, path: str, *, clock: Callable[[], float], purge_interval: float, max_batch: int = 64
    ) -> None:
        self.path = path
        self._clock = clock
        self._purge_interval = purge_interval
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._stopped: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread: threading.Thread | None = None
        self._closing = False
        self._synchronous = ""
        self._last_purge = clock()

    async def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._main, name="wxgate-sqlite", daemon=True)
            self._thread.start()
        await asyncio.wrap_future(self._ready)

    async def stop(self) -> None:
        """Finish what is queued, close the connection, end the thread."""
        if self._thread is None or self._closing:
            return
        self._closing = True
        self._queue.put(None)
        await asyncio.wrap_future(self._stopped)

    async def run[T](self, fn: Callable[[sqlite3.Connection], T], *, durable: bool = False) -> T:
        if self._thread is None or self._closing or self._stopped.done():
            raise StoreUnavailable(f"sqlite store {self.path} is not open; open() it first, or it was closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queue.put(_Job(fn, durable, future, loop))
        return await future

    # -- the worker thread -----------------------------------------------------------------------------------
    def _describe(self, exc: BaseException) -> BaseException:
        if isinstance(exc, sqlite3.Error):
            return StoreUnavailable(
                f"sqlite store {self.path} failed ({exc}); check that the file and its directory are "
                "writable by wxgate and that the disk has free space"
            )
        return exc

    def _connect(self) -> sqlite3.Connection:
        if self.path != ":memory:":
            # A fresh machine or volume has no state directory yet; if it cannot be made, connect() says why.
            with contextlib.suppress(OSError):
                os.makedirs(os.path.dirname(self.path), exist_ok=True)
        # Workers sharing the file open it together: the busy timeout covers most waits, but a few lock
        # transitions (switching a fresh file to WAL, WAL recovery) answer "locked" without waiting, so those
        # are tried again for a bounded time.
        deadline = time.monotonic() + _OPEN_TIMEOUT
        while True:
            conn = sqlite3.connect(self.path, isolation_level=None, timeout=_BUSY_TIMEOUT)
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                self._synchronous = ""
                self._set_synchronous(conn, durable=False)
                sqlite_ops.create_schema(conn)
            except sqlite3.OperationalError as exc:
                conn.close()
                if not _busy(exc) or time.monotonic() >= deadline:
                    raise
                time.sleep(0.05)
                continue
            except BaseException:
                conn.close()
                raise
            return conn

    def _main(self) -> None:
        try:
            conn = self._connect()
        except (sqlite3.Error, OSError) as exc:
            hint = (
                f"another process kept it locked for {_OPEN_TIMEOUT:.0f} s (a backup, or a process that is "
                "not one of this sidecar's workers); stop it or give this sidecar its own file"
                if isinstance(exc, sqlite3.OperationalError) and _busy(exc)
                else "check that the directory exists and is writable by wxgate, or use sqlite://:memory: for "
                "an ephemeral store"
            )
            self._ready.set_exception(
                StoreUnavailable(f"cannot open sqlite store {self.path} ({exc}); {hint}")
            )
            self._stopped.set_result(None)
            return
        self._ready.set_result(None)
        try:
            self._serve(conn)
        finally:
            conn.close()
            self._stopped.set_result(None)

    def _serve(self, conn: sqlite3.Connection) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            batch = [job]
            stop = False
            while len(batch) < self._max_batch:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                batch.append(nxt)
            self._maybe_purge(conn)
            self._run_batch(conn, batch)
            if stop:
                return

    def _set_synchronous(self, conn: sqlite3.Connection, durable: bool) -> None:
        level = "FULL" if durable else "NORMAL"
        if level != self._synchronous:
            conn.execute(f"PRAGMA synchronous={level}")
            self._synchronous = level

    def _run_batch(self, conn: sqlite3.Connection, batch: list[_Job]) -> None:
        # Everything that can raise is inside the try: an error must reach the callers, never end the thread
        # (which would leave every later call waiting forever).
        try:
            self._set_synchronous(conn, durable=any(job.durable for job in batch))
            conn.execute("BEGIN IMMEDIATE")
            results = [job.fn(conn) for job in batch]
            conn.execute("COMMIT")
        except Exception as exc:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            if len(batch) > 1:
                for job in batch:
                    self._run_batch(conn, [job])
            else:
                self._deliver(batch[0], None, self._describe(exc))
            return
        for job, result in zip(batch, results, strict=True):
            self._deliver(job, result, None)

    def _deliver(self, job: _Job, result: Any, exc: BaseException | None) -> None:
        with contextlib.suppress(RuntimeError):  # the caller's loop is already closed
            job.loop.call_soon_threadsafe(_resolve, job.future, result, exc)

    def _maybe_purge(self, conn: sqlite3.Connection) -> None:
        """Best effort: a failed purge is retried before the next batch and never fails a caller."""
        try:
            now = self._clock()
            if now - self._last_purge < self._purge_interval:
                return
            self._set_synchronous(conn, durable=False)
            conn.execute("BEGIN IMMEDIATE")
            deleted = sqlite_ops.purge_expired(conn, now, PURGE_CHUNK)
            conn.execute("COMMIT")
        except Exception:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            return
        if deleted < PURGE_CHUNK:  # otherwise come back before the next batch for the rest
            self._last_purge = now
