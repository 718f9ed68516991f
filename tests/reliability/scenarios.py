"""Storm and chaos scenarios, shared by the suite (bounded) and the soak (longer, random faults).

Each scenario starts its own processes on free loopback ports (Redis or a Redis Cluster with AOF, the demo
backend, two wxgate replicas), runs, stops them by PID, and returns an :class:`Outcome`: the figures row plus
what the assertions need.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.reliability.chaos import Chaos, drain, store_trouble
from tests.reliability.figures import Row
from tests.reliability.fleet import EVENT_KINDS, ROUTES, Catalog, Fleet, Timing
from tests.reliability.storm import Notification, Storm, account, plan
from tests.support.redis_servers import RedisCluster, RedisServer

_ids = itertools.count(1)
# (at seconds, kind, duration); kinds: flap | slow | redis | hang | replica | cluster
Fault = tuple[float, str, float]


def first_id() -> int:
    """A fresh block of notification ids (a run never reuses one, even across cycles of a soak)."""
    return int(time.time()) * 10**6 + next(_ids) * 10**5


@dataclass
class Outcome:
    row: Row
    figures: dict[str, Any]
    notifications: list[Notification]
    cut_on_live: int = 0


def _load(count: int, deliveries: int, rate: float | None) -> str:
    pace = f" at {rate:g}/s" if rate else ""
    return f"{count:,} notifications{pace}, {deliveries:,} deliveries (7 routes, 2 replicas)"


def storm(tmp: Path, count: int = 1000, seed: int = 1) -> Outcome:
    """Two replicas sharing Redis, ``count`` notifications each delivered 4×, no fault; a share of them are
    same-second bursts of events without a message id (``EVENT_KINDS``)."""
    redis = RedisServer(aof=True).start()
    catalog = Catalog(tmp, Timing())
    fleet = Fleet(tmp, redis.url, catalog)
    try:
        fleet.start()
        notifications = plan(count, [*ROUTES, *EVENT_KINDS], first_id())

        async def go() -> float:
            s = Storm(fleet, catalog, random.Random(seed))
            started = time.monotonic()
            try:
                await s.run(notifications)
            finally:
                await s.close()
            return time.monotonic() - started

        seconds = asyncio.run(go())
        time.sleep(0.5)  # the last settlements reach the backend log
        fig = account(notifications, fleet.log.taken(fleet.backend_requests()))
    finally:
        fleet.stop()
        redis.cleanup()
    events = sum(n.route in EVENT_KINDS for n in notifications)
    row = Row(
        scenario="storm",
        run="suite",
        seconds=seconds,
        load=_load(count, fig["deliveries"], None)
        + f", {events:,} of them same-second events without a message id ({len(EVENT_KINDS)} kinds)"
        + f", {fig['deliveries'] / seconds:,.0f} req/s",
        acknowledged=fig["acknowledged"],
        delivered=fig["delivered"],
        duplicates=fig["duplicates"],
        lost=fig["lost"],
        worst_reply=fig["worst_latency"],
    )
    return Outcome(row, fig, notifications)


async def _chaos(
    fleet: Fleet,
    catalog: Catalog,
    redis: RedisServer | RedisCluster,
    notifications: list[Notification],
    rate: float,
    faults: list[Fault],
    seed: int,
    drain_timeout: float,
) -> tuple[Chaos, Storm, dict[str, Any]]:
    chaos = Chaos(fleet, redis)
    s = Storm(fleet, catalog, random.Random(seed))
    storm_seconds = len(notifications) / rate
    last_fault = max((at + duration for at, _, duration in faults), default=0.0)
    # A WeChat Pay sender keeps retrying until acknowledged; bounded for the test.
    s.retry_until = time.monotonic() + max(storm_seconds, last_fault) + drain_timeout
    actions: dict[str, Callable[[float], Awaitable[None]]] = {
        "flap": chaos.flap_backend,
        "slow": chaos.slow_backend,
        "redis": chaos.kill_redis,
        "hang": chaos.hang_redis,
        "cluster": chaos.kill_cluster_node,
        "replica": lambda d: chaos.kill_replica(0, d),
    }
    try:
        async with (
            asyncio.TaskGroup() as tg
        ):  # a fault that fails stops the storm instead of leaving it running
            tg.create_task(s.run(notifications, rate=rate))
            for at, kind, duration in faults:
                tg.create_task(chaos.at(at, actions[kind](duration)))
        drained = await drain(fleet, notifications, fleet.store, drain_timeout)
    finally:
        await s.close()
    return chaos, s, drained


def chaos(
    tmp: Path,
    faults: list[Fault],
    count: int = 800,
    rate: float = 40.0,
    seed: int = 2,
    cluster: bool = False,
    drain_timeout: float = 90.0,
    run: str = "suite",
) -> Outcome:
    """The storm while ``faults`` happen; then the faults clear and the outbox drains."""
    redis: RedisServer | RedisCluster
    if cluster:
        redis = RedisCluster()
        for node in redis.nodes:
            node.aof = True  # acknowledged outbox writes survive a master's SIGKILL
        redis.start()
    else:
        redis = RedisServer(aof=True).start()
    catalog = Catalog(tmp, Timing())
    fleet = Fleet(tmp, redis.url, catalog)
    started = time.monotonic()
    try:
        fleet.start()
        notifications = plan(count, ROUTES, first_id())
        ch, s, drained = asyncio.run(
            _chaos(fleet, catalog, redis, notifications, rate, faults, seed, drain_timeout)
        )
        windows = ch.windows + store_trouble(fleet)
        fig = account(notifications, fleet.log.taken(fleet.backend_requests()), windows)
    finally:
        fleet.stop()
        if isinstance(redis, RedisCluster):
            redis.stop()
        else:
            redis.cleanup()
    fig.update(drained)
    fig["cut_on_live"] = s.cut_on_live
    unacked = fig["unacknowledged"]
    notes = (
        f"{fig['replies'].get('failure', 0):,} deliveries answered with the protocol's retry-me reply, "
        f"{fig['replies'].get('cut', 0):,} cut by a kill -9; outbox drained in {drained['drain_seconds']} s."
    )
    late = fig["replies"].get("late", 0)
    if late:
        notes += (
            f" {late} deliveries got no answer within the sender's timeout (worst answered: "
            f"{fig['worst_latency']} s)."
        )
    if unacked:
        notes += (
            f" {unacked} `ack`-route notifications were never acknowledged: all 4 deliveries came while the store "
            "could not take the outbox write (their sender gives up; nothing was promised, none is counted lost)."
        )
    row = Row(
        scenario="chaos (Redis Cluster)" if cluster else "chaos",
        run=run,
        seconds=time.monotonic() - started,
        load=_load(count, fig["deliveries"], rate),
        faults=ch.faults,
        acknowledged=fig["acknowledged"],
        delivered=fig["delivered"],
        duplicates=fig["duplicates"],
        duplicates_by_design=fig["duplicates"] - fig["duplicates_unexplained"],
        lost=fig["lost"],
        worst_reply=fig["worst_latency"],
        notes=notes,
    )
    return Outcome(row, fig, notifications, s.cut_on_live)
