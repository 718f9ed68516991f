"""Forward: send a verified callback to the backend ourselves and answer the sender before its deadline.

The call goes over the pooled :class:`~proxy.upstream.client.UpstreamClient` with the route's ``backend_timeout``; the
answer to the sender is decided by ``deadline`` and ``on_backend_failure``:

- the backend answered in time: a 2xx is normalized to the protocol's contract; a failure follows the policy;
- the deadline passed: ``ack`` answers success (after the settlement made the notification durable), ``fail``
  passes the failure on, ``relay`` lets the sender retry except on its last expected attempt. The backend call
  goes on in the background and settles when it ends.

Unmatched (passthrough) flows are left to mitmproxy.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from mitmproxy import http

from proxy.observability.tracing import Tracing
from proxy.pipeline.exchange import Exchange, exchange
from proxy.pipeline.forwarding import backend_request, is_failure, request_query, success_reply
from proxy.pipeline.policy import ACK_GRACE, acknowledges, before_deadline, time_left
from proxy.pipeline.replies import reject, respond
from proxy.pipeline.settlement import Settlement
from proxy.protocols.base import Reply
from proxy.tasks import BackgroundTasks
from proxy.upstream.client import UpstreamClient, UpstreamResult

logger = logging.getLogger("wxgate")


class Forward:
    def __init__(
        self,
        client: UpstreamClient,
        settlement: Settlement,
        tasks: BackgroundTasks,
        observe: Callable[[str, UpstreamResult], None] | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self.client = client
        self.settlement = settlement
        self.tasks = tasks
        self.observe = observe
        self.tracing = tracing

    async def request(self, flow: http.HTTPFlow) -> None:
        if flow.response or flow.error or not flow.live:
            return
        ex = exchange(flow)
        if ex is None or ex.route is None:
            return
        if ex.outcome.verdict != "verified" or ex.replay is not None:
            # Never forward what was not verified, nor a request whose replay check (left to dedup) never ran.
            return reject(flow, ex, "not_verified", 403)
        try:
            await self._forward(flow, ex)
        except Exception:
            logger.exception("forwarding failed unexpectedly on route %s", ex.route.name)
            if not flow.response:
                ex.outcome.reason = "forward_error"
                respond(flow, ex, ex.route.protocol.backend_failure_reply(ex.verified))
        return None

    async def _forward(self, flow: http.HTTPFlow, ex: Exchange) -> None:
        assert ex.route is not None
        cfg = ex.route.config
        # The CLIENT span starts first: backend_request() sends its traceparent (ex.traceparent) to the backend.
        client_span = None
        if self.tracing:
            client_span = self.tracing.backend_call(ex.span, flow.request.method, cfg.path, ex.route.upstream)
            ex.traceparent = client_span.traceparent
        url, headers, body = backend_request(ex, request_query(flow, ex))
        send = self.client.send(flow.request.method, url, headers, body, cfg.backend_timeout)
        call = self.tasks.spawn(
            client_span.wrap(send) if client_span else send, name=f"upstream {ex.route.name}"
        )
        try:
            result = await asyncio.wait_for(asyncio.shield(call), max(time_left(ex), 0.0))
        except TimeoutError:
            ex.outcome.deadline = ex.route.policy
            reply = await self._early_reply(ex, in_flight=True)
            acked = reply.kind == "ack"
            self.tasks.spawn(self._settle_late(ex, call, acked), name=f"settle {ex.route.name}")
            return respond(flow, ex, reply)
        respond(flow, ex, await self._settle(ex, result))
        return None

    async def _early_reply(self, ex: Exchange, in_flight: bool) -> Reply:
        """The answer when the backend has not answered (or failed): acknowledge, or ask for a retry."""
        assert ex.route is not None
        if acknowledges(ex):
            try:
                await before_deadline(ex, self.settlement.before_ack(ex, in_flight), grace=ACK_GRACE)
            except Exception:
                logger.exception(
                    "could not make route %s's notification durable; not acknowledging", ex.route.name
                )
                ex.outcome.outbox = "failed"
                return ex.route.protocol.backend_failure_reply(ex.verified)
            return ex.route.protocol.success_reply(ex.verified)
        return ex.route.protocol.backend_failure_reply(ex.verified)

    def _record(self, ex: Exchange, result: UpstreamResult) -> None:
        ex.outcome.upstream = result.kind
        ex.outcome.upstream_status = result.status
        ex.outcome.upstream_seconds = result.seconds
        if self.observe is not None:
            self.observe(ex.outcome.route, result)

    async def _settle(self, ex: Exchange, result: UpstreamResult) -> Reply:
        """The backend answered before the deadline."""
        self._record(ex, result)
        if is_failure(ex, result):
            ex.outcome.reason = ex.outcome.reason or f"upstream_{result.kind}"
            reply = await self._early_reply(ex, in_flight=False)
            await self._settle_within_deadline(
                ex, self.settlement.failed(ex, result, reply.kind == "ack", False)
            )
            return reply
        reply = success_reply(ex, result)
        await self._settle_within_deadline(ex, self.settlement.delivered(ex, reply, late=False))
        return reply

    async def _settle_within_deadline(self, ex: Exchange, settling: Coroutine[Any, Any, None]) -> None:
        """Record the result in the store, but answer the sender by the deadline even if the store hangs:
        the recording goes on in the background (a retry meanwhile waits on the in-flight record)."""
        task = self.tasks.spawn(settling, name="settle")
        await asyncio.wait({task}, timeout=max(time_left(ex), 0.0))

    async def _settle_late(self, ex: Exchange, call: asyncio.Task[UpstreamResult], acked: bool) -> None:
        """The backend answered after the sender got its reply."""
        result = await call
        if self.observe is not None:
            self.observe(ex.outcome.route, result)
        if is_failure(ex, result):
            await self.settlement.failed(ex, result, acked=acked, late=True)
        else:
            await self.settlement.delivered(ex, success_reply(ex, result), late=True)
