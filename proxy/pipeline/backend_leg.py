"""The backend leg's decisions, in one place: what the sender is answered when the backend cannot answer for it.

"Make it durable, then acknowledge, else ask for a retry" — the forward addon (backend late or failed), the dedup
addon (the first attempt still holds the claim at this attempt's deadline) and the outbox (a redelivery's
answer) all decide through these functions:

- :func:`is_failure` — the backend did not process the notification (non-2xx, timeout, refusal, or a 2xx that
  still says FAIL, as Pay backends do);
- :func:`answer` — the reply a processed notification gets: the backend's answer normalized to the contract;
- :func:`early_reply` — the answer when the backend is late or failed: the protocol's success only where the
  route's policy acknowledges (:func:`~proxy.pipeline.policy.acknowledges`) *and* the settlement made the
  notification durable first; otherwise the answer that makes the sender retry, so nothing is lost;
- :func:`store_down` — the route's ``dedup.store_down`` policy when the store is down or too slow;
- :func:`spill` — the backend's ``backend_concurrency`` is reached and the request's wait is over: answered as
  for a failed backend, without calling it (:mod:`proxy.pipeline.backpressure`).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from proxy.pipeline.policy import ACK_GRACE, acknowledges, before_deadline
from proxy.pipeline.settlement import Settlement
from proxy.protocols.base import Reply, Verified
from proxy.stores.base import StoreUnavailable
from proxy.upstream.client import UpstreamResult

if TYPE_CHECKING:
    from proxy.pipeline.exchange import Authenticated, Routed
    from proxy.pipeline.routes import RouteRuntime

logger = logging.getLogger("wxgate")


def is_failure(route: RouteRuntime, result: UpstreamResult) -> bool:
    """5xx, timeouts, refusals, non-2xx and protocol-level failures (Pay's FAIL XML / FAIL JSON)."""
    return not result.ok or route.protocol.is_backend_failure(result.status, result.content_type, result.body)


def answer(route: RouteRuntime, result: UpstreamResult, verified: Verified) -> Reply:
    """The reply for a backend answer that is not a failure: normalized to the protocol's contract."""
    return route.protocol.normalize(result.status, result.content_type, result.body, verified)


async def early_reply(ex: Authenticated, settlement: Settlement, in_flight: bool) -> Reply:
    """The answer when the backend has not answered by the deadline (``in_flight``) or has failed.

    Acknowledged only if the route's policy says so and ``settlement.before_ack`` made the notification durable
    (an outbox item) before the deadline; if that fails, the sender is asked to retry (``outcome.outbox =
    "failed"``): an acknowledged notification is never one that exists nowhere."""
    route = ex.route
    if not acknowledges(ex):
        return route.protocol.backend_failure_reply(ex.verified)
    try:
        await before_deadline(ex, settlement.before_ack(ex, in_flight), grace=ACK_GRACE)
    except Exception:
        logger.exception("could not make route %s's notification durable; not acknowledging", route.name)
        ex.outcome.outbox = "failed"
        return route.protocol.backend_failure_reply(ex.verified)
    return route.protocol.success_reply(ex.verified)


# What a spilled request's settlement is told the backend did: nothing (it was never called).
NOT_SENT = UpstreamResult("refused", error="not sent: backend_concurrency reached")


async def spill(ex: Authenticated, settlement: Settlement) -> Reply:
    """The answer for a request that got no slot of its backend's limit in time (reason ``backend_busy``): the
    route's policy, as for a backend that failed (:func:`early_reply`); the caller then settles it as failed
    with :data:`NOT_SENT`, which releases its dedup claim for the outbox (``ack``) or the sender's retry."""
    ex.outcome.reason = "backend_busy"
    return await early_reply(ex, settlement, in_flight=False)


def store_down(ex: Routed, err: StoreUnavailable) -> Reply | None:
    """The route's ``dedup.store_down`` policy for a store that is down or did not answer before the deadline.

    ``fail_open`` goes on without the store (``None``; ``outcome.dedup = "store_error"`` says so);
    ``fail_closed`` answers with the protocol's failure so the sender retries later (reason
    ``store_unavailable``). The request was authentic either way: the verdict stays ``verified``, so a store
    outage never counts as verification failures."""
    ex.outcome.dedup = "store_error"
    ex.outcome.verdict = "verified"
    logger.warning("store unavailable on route %s: %s", ex.route.name, err)
    if ex.route.config.dedup.store_down == "fail_open":
        return None
    ex.outcome.reason = "store_unavailable"
    return ex.route.protocol.backend_failure_reply(ex.verified)
