"""Forward: send a verified callback to the backend ourselves and answer the sender before its deadline.

The call goes over the pooled :class:`~proxy.upstream.client.UpstreamClient` with the route's ``backend_timeout``; the
answer to the sender is decided by ``deadline`` and ``on_backend_failure``:

- the backend answered in time: a 2xx is normalized to the protocol's contract; a failure follows the policy;
- the deadline passed: ``ack`` answers success (after the settlement made the notification durable), ``fail``
  passes the failure on, ``relay`` lets the sender retry except on its last expected attempt. The backend call
  goes on in the background and settles when it ends;
- the backend's ``backend_concurrency`` is reached: the call waits for a slot while the deadline allows, else
  the request spills (the policy answers without calling the backend; :mod:`proxy.pipeline.backpressure`).

Unmatched (passthrough) flows are left to mitmproxy.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from mitmproxy import http

from proxy.observability.tracing import Tracing
from proxy.pipeline.backend_leg import NOT_SENT, answer, early_reply, is_failure, spill
from proxy.pipeline.backpressure import ANSWER_BUDGET, BackendLimits
from proxy.pipeline.exchange import Authenticated, exchange, request_query
from proxy.pipeline.forwarding import backend_request
from proxy.pipeline.policy import time_left
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
        limits: BackendLimits | None = None,
    ) -> None:
        self.client = client
        self.settlement = settlement
        self.tasks = tasks
        self.observe = observe
        self.tracing = tracing
        self.limits = limits

    async def request(self, flow: http.HTTPFlow) -> None:
        if flow.response or flow.error or not flow.live:
            return
        ex = exchange(flow)
        if ex is None or ex.route is None:
            return
        if ex.outcome.verdict != "verified" or ex.replay is not None or ex.verified is None:
            # Never forward what was not verified, nor a request whose replay check (left to dedup) never ran.
            return reject(flow, ex, "not_verified", 403)
        authentic = ex.authenticated()
        try:
            await self._forward(flow, authentic)
        except Exception:
            logger.exception("forwarding failed unexpectedly on route %s", authentic.route.name)
            if not flow.response:
                ex.outcome.reason = "forward_error"
                respond(flow, ex, authentic.route.protocol.backend_failure_reply(ex.verified))
        return None

    async def _forward(self, flow: http.HTTPFlow, ex: Authenticated) -> None:
        route = ex.route
        limit = self.limits.for_route(route) if self.limits is not None else None
        if limit is not None and not await limit.acquire(route.name, time_left(ex) - ANSWER_BUDGET):
            return respond(flow, ex, await self._spill(ex))
        try:
            call = self._call(flow, ex)
        except BaseException:
            if limit is not None:
                limit.release()
            raise
        if limit is not None:  # the slot is the backend's until the call ends, even after the sender's answer
            call.add_done_callback(lambda _: limit.release())
        try:
            result = await asyncio.wait_for(asyncio.shield(call), max(time_left(ex), 0.0))
        except TimeoutError:
            ex.outcome.deadline = route.policy
            reply = await early_reply(ex, self.settlement, in_flight=True)
            acked = reply.kind == "ack"
            self.tasks.spawn(self._settle_late(ex, call, acked), name=f"settle {route.name}")
            return respond(flow, ex, reply)
        respond(flow, ex, await self._settle(ex, result))
        return None

    def _call(self, flow: http.HTTPFlow, ex: Authenticated) -> asyncio.Task[UpstreamResult]:
        """Start the backend call as a background task (it may outlive the sender's answer)."""
        route, cfg = ex.route, ex.route.config
        # The CLIENT span starts first: backend_request() sends its traceparent (ex.traceparent) to the backend.
        client_span = None
        if self.tracing:
            client_span = self.tracing.backend_call(ex.span, flow.request.method, cfg.path, route.upstream)
            ex.traceparent = client_span.traceparent
        url, headers, body = backend_request(ex, request_query(flow, ex))
        send = self.client.send(flow.request.method, url, headers, body, cfg.backend_timeout)
        return self.tasks.spawn(
            client_span.wrap(send) if client_span else send, name=f"upstream {route.name}"
        )

    async def _spill(self, ex: Authenticated) -> Reply:
        """No slot of the backend's limit came free in time: the route's policy answers without the backend."""
        assert self.limits is not None
        self.limits.counters.spilled(ex.route.name)
        reply = await spill(ex, self.settlement)
        await self._settle_within_deadline(
            ex, self.settlement.failed(ex, NOT_SENT, reply.kind == "ack", False)
        )
        return reply

    def _record(self, ex: Authenticated, result: UpstreamResult) -> None:
        ex.outcome.upstream = result.kind
        ex.outcome.upstream_status = result.status
        ex.outcome.upstream_seconds = result.seconds
        if self.observe is not None:
            self.observe(ex.outcome.route, result)

    async def _settle(self, ex: Authenticated, result: UpstreamResult) -> Reply:
        """The backend answered before the deadline."""
        self._record(ex, result)
        if is_failure(ex.route, result):
            ex.outcome.reason = ex.outcome.reason or f"upstream_{result.kind}"
            reply = await early_reply(ex, self.settlement, in_flight=False)
            await self._settle_within_deadline(
                ex, self.settlement.failed(ex, result, reply.kind == "ack", False)
            )
            return reply
        reply = answer(ex.route, result, ex.verified)
        await self._settle_within_deadline(ex, self.settlement.delivered(ex, reply, late=False))
        return reply

    async def _settle_within_deadline(self, ex: Authenticated, settling: Coroutine[Any, Any, None]) -> None:
        """Record the result in the store, but answer the sender by the deadline even if the store hangs:
        the recording goes on in the background (a retry meanwhile waits on the in-flight record)."""
        task = self.tasks.spawn(settling, name="settle")
        await asyncio.wait({task}, timeout=max(time_left(ex), 0.0))

    async def _settle_late(self, ex: Authenticated, call: asyncio.Task[UpstreamResult], acked: bool) -> None:
        """The backend answered after the sender got its reply."""
        result = await call
        if self.observe is not None:
            self.observe(ex.outcome.route, result)
        if is_failure(ex.route, result):
            await self.settlement.failed(ex, result, acked=acked, late=True)
        else:
            await self.settlement.delivered(ex, answer(ex.route, result, ex.verified), late=True)
