"""``redis://``, ``rediss://``, ``redis+cluster://``, ``redis+sentinel://``: state shared by every replica.

Every dedup, replay-cache and outbox operation is one round trip: a Lua script run by EVALSHA
(:mod:`.redis_scripts`), all keys of an operation under one hash tag so it runs on Redis Cluster (the replay
check and the claim together, ``claim_signed``, are two there). On a single server the scripts go over
:class:`~proxy.stores.resp.RespClient`; everything else over redis-py. Dedup leases are compared on Redis'
clock; outbox due times use the ``now`` the caller passes, as the interface says. ``settle`` waits on pub/sub (:mod:`.redis_notify`), with a slow poll as a safety net.

Failures (refused, timed out, cluster down, auth, OOM…) raise :class:`StoreUnavailable` naming the URL without
its password and what to check (:mod:`.redis_target`). Durability of the outbox is Redis' own: run it with
``appendonly yes`` and ``appendfsync always`` (or ``everysec``, accepting a second of loss) if queued
redeliveries must survive a Redis crash.

``namespace`` prefixes every key and the channel, so several deployments (or tests) can share one Redis.
At most ``max_connections`` commands are in flight per store (the pool size); more callers queue for up to
``timeout`` seconds instead of failing, since redis-py's async pools raise "Too many connections" instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

from redis.asyncio import RedisCluster
from redis.commands.core import AsyncScript
from redis.typing import EncodableT

from proxy.stores.base import (
    NO_NOTE,
    Claim,
    ClaimState,
    Inspection,
    Note,
    OutboxItem,
    OutboxStats,
    Sighting,
    Store,
    StoreUnavailable,
    new_token,
)
from proxy.stores.redis_notify import SettleSubscriber
from proxy.stores.redis_scripts import Scripts
from proxy.stores.redis_target import REDIS_ERRORS, RedisConnector
from proxy.stores.resp import RespClient
from proxy.stores.url import parse_redis_url
from proxy.stores.waiters import KeyWaiters, settle_loop

CHUNK = 500  # dead letters revived / items purged per script call, so no single call blocks Redis for long


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def _text(value: str) -> str:
    """Route names and error texts as valid UTF-8 (Lua's cjson rejects lone surrogates)."""
    return value.encode("utf-8", "replace").decode("utf-8")


def _claim(raw: list[Any], token: str) -> tuple[Claim, float]:
    state, attempt = bytes(raw[0]).decode(), int(raw[1])
    if state == "new":
        return Claim(ClaimState.NEW, attempt, token=token), 0.0
    if state == "done":
        return Claim(ClaimState.DONE, attempt, reply=bytes(raw[2] or b"")), 0.0
    return Claim(ClaimState.IN_FLIGHT, attempt), int(raw[2]) / 1000


def _item(item_id: bytes, meta: bytes | None, payload: bytes | None) -> OutboxItem | None:
    if meta is None:
        return None
    m = json.loads(meta)
    return OutboxItem(
        id=item_id.decode(),
        route=m["route"],
        payload=bytes(payload or b""),
        attempts=int(m["attempts"]),
        created_at=float(m["created_at"]),
        next_at=float(m["next_at"]),
        last_error=m["last_error"],
    )


def _items(flat: list[Any]) -> list[OutboxItem]:
    found = (_item(flat[i], flat[i + 1], flat[i + 2]) for i in range(0, len(flat), 3))
    return [item for item in found if item is not None]


class RedisStore(Store):
    """State in Redis (single server, Cluster or Sentinel), shared by every wxgate replica."""

    url_scheme = "redis"

    def __init__(
        self,
        url: str,
        *,
        namespace: str = "wxgate",
        connect_timeout: float = 0.5,
        timeout: float = 1.0,
        settle_poll: float = 0.5,
        max_connections: int = 64,
    ) -> None:
        target = parse_redis_url(url)
        self._conn = RedisConnector(
            target,
            connect_timeout=connect_timeout,
            timeout=timeout,
            max_connections=max_connections,
        )
        self._client = self._conn.client()
        # One server, no query options: the scripts go over a lean pipelined connection (:mod:`.resp`, ~10 µs
        # of CPU per call against redis-py's ~65); everything else, Cluster and Sentinel stay on redis-py.
        self._resp = (
            RespClient.from_target(target, connect_timeout=connect_timeout, timeout=timeout)
            if target.kind == "redis" and not target.has_query
            else None
        )
        self._slots = asyncio.Semaphore(max_connections)
        self._max_connections = max_connections
        self._scripts = Scripts.register(self._client)
        self._ns = namespace
        self._timeout = timeout
        self._settle_poll = settle_poll
        self._outbox = [
            f"{namespace}:{{{namespace}-outbox}}:{part}"
            for part in ("due", "created", "dead", "meta", "payload")
        ]
        self._channel = f"{namespace}:settled"
        self._waiters = KeyWaiters()
        self._subscriber = SettleSubscriber(
            lambda attempt: self._conn.subscriber(self._client, attempt), self._channel, self._waiters
        )

    def __repr__(self) -> str:
        return f"RedisStore({self._conn.target.safe_url!r}, namespace={self._ns!r})"

    def _key(self, key: str, kind: str) -> str:
        return f"{self._ns}:{{{key}}}:{kind}"

    async def open(self) -> None:
        with self._conn.translate():
            if isinstance(self._client, RedisCluster):
                await self._client.initialize()
            await self._client.ping()
        self._subscriber.start()

    async def close(self) -> None:
        """Never raises for an unreachable Redis: shutdown goes on."""
        await self._subscriber.close()
        self._waiters.wake_all()
        with contextlib.suppress(*REDIS_ERRORS):
            await self._client.aclose()
        if self._resp is not None:
            await self._resp.aclose()
        await self._conn.aclose()

    async def ping(self) -> None:
        async with self._slot():
            await self._client.ping()

    @contextlib.asynccontextmanager
    async def _slot(self) -> AsyncIterator[None]:
        """A share of the connection pool for one command, with errors translated to StoreUnavailable."""
        await self._acquire()
        try:
            with self._conn.translate():
                yield
        finally:
            self._slots.release()

    async def _acquire(self) -> None:
        if not self._slots.locked():
            await self._slots.acquire()  # free: returns at once, no timer needed
            return
        try:
            async with asyncio.timeout(self._timeout):
                await self._slots.acquire()
        except TimeoutError:
            raise StoreUnavailable(
                f"redis store {self._conn.target.safe_url}: all {self._max_connections} connections stayed busy "
                f"for {self._timeout} s; check redis latency, or raise max_connections"
            ) from None

    async def _eval(self, script: AsyncScript, keys: Sequence[str], args: Sequence[EncodableT]) -> Any:
        # No context managers here: this runs on every dedup and replay-cache call, and a generator-based one
        # (translate, _slot) plus a timer for a free slot cost a fifth of what the call itself does in Python.
        if self._resp is not None:
            try:
                return await self._resp.evalsha(script.sha, script.script, keys, args)
            except REDIS_ERRORS as exc:  # RespError, RespConnectionError (an OSError)
                raise self._conn.unavailable(exc) from exc
        await self._acquire()
        try:
            with self._conn.translate():
                return await script(keys=keys, args=args)
        finally:
            self._slots.release()

    # -- dedup -----------------------------------------------------------------------------------------------
    def _aliases(self, note: Note) -> list[str]:
        """Alias keys to write in the claim script: a cluster keeps them apart (:meth:`_file_aliases`)."""
        if not note.aliases or isinstance(self._client, RedisCluster):
            return []
        return [self._key(alias, "a") for alias in note.aliases]

    async def _file_aliases(self, key: str, ttl: float, note: Note, claim: Claim) -> None:
        """On a cluster, a record's aliases (other slots) after the claim that created it. Best effort: they
        serve ``wxgate lookup`` only, so a failure here never fails the request."""
        if not note.aliases or claim.attempt != 1 or not isinstance(self._client, RedisCluster):
            return
        with contextlib.suppress(StoreUnavailable):
            async with self._slot():
                for alias in note.aliases:
                    await self._client.set(self._key(alias, "a"), key, px=_ms(ttl))

    async def claim(self, key: str, lease: float, ttl: float, note: Note = NO_NOTE) -> Claim:
        token = new_token()
        keys = [self._key(key, "d"), *self._aliases(note)]
        args: list[EncodableT] = [token, _ms(lease), _ms(ttl), note.trace_id, key]
        claim = _claim(await self._eval(self._scripts.claim, keys, args), token)[0]
        await self._file_aliases(key, ttl, note, claim)
        return claim

    async def complete(self, key: str, token: str, reply: bytes, ttl: float) -> bool:
        args: list[EncodableT] = [token, reply, _ms(ttl), self._channel, key]
        owned = await self._eval(self._scripts.complete, [self._key(key, "d")], args)
        self._waiters.wake(key)
        return bool(owned)

    async def release(self, key: str, token: str) -> None:
        await self._eval(self._scripts.release, [self._key(key, "d")], [token, self._channel, key])
        self._waiters.wake(key)

    async def settle(self, key: str, lease: float, timeout: float) -> Claim:
        token, loop = new_token(), asyncio.get_running_loop()
        deadline = loop.time() + timeout

        async def check() -> tuple[Claim, float]:
            raw = await self._eval(self._scripts.settle, [self._key(key, "d")], [token, _ms(lease)])
            return _claim(raw, token)

        with self._waiters.watch(key) as wake:
            claim, _ = await check()  # settled already, or Redis down: no waiting for the subscriber
            if claim.state is not ClaimState.IN_FLIGHT:
                return claim
            # settle_loop looks again once subscribed, so a completion in between is not missed; if the
            # subscription is slow (or refused), it polls meanwhile.
            await self._subscriber.ready(min(max(deadline - loop.time(), 0.0), self._settle_poll))
            return await settle_loop(check, wake, deadline - loop.time(), self._settle_poll)

    async def inspect(self, key: str) -> Inspection | None:
        raw = await self._eval(self._scripts.inspect, [self._key(key, "d")], [])
        if not raw:
            return None
        state, attempt, lease_until, reply, first_seen, trace, pttl, now = raw
        state = {"f": "in_flight", "r": "released", "d": "done"}.get(bytes(state).decode(), "unknown")
        return Inspection(
            state=state,
            attempt=int(attempt),
            first_seen=int(first_seen) / 1000 if first_seen else None,
            lease_until=int(lease_until) / 1000 if lease_until and state == "in_flight" else None,
            expires_at=(int(now) + int(pttl)) / 1000 if int(pttl) >= 0 else None,
            trace_id=bytes(trace).decode(),
            reply=bytes(reply) if state == "done" and reply else (b"" if state == "done" else None),
        )

    async def resolve(self, alias: str) -> str | None:
        async with self._slot():
            found = await self._client.get(self._key(alias, "a"))
        return None if found is None else found.decode() if isinstance(found, bytes) else str(found)

    # -- nonce replay cache ----------------------------------------------------------------------------------
    async def remember(self, key: str, ttl: float) -> bool:
        # Not a bare SET NX: if redis-py's retry re-sends it after the first one was applied, the token lets
        # the retry recognise its own write instead of reporting a replay (redis_scripts).
        token = new_token()
        return bool(await self._eval(self._scripts.remember, [self._key(key, "n")], [token, _ms(ttl)]))

    def _signed_keys(self, signed: str, body: str) -> list[str]:
        # One hash tag (the signed values) for both: remember_signed is one script on a cluster too.
        return [f"{self._key(signed, 'n')}:{body}", self._key(signed, "n")]

    async def remember_signed(self, signed: str, body: str, ttl: float) -> Sighting:
        token = new_token()
        keys = self._signed_keys(signed, body)
        raw = await self._eval(self._scripts.remember_signed, keys, [token, _ms(ttl)])
        return Sighting(bytes(raw).decode())

    async def claim_signed(
        self,
        signed: str,
        body: str,
        replay_ttl: float,
        key: str,
        lease: float,
        ttl: float,
        note: Note = NO_NOTE,
    ) -> tuple[Sighting, Claim | None]:
        if isinstance(self._client, RedisCluster):
            return await super().claim_signed(signed, body, replay_ttl, key, lease, ttl, note)  # two slots
        token = new_token()
        keys = [*self._signed_keys(signed, body), self._key(key, "d"), *self._aliases(note)]
        args: list[EncodableT] = [token, _ms(lease), _ms(ttl), _ms(replay_ttl), note.trace_id, key]
        raw = await self._eval(self._scripts.claim_signed, keys, args)
        sighting = Sighting(bytes(raw[0]).decode())
        return sighting, (_claim(raw[1:], token)[0] if sighting is not Sighting.FORGED else None)

    # -- outbox ----------------------------------------------------------------------------------------------
    async def _outbox_call(self, script: AsyncScript, *args: EncodableT) -> Any:
        return await self._eval(script, self._outbox, args)

    async def outbox_put(self, item: OutboxItem) -> None:
        meta = json.dumps(
            {
                "route": _text(item.route),
                "attempts": item.attempts,
                "created_at": repr(item.created_at),
                "next_at": repr(item.next_at),
                "last_error": _text(item.last_error),
            }
        )
        args = (item.id, meta, item.payload, repr(item.next_at), repr(item.created_at))
        await self._outbox_call(self._scripts.outbox_put, *args)

    async def outbox_lease(self, now: float, lease: float, limit: int) -> list[OutboxItem]:
        return _items(
            await self._outbox_call(self._scripts.outbox_lease, repr(now), repr(now + lease), limit)
        )

    async def outbox_ack(self, item_id: str) -> None:
        await self._outbox_call(self._scripts.outbox_ack, item_id)

    async def outbox_retry(self, item_id: str, next_at: float, error: str) -> None:
        await self._outbox_call(self._scripts.outbox_retry, item_id, repr(next_at), _text(error))

    async def outbox_defer(self, item_id: str, next_at: float, error: str) -> None:
        await self._outbox_call(self._scripts.outbox_defer, item_id, repr(next_at), _text(error))

    async def outbox_bury(self, item_id: str, error: str) -> None:
        await self._outbox_call(self._scripts.outbox_bury, item_id, _text(error))

    async def outbox_list(self, dead: bool, limit: int = 100) -> list[OutboxItem]:
        if limit <= 0:
            return []
        which = "dead" if dead else "queued"
        return _items(await self._outbox_call(self._scripts.outbox_list, which, limit))

    async def outbox_get(self, item_id: str) -> OutboxItem | None:
        meta, payload = await self._outbox_call(self._scripts.outbox_get, item_id)
        return _item(item_id.encode(), meta, payload)

    async def outbox_revive(self, item_id: str | None, now: float) -> int:
        return await self._chunked(self._scripts.outbox_revive, repr(now), item_id)

    async def outbox_purge(self, dead: bool, item_id: str | None = None) -> int:
        return await self._chunked(self._scripts.outbox_purge, "dead" if dead else "queued", item_id)

    async def _chunked(self, script: AsyncScript, first: str, item_id: str | None) -> int:
        """Run a one-or-all script; for all, chunk by chunk until a chunk comes back short."""
        mode, total = ("one" if item_id is not None else "all"), 0
        while True:
            done, seen = await self._outbox_call(script, first, mode, item_id or "", CHUNK)
            total += int(done)
            if mode == "one" or int(seen) < CHUNK:
                return total

    async def outbox_stats(self, now: float) -> OutboxStats:
        depth, oldest, dead = await self._outbox_call(self._scripts.outbox_stats)
        age = max(0.0, now - float(oldest)) if oldest is not None else 0.0
        return OutboxStats(depth=int(depth), oldest_age=age, dead=int(dead))
