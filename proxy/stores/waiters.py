"""In-process wake-ups for ``Store.settle``, shared by every store implementation.

A retry that finds its key IN_FLIGHT parks on an :class:`asyncio.Event` registered under the dedup key;
``complete``/``release`` (or, for Redis, a pub/sub notification from another replica) wake every waiter of
that key, which then re-reads the record. A slow poll bounds the wait when a wake-up can never come (a lease
that lapses because its holder crashed, another process writing the same SQLite file, a lost message).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterator

from proxy.stores.base import Claim, ClaimState

# ``check`` returns the claim as it stands now and, for IN_FLIGHT, the seconds left on the holder's lease.
SettleCheck = Callable[[], Awaitable[tuple[Claim, float]]]


class KeyWaiters:
    """Events keyed by dedup key; ``wake(key)`` sets every event registered for that key."""

    def __init__(self) -> None:
        self._events: dict[str, set[asyncio.Event]] = {}

    @contextlib.contextmanager
    def watch(self, key: str) -> Iterator[asyncio.Event]:
        event = asyncio.Event()
        self._events.setdefault(key, set()).add(event)
        try:
            yield event
        finally:
            events = self._events.get(key)
            if events is not None:
                events.discard(event)
                if not events:
                    del self._events[key]

    def wake(self, key: str) -> None:
        for event in self._events.get(key, ()):
            event.set()

    def wake_all(self) -> None:
        """After a gap in notifications (reconnect), every waiter re-reads its record."""
        for events in self._events.values():
            for event in events:
                event.set()

    def __len__(self) -> int:
        return sum(len(events) for events in self._events.values())


async def settle_loop(
    check: SettleCheck,
    wake: asyncio.Event,
    timeout: float,
    poll: float,
) -> Claim:
    """Re-run ``check`` whenever ``wake`` fires, the holder's lease runs out or ``poll`` seconds pass, until
    the key leaves IN_FLIGHT or ``timeout`` seconds are up (then the last IN_FLIGHT claim is returned).

    ``wake`` is cleared *before* each check, so a wake-up landing between the check and the wait is kept.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + max(timeout, 0.0)
    while True:
        wake.clear()
        claim, lease_left = await check()
        remaining = deadline - loop.time()
        if claim.state is not ClaimState.IN_FLIGHT or remaining <= 0:
            return claim
        # A few ms past the lease end, so the re-check sees it expired rather than spinning on "1 ms left".
        wait = min(remaining, poll, max(lease_left, 0.0) + 0.005)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait):
                await wake.wait()
