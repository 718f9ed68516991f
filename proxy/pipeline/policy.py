"""Deadline policies (``on_backend_failure``): when wxgate acknowledges on the backend's behalf.

- ``ack``: always, at the deadline or on failure (the outbox keeps the notification);
- ``relay``: only on the sender's last expected attempt — earlier attempts ask for a retry, so a retry can
  replay the backend's real (late) passive reply;
- ``fail``: never; the failure is passed on in the protocol's form and the sender's own schedule retries.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable

from proxy.pipeline.exchange import Exchange
from proxy.pipeline.routes import RouteRuntime
from proxy.stores.base import StoreUnavailable


def is_last_attempt(ex: Exchange) -> bool:
    """Whether this delivery is the sender's last expected one (its protocol's ``last_attempt``)."""
    assert ex.route is not None
    return ex.outcome.attempt >= ex.route.protocol.last_attempt


def acknowledges(ex: Exchange) -> bool:
    """Whether a failed or late backend call is answered with the protocol's success reply."""
    assert ex.route is not None
    policy = ex.route.policy
    return policy == "ack" or (policy == "relay" and is_last_attempt(ex))


# What a claim's lease allows beyond the backend call it protects: the store writes before and after it.
LEASE_MARGIN = 5.0


def claim_lease(route: RouteRuntime) -> float:
    """How long a dedup claim (or an outbox item's lease) is held: the route's ``dedup.lease``, but never less
    than its backend call can take (``backend_timeout``), so a slow backend's sender retry, or another replica's
    redelivery, cannot take the claim over and send a second copy while the first call still runs."""
    return max(route.config.dedup.lease, route.config.backend_timeout + LEASE_MARGIN)


def time_left(ex: Exchange) -> float:
    """Seconds until the route's deadline for this request."""
    assert ex.route is not None
    return ex.route.config.deadline - (time.perf_counter() - ex.started)


# The outbox write made at the deadline itself may use part of the margin between the deadline (4.5 s) and the
# sender's timeout (5 s): without it, an acknowledgement at the deadline could never be made durable.
ACK_GRACE = 0.3


async def before_deadline[T](ex: Exchange, aw: Awaitable[T], grace: float = 0.0) -> T:
    """Await a store call no longer than the deadline allows: a hung store must not hold the sender's answer.

    A store that does not answer in time is treated like one that is down (the route's ``store_down`` policy).
    """
    try:
        async with asyncio.timeout(max(time_left(ex) + grace, 0.0)):
            return await aw
    except TimeoutError:
        raise StoreUnavailable("the store did not answer before the route's deadline") from None
