"""The state store interface: dedup records, the nonce replay cache, the outbox and its dead letters.

Every implementation (``sqlite``, ``redis``, ``redis+cluster``, ``redis+sentinel``) passes the same contract
suite in ``tests/proxy/stores/test_contract.py``. All methods are coroutines and must never block the event
loop. An unreachable backend raises :class:`StoreUnavailable`; callers apply the route's ``store_down`` policy.

Dedup state machine for one key (``attempt`` counts deliveries of the key seen by ``claim``):

    (absent) --claim--> IN_FLIGHT(owner, lease)   -> Claim(NEW, attempt=1, token)
    IN_FLIGHT, lease live   --claim--> unchanged  -> Claim(IN_FLIGHT, attempt+1)
    IN_FLIGHT, lease expired, or RELEASED
                            --claim--> IN_FLIGHT(new owner) -> Claim(NEW, attempt+1, token)
    DONE(reply)             --claim-->  unchanged -> Claim(DONE, attempt+1, reply)
    IN_FLIGHT(owner) --complete(token)--> DONE(reply) for ``ttl``
    IN_FLIGHT(owner) --release(token)-->  RELEASED (keeps the attempt count)
    ``settle`` waits (without polling storms) until an IN_FLIGHT key leaves that state, then takes it over if it
    was released or its lease expired (NEW, same attempt number, new token) or returns DONE(reply); on timeout it
    returns IN_FLIGHT. ``settle`` never increments ``attempt``.

Records expire ``ttl`` seconds after their last write, whatever their state.

For ``wxgate lookup`` a record also keeps when it was first seen and the trace id of its first sighting, and a
first claim (``note``) files it under its lookup aliases (the hashed ids an operator has: ``MsgId``,
``out_trade_no``, …), each kept ``ttl`` after that claim: :meth:`Store.resolve` and :meth:`Store.inspect`.
"""

from __future__ import annotations

import abc
import enum
import itertools
import secrets
from dataclasses import dataclass
from types import TracebackType
from typing import Self

_TOKEN_PREFIX = secrets.token_hex(8)
_token_serial = itertools.count(1)


def new_token() -> str:
    """An owner token for a claim or a replay-cache write: unique across replicas (a random prefix per
    process) and calls (a counter), without a system call each. Tokens tell a store who holds a key; they
    are never shown to senders or backends, so they need to be unique, not unguessable."""
    return f"{_TOKEN_PREFIX}{next(_token_serial):x}"


class StoreUnavailable(Exception):
    """The store could not be reached or answered with an error; the message says what to check."""


class ClaimState(enum.Enum):
    NEW = "new"
    IN_FLIGHT = "in_flight"
    DONE = "done"


class Sighting(enum.Enum):
    """What the replay cache knew of a signed request (:meth:`Store.remember_signed`)."""

    NEW = "new"  # first sighting of these signed values: remembered, with this body
    REPEAT = "repeat"  # the same signed values with the same body: what a sender retry looks like
    FORGED = "forged"  # the same signed values with another body: a replay built from a captured request


@dataclass(frozen=True, slots=True)
class Claim:
    state: ClaimState
    attempt: int
    token: str | None = None  # NEW only: proves ownership to complete/release
    reply: bytes | None = None  # DONE only: the cached reply blob


@dataclass(frozen=True, slots=True)
class Note:
    """What a first claim files for ``wxgate lookup``: its trace id and the aliases it can be found by."""

    trace_id: str = ""
    aliases: tuple[str, ...] = ()


NO_NOTE = Note()


@dataclass(frozen=True, slots=True)
class Inspection:
    """A dedup record as :meth:`Store.inspect` reads it (times in Unix seconds, ``None`` where unknown)."""

    state: str  # "in_flight", "released" or "done"
    attempt: int
    first_seen: float | None
    lease_until: float | None  # in flight only
    expires_at: float | None
    trace_id: str
    reply: bytes | None  # done only: the cached reply blob


@dataclass(frozen=True, slots=True)
class OutboxItem:
    id: str
    route: str
    payload: bytes  # the serialized request to redeliver (opaque to the store)
    attempts: int  # redelivery attempts made so far
    created_at: float  # Unix seconds when it was enqueued
    next_at: float  # Unix seconds when it is due
    last_error: str = ""


@dataclass(frozen=True, slots=True)
class OutboxStats:
    depth: int  # queued (not dead) items
    oldest_age: float  # seconds since the oldest queued item was created (0 when empty)
    dead: int  # dead letters


class Store(abc.ABC):
    """Shared state behind one async interface."""

    url_scheme: str = ""

    # -- lifecycle -------------------------------------------------------------------------------------------
    async def open(self) -> None:  # noqa: B027 - optional hook
        """Connect / create schema. Raises StoreUnavailable with a helpful message."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    async def __aenter__(self) -> Self:
        """``async with open_store(url) as store:`` opens and always closes the store."""
        await self.open()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    @abc.abstractmethod
    async def ping(self) -> None:
        """Raise StoreUnavailable unless the store answers now (used by /readyz)."""

    # -- dedup -----------------------------------------------------------------------------------------------
    @abc.abstractmethod
    async def claim(self, key: str, lease: float, ttl: float, note: Note = NO_NOTE) -> Claim:
        """``note`` is written only when the claim creates the record."""

    @abc.abstractmethod
    async def complete(self, key: str, token: str, reply: bytes, ttl: float) -> bool:
        """Store the successful reply; False if ``token`` no longer owns the key (it is stored anyway if the key
        is not DONE yet, so a late success is never thrown away)."""

    @abc.abstractmethod
    async def release(self, key: str, token: str) -> None: ...

    @abc.abstractmethod
    async def settle(self, key: str, lease: float, timeout: float) -> Claim: ...

    @abc.abstractmethod
    async def inspect(self, key: str) -> Inspection | None:
        """The live record of ``key`` without touching it (``wxgate lookup``)."""

    @abc.abstractmethod
    async def resolve(self, alias: str) -> str | None:
        """The key a first claim filed under ``alias`` (:class:`Note`), if it has not expired."""

    # -- nonce replay cache ----------------------------------------------------------------------------------
    @abc.abstractmethod
    async def remember(self, key: str, ttl: float) -> bool:
        """True the first time ``key`` is seen within ``ttl`` seconds, False on a repeat."""

    @abc.abstractmethod
    async def remember_signed(self, signed: str, body: str, ttl: float) -> Sighting:
        """The replay cache for one signed request, atomically: REPEAT if ``signed`` was accepted with this
        ``body`` within ``ttl``; else FORGED if ``signed`` was seen (with another body), remembering nothing;
        else NEW, remembering ``signed`` (under the key :meth:`remember` uses for it) and ``signed`` with
        ``body``. A forgery sent twice is FORGED twice: its body is never remembered as accepted."""

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
        """The replay cache and the dedup claim of one verified request: ``remember_signed(signed, body,
        replay_ttl)``, then, unless that says FORGED (no claim is made: ``None``), ``claim(key, lease, ttl)``.
        A store that can do both in one round trip overrides this, with the keys and results of the two calls."""
        sighting = await self.remember_signed(signed, body, replay_ttl)
        if sighting is Sighting.FORGED:
            return sighting, None
        return sighting, await self.claim(key, lease, ttl, note)

    # -- outbox ----------------------------------------------------------------------------------------------
    @abc.abstractmethod
    async def outbox_put(self, item: OutboxItem) -> None:
        """Durably enqueue (returns only once the item survives a process crash)."""

    @abc.abstractmethod
    async def outbox_lease(self, now: float, lease: float, limit: int) -> list[OutboxItem]:
        """Due items (``next_at <= now``), each leased exclusively to the caller for ``lease`` seconds; an item
        whose lease lapsed (crashed worker) is due again."""

    @abc.abstractmethod
    async def outbox_ack(self, item_id: str) -> None:
        """Delivered: remove it."""

    @abc.abstractmethod
    async def outbox_retry(self, item_id: str, next_at: float, error: str) -> None:
        """Failed again: attempts + 1, due at ``next_at``, lease dropped."""

    @abc.abstractmethod
    async def outbox_defer(self, item_id: str, next_at: float, error: str) -> None:
        """Handed back untried (a route this replica does not know, or a notification another delivery holds):
        due at ``next_at``, lease dropped, attempts unchanged."""

    @abc.abstractmethod
    async def outbox_bury(self, item_id: str, error: str) -> None:
        """Move to the dead letters."""

    @abc.abstractmethod
    async def outbox_list(self, dead: bool, limit: int = 100) -> list[OutboxItem]: ...

    @abc.abstractmethod
    async def outbox_get(self, item_id: str) -> OutboxItem | None:
        """An item by id, queued or dead."""

    @abc.abstractmethod
    async def outbox_revive(self, item_id: str | None, now: float) -> int:
        """Dead letter(s) back into the queue, due now, attempts reset and age restarted (``created_at`` is
        ``now``: a replayed item gets the whole of ``max_age`` again); ``None`` means all. Returns the count."""

    @abc.abstractmethod
    async def outbox_purge(self, dead: bool, item_id: str | None = None) -> int:
        """Delete queued (dead=False) or dead items; one by id or all. Returns the count."""

    @abc.abstractmethod
    async def outbox_stats(self, now: float) -> OutboxStats: ...
