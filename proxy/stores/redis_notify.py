"""One pub/sub connection per :class:`~proxy.stores.redis.RedisStore` that wakes local ``settle`` waiters.

Why pub/sub and not backoff polling: ``settle`` runs when a sender retries while the first attempt is still
with the backend, which is exactly when the backend is slow and many keys are in flight at once. Polling each
of them every 5–100 ms would multiply Redis load in the very incident it should ride out (2,000 waiters ≈
20,000 EVALSHA/s); with pub/sub a waiter costs one script call to start and one when woken. ``complete`` and
``release`` publish only for keys whose record says someone waits, so idle traffic publishes nothing.

The store channel is subscribed once and for all (no per-key SUBSCRIBE churn); messages carry the dedup key
and wake only the waiters of that key. On a cluster, any node will do: PUBLISH reaches every node. After a
reconnect every waiter is woken once to re-read its record, since notifications may have been missed; the
store's slow poll covers the time the connection is down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from redis.asyncio import Redis

from proxy.stores.redis_target import REDIS_ERRORS
from proxy.stores.waiters import KeyWaiters

log = logging.getLogger(__name__)


class SettleSubscriber:
    """Listens on ``channel`` in a background task; ``ready()`` waits until the subscription is live."""

    def __init__(self, connect: Callable[[int], Redis], channel: str, waiters: KeyWaiters) -> None:
        self._connect = connect
        self._channel = channel.encode()
        self._waiters = waiters
        self._subscribed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="wxgate-redis-settle-subscriber")

    async def ready(self, timeout: float) -> bool:
        """True once subscribed; False after ``timeout`` (the caller then relies on polling)."""
        self.start()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._subscribed.wait()
        return self._subscribed.is_set()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._subscribed.clear()

    async def _run(self) -> None:
        attempt, delay = 0, 0.05
        while True:
            client = self._connect(attempt)
            pubsub = client.pubsub()
            try:
                await pubsub.subscribe(self._channel)
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is not None:
                        self._handle(message)
                        delay = 0.05
            except REDIS_ERRORS as exc:
                if self._subscribed.is_set():
                    log.warning("settle notifications interrupted (%s); reconnecting", type(exc).__name__)
                self._subscribed.clear()
            finally:
                with contextlib.suppress(*REDIS_ERRORS):
                    await pubsub.aclose()  # type: ignore[no-untyped-call,unused-ignore]  # unannotated in redis-py
                    await client.aclose()
            attempt += 1
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    def _handle(self, message: dict[str, Any]) -> None:
        if message["type"] == "subscribe":
            self._subscribed.set()
            self._waiters.wake_all()
        elif message["type"] == "message":
            self._waiters.wake(bytes(message["data"]).decode("utf-8", "surrogateescape"))
