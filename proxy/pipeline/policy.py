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

from proxy.pipeline.exchange import Routed
from proxy.pipeline.routes import RouteRuntime
from proxy.protocols.base import Verified
from proxy.stores.base import StoreUnavailable


def is_last_attempt(ex: Routed) -> bool:
    """Whether this delivery is the sender's last expected one (its protocol's ``last_attempt``)."""
    return ex.outcome.attempt >= ex.route.protocol.last_attempt


def acknowledges(ex: Routed) -> bool:
    """Whether a failed or late backend call is answered with the protocol's success reply."""
    policy = ex.route.policy
    return policy == "ack" or (policy == "relay" and is_last_attempt(ex))


# What a claim's lease allows beyond the backend call it protects: the store writes before and after it.
LEASE_MARGIN = 5.0


def claim_lease(route: RouteRuntime) -> float:
    """How long a dedup claim (or an outbox item's lease) is held: the route's ``dedup.lease``, but never less
    than the claimed delivery can take, so a sender's retry, or another replica's redelivery, cannot take the
    claim over and send a second copy while the first call still runs. A call starts before the request's
    ``deadline`` (a request waiting for a backend slot waits at most until then) and runs at most
    ``backend_timeout``: the lease covers both, with a margin."""
    cfg = route.config
    return max(cfg.dedup.lease, cfg.deadline + cfg.backend_timeout + LEASE_MARGIN)


# A message whose kind sets its own answer time (``Verified.deadline``: the seconds its sender waits) is
# answered this much before it, as the routes' 4.5 s default is before WeChat's 5 s.
SENDER_MARGIN = 0.5


def deadline(ex: Routed) -> float:
    """Seconds after arrival by which this request is answered: the route's ``deadline``, or earlier when the
    message's kind has a shorter contract (a Mini Program iOS refund query waits 3 s)."""
    own = ex.verified.deadline if ex.verified is not None else None
    route = ex.route.config.deadline
    return route if own is None else max(min(route, own - SENDER_MARGIN), 0.1)


def dedup_ttl(route: RouteRuntime, verified: Verified | None) -> float:
    """How long a dedup record lives: the route's, or longer when the message's kind is retried for longer
    (Mini Program ``xpay_*`` events follow a 24 h schedule on routes whose other messages retry for 15 s)."""
    own = verified.dedup_ttl if verified is not None else None
    return route.dedup_ttl if own is None else max(route.dedup_ttl, own)


def time_left(ex: Routed) -> float:
    """Seconds until this request's deadline."""
    return deadline(ex) - (time.perf_counter() - ex.started)


# The outbox write made at the deadline itself may use part of the margin between the deadline (4.5 s) and the
# sender's timeout (5 s): without it, an acknowledgement at the deadline could never be made durable.
ACK_GRACE = 0.3


async def before_deadline[T](ex: Routed, aw: Awaitable[T], grace: float = 0.0) -> T:
    """Await a store call no longer than the deadline allows: a hung store must not hold the sender's answer.

    A store that does not answer in time is treated like one that is down (the route's ``store_down`` policy).
    """
    try:
        async with asyncio.timeout(max(time_left(ex) + grace, 0.0)):
            return await aw
    except TimeoutError:
        raise StoreUnavailable("the store did not answer before the route's deadline") from None
