"""SQL for :class:`~proxy.stores.sqlite.SqliteStore`: schema and one function per store operation.

Every function runs on the store's worker thread inside a transaction the worker opened, takes ``now``
from the caller (the store's injectable clock) and touches nothing but the connection. Expired rows are
treated as absent when read and deleted in bulk by :func:`purge_expired`, which the worker runs
periodically. Dedup states: ``f`` in flight, ``r`` released, ``d`` done (the state machine is in
``base.py``). A record lives ``ttl`` seconds after its last write, an in-flight one at least until its
lease ends. ``first_seen`` and ``trace`` are written when a record is created (and kept by later writes);
``alias`` maps a lookup alias to its key (:class:`~proxy.stores.base.Note`). Schema version 2 added them;
a version 1 database is migrated in place when the store opens.
"""

from __future__ import annotations

import contextlib
import sqlite3

from proxy.stores.base import Claim, ClaimState, Inspection, Note, OutboxItem, OutboxStats, Sighting

SCHEMA_VERSION = 2
SCHEMA = """
CREATE TABLE IF NOT EXISTS dedup (
    key TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    owner TEXT,
    lease_until REAL NOT NULL DEFAULT 0,
    ttl REAL NOT NULL,
    expires_at REAL NOT NULL,
    reply BLOB,
    first_seen REAL,
    trace TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS dedup_expires ON dedup (expires_at);
CREATE TABLE IF NOT EXISTS alias (alias TEXT PRIMARY KEY, key TEXT NOT NULL, expires_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS alias_expires ON alias (expires_at);
CREATE TABLE IF NOT EXISTS nonce (key TEXT PRIMARY KEY, expires_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS nonce_expires ON nonce (expires_at);
CREATE TABLE IF NOT EXISTS outbox (
    id TEXT PRIMARY KEY,
    route TEXT NOT NULL,
    payload BLOB NOT NULL,
    attempts INTEGER NOT NULL,
    created_at REAL NOT NULL,
    next_at REAL NOT NULL,
    due_at REAL NOT NULL,
    last_error TEXT NOT NULL,
    dead INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (dead, due_at);
CREATE INDEX IF NOT EXISTS outbox_created ON outbox (dead, created_at);
"""
_ITEM = "id, route, payload, attempts, created_at, next_at, last_error"
# state, attempt, owner, lease_until, ttl, reply
_Record = tuple[str, int, str | None, float, float, bytes | None]


def create_schema(conn: sqlite3.Connection) -> None:
    """Create or migrate the tables under a write lock taken up front: processes sharing the file (workers)
    start together, and a read that later upgrades to a write fails at once with "database is locked"
    instead of waiting; inside the lock the version read is the one this write changes (no double migration)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise sqlite3.DatabaseError(
                f"schema version {version} was written by a newer wxgate; upgrade wxgate"
            )
        # Version 1 had no first_seen/trace: its rows keep working, shown with those unknown.
        if version == 1:
            conn.execute("ALTER TABLE dedup ADD COLUMN first_seen REAL")
            conn.execute("ALTER TABLE dedup ADD COLUMN trace TEXT NOT NULL DEFAULT ''")
        for statement in SCHEMA.split(";"):
            if statement.strip():
                conn.execute(statement)
        if version != SCHEMA_VERSION:
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise


def purge_expired(conn: sqlite3.Connection, now: float, limit: int) -> int:
    """Delete up to ``limit`` expired dedup and nonce rows each; the count tells the caller to come back."""
    deleted = 0
    for table in ("dedup", "nonce", "alias"):
        cur = conn.execute(
            f"DELETE FROM {table} WHERE rowid IN (SELECT rowid FROM {table} WHERE expires_at <= ? LIMIT ?)",  # noqa: S608
            (now, limit),
        )
        deleted += cur.rowcount
    return deleted


# -- dedup ---------------------------------------------------------------------------------------------------
def _live(conn: sqlite3.Connection, key: str, now: float) -> _Record | None:
    row = conn.execute(
        "SELECT state, attempt, owner, lease_until, ttl, reply FROM dedup WHERE key = ? AND expires_at > ?",
        (key, now),
    ).fetchone()
    return None if row is None else (row[0], row[1], row[2], row[3], row[4], row[5])


def _own(
    conn: sqlite3.Connection, key: str, *, attempt: int, token: str, now: float, lease: float, ttl: float
) -> None:
    """Take the claim of a live record (first_seen and trace stay)."""
    conn.execute(
        "UPDATE dedup SET state = 'f', attempt = ?, owner = ?, lease_until = ?, ttl = ?, expires_at = ?,"
        " reply = NULL WHERE key = ?",
        (attempt, token, now + lease, ttl, now + max(ttl, lease), key),
    )


def _create(
    conn: sqlite3.Connection,
    key: str,
    state: str,
    owner: str | None,
    lease_until: float,
    ttl: float,
    expires_at: float,
    reply: bytes | None,
    *,
    now: float,
    note: Note,
) -> None:
    """A new record with attempt 1 (replacing an expired row not purged yet), filed under its aliases."""
    conn.execute(
        "INSERT OR REPLACE INTO dedup"
        " (key, state, attempt, owner, lease_until, ttl, expires_at, reply, first_seen, trace)"
        " VALUES (?, ?, 1, ?, ?, ?, ?, ?, ?, ?)",
        (key, state, owner, lease_until, ttl, expires_at, reply, now, note.trace_id),
    )
    if note.aliases:
        conn.executemany(
            "INSERT OR REPLACE INTO alias (alias, key, expires_at) VALUES (?, ?, ?)",
            [(alias, key, now + ttl) for alias in note.aliases],
        )


def claim(
    conn: sqlite3.Connection,
    key: str,
    *,
    token: str,
    lease: float,
    ttl: float,
    now: float,
    note: Note,
) -> Claim:
    rec = _live(conn, key, now)
    if rec is None:
        _create(conn, key, "f", token, now + lease, ttl, now + max(ttl, lease), None, now=now, note=note)
        return Claim(ClaimState.NEW, 1, token=token)
    state, attempt, _, lease_until, _, reply = rec
    attempt += 1
    if state == "d":
        conn.execute(
            "UPDATE dedup SET attempt = ?, ttl = ?, expires_at = ? WHERE key = ?",
            (attempt, ttl, now + ttl, key),
        )
        return Claim(ClaimState.DONE, attempt, reply=bytes(reply or b""))
    if state == "f" and lease_until > now:
        conn.execute(
            "UPDATE dedup SET attempt = ?, ttl = ?, expires_at = max(lease_until, ?) WHERE key = ?",
            (attempt, ttl, now + ttl, key),
        )
        return Claim(ClaimState.IN_FLIGHT, attempt)
    _own(conn, key, attempt=attempt, token=token, now=now, lease=lease, ttl=ttl)
    return Claim(ClaimState.NEW, attempt, token=token)


def complete(conn: sqlite3.Connection, key: str, *, token: str, reply: bytes, ttl: float, now: float) -> bool:
    rec = _live(conn, key, now)
    if rec is not None and rec[0] == "d":
        return False
    if rec is None:
        _create(conn, key, "d", None, 0.0, ttl, now + ttl, reply, now=now, note=Note())
        return False
    conn.execute(
        "UPDATE dedup SET state = 'd', owner = NULL, lease_until = 0, ttl = ?, expires_at = ?, reply = ?"
        " WHERE key = ?",
        (ttl, now + ttl, reply, key),
    )
    return rec[0] == "f" and rec[2] == token


def release(conn: sqlite3.Connection, key: str, token: str, now: float) -> bool:
    cur = conn.execute(
        "UPDATE dedup SET state = 'r', owner = NULL, lease_until = 0, expires_at = ? + ttl"
        " WHERE key = ? AND state = 'f' AND owner = ? AND expires_at > ?",
        (now, key, token, now),
    )
    return cur.rowcount > 0


def settle_check(
    conn: sqlite3.Connection, key: str, *, token: str, lease: float, now: float
) -> tuple[Claim, float]:
    """One look for ``settle``: DONE, a takeover (NEW, attempt unchanged), or IN_FLIGHT and its lease left."""
    rec = _live(conn, key, now)
    if rec is None:
        _create(conn, key, "f", token, now + lease, lease, now + lease, None, now=now, note=Note())
        return Claim(ClaimState.NEW, 1, token=token), 0.0
    state, attempt, _, lease_until, ttl, reply = rec
    if state == "d":
        return Claim(ClaimState.DONE, attempt, reply=bytes(reply or b"")), 0.0
    if state == "f" and lease_until > now:
        return Claim(ClaimState.IN_FLIGHT, attempt), lease_until - now
    _own(conn, key, attempt=attempt, token=token, now=now, lease=lease, ttl=ttl)
    return Claim(ClaimState.NEW, attempt, token=token), 0.0


_STATES = {"f": "in_flight", "r": "released", "d": "done"}


def inspect(conn: sqlite3.Connection, key: str, now: float) -> Inspection | None:
    row = conn.execute(
        "SELECT state, attempt, lease_until, expires_at, reply, first_seen, trace FROM dedup"
        " WHERE key = ? AND expires_at > ?",
        (key, now),
    ).fetchone()
    if row is None:
        return None
    state, attempt, lease_until, expires_at, reply, first_seen, trace = row
    return Inspection(
        state=_STATES.get(state, state),
        attempt=attempt,
        first_seen=first_seen,
        lease_until=lease_until if state == "f" else None,
        expires_at=expires_at,
        trace_id=trace or "",
        reply=bytes(reply) if state == "d" and reply is not None else None,
    )


def resolve(conn: sqlite3.Connection, alias: str, now: float) -> str | None:
    row = conn.execute("SELECT key FROM alias WHERE alias = ? AND expires_at > ?", (alias, now)).fetchone()
    return None if row is None else str(row[0])


def remember(conn: sqlite3.Connection, key: str, ttl: float, now: float) -> bool:
    cur = conn.execute(
        "INSERT INTO nonce (key, expires_at) VALUES (?, ?)"
        " ON CONFLICT (key) DO UPDATE SET expires_at = excluded.expires_at WHERE nonce.expires_at <= ?",
        (key, now + ttl, now),
    )
    return cur.rowcount > 0


def _seen(conn: sqlite3.Connection, key: str, now: float) -> bool:
    return (
        conn.execute("SELECT 1 FROM nonce WHERE key = ? AND expires_at > ?", (key, now)).fetchone()
        is not None
    )


def remember_signed(conn: sqlite3.Connection, signed: str, body: str, ttl: float, now: float) -> Sighting:
    """:meth:`Store.remember_signed` in one transaction (the worker thread runs one at a time)."""
    with_body = f"{signed}:{body}"
    if _seen(conn, with_body, now):
        return Sighting.REPEAT
    if _seen(conn, signed, now):
        return Sighting.FORGED  # nothing remembered: the same forgery again is refused again
    remember(conn, with_body, ttl, now)
    remember(conn, signed, ttl, now)
    return Sighting.NEW


def claim_signed(
    conn: sqlite3.Connection,
    signed: str,
    body: str,
    replay_ttl: float,
    key: str,
    *,
    token: str,
    lease: float,
    ttl: float,
    now: float,
    note: Note,
) -> tuple[Sighting, Claim | None]:
    """:meth:`Store.claim_signed` in one transaction: one trip to the worker thread instead of two."""
    sighting = remember_signed(conn, signed, body, replay_ttl, now)
    if sighting is Sighting.FORGED:
        return sighting, None
    return sighting, claim(conn, key, token=token, lease=lease, ttl=ttl, now=now, note=note)


# -- outbox --------------------------------------------------------------------------------------------------
def _item(row: tuple[str, str, bytes, int, float, float, str]) -> OutboxItem:
    return OutboxItem(row[0], row[1], bytes(row[2]), row[3], row[4], row[5], row[6])


def outbox_put(conn: sqlite3.Connection, item: OutboxItem) -> None:
    conn.execute(
        "INSERT OR REPLACE INTO outbox"
        " (id, route, payload, attempts, created_at, next_at, due_at, last_error, dead)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0)",
        (
            item.id,
            item.route,
            item.payload,
            item.attempts,
            item.created_at,
            item.next_at,
            item.next_at,
            item.last_error,
        ),
    )


def outbox_lease(conn: sqlite3.Connection, now: float, lease: float, limit: int) -> list[OutboxItem]:
    rows = conn.execute(
        f"SELECT {_ITEM} FROM outbox WHERE dead = 0 AND due_at <= ? ORDER BY due_at, id LIMIT ?",  # noqa: S608
        (now, limit),
    ).fetchall()
    conn.executemany("UPDATE outbox SET due_at = ? WHERE id = ?", [(now + lease, r[0]) for r in rows])
    return [_item(r) for r in rows]


def outbox_ack(conn: sqlite3.Connection, item_id: str) -> None:
    conn.execute("DELETE FROM outbox WHERE id = ?", (item_id,))


def outbox_retry(conn: sqlite3.Connection, item_id: str, next_at: float, error: str) -> None:
    conn.execute(
        "UPDATE outbox SET attempts = attempts + 1, next_at = ?, due_at = ?, last_error = ?"
        " WHERE id = ? AND dead = 0",
        (next_at, next_at, error, item_id),
    )


def outbox_defer(conn: sqlite3.Connection, item_id: str, next_at: float, error: str) -> None:
    conn.execute(
        "UPDATE outbox SET next_at = ?, due_at = ?, last_error = ? WHERE id = ? AND dead = 0",
        (next_at, next_at, error, item_id),
    )


def outbox_bury(conn: sqlite3.Connection, item_id: str, error: str) -> None:
    conn.execute("UPDATE outbox SET dead = 1, last_error = ? WHERE id = ? AND dead = 0", (error, item_id))


def outbox_list(conn: sqlite3.Connection, dead: bool, limit: int) -> list[OutboxItem]:
    order = "created_at" if dead else "due_at"
    rows = conn.execute(
        f"SELECT {_ITEM} FROM outbox WHERE dead = ? ORDER BY {order}, id LIMIT ?",  # noqa: S608
        (int(dead), limit),
    ).fetchall()
    return [_item(r) for r in rows]


def outbox_get(conn: sqlite3.Connection, item_id: str) -> OutboxItem | None:
    row = conn.execute(f"SELECT {_ITEM} FROM outbox WHERE id = ?", (item_id,)).fetchone()  # noqa: S608
    return None if row is None else _item(row)


def outbox_revive(conn: sqlite3.Connection, item_id: str | None, now: float) -> int:
    sql = "UPDATE outbox SET dead = 0, attempts = 0, created_at = ?, next_at = ?, due_at = ? WHERE dead = 1"
    args: tuple[object, ...] = (now, now, now)
    if item_id is not None:
        sql, args = sql + " AND id = ?", (*args, item_id)
    return conn.execute(sql, args).rowcount


def outbox_purge(conn: sqlite3.Connection, dead: bool, item_id: str | None) -> int:
    sql, args = "DELETE FROM outbox WHERE dead = ?", (int(dead),)
    if item_id is not None:
        return conn.execute(sql + " AND id = ?", (*args, item_id)).rowcount
    return conn.execute(sql, args).rowcount


def outbox_stats(conn: sqlite3.Connection, now: float) -> OutboxStats:
    depth, oldest = conn.execute("SELECT count(*), min(created_at) FROM outbox WHERE dead = 0").fetchone()
    dead = conn.execute("SELECT count(*) FROM outbox WHERE dead = 1").fetchone()[0]
    age = max(0.0, now - oldest) if oldest is not None else 0.0
    return OutboxStats(depth=depth, oldest_age=age, dead=dead)
