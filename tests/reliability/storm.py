"""A storm: notifications delivered the way WeChat delivers them, and what became of each.

Every notification is delivered ``deliveries`` (4) times, each with a fresh timestamp, nonce and signature,
to a random live replica, in one of three patterns: ``burst`` (all four in flight together, like Pay's
near-simultaneous duplicates from several servers), ``retry`` (one after another, each after the previous
answer: WeChat's retries, compressed) and ``mixed`` (two together, two after). Each attempt is bounded by the
sender's timeout. A notification on a ``fail`` route (WeChat Pay) that was not acknowledged is retried further on
a fast bounded schedule, as WeChat Pay would over 24 h; an ``ack`` route's sender gives up after its four.

:func:`account` joins the attempts with what the backend took and yields the figures: acknowledged, delivered,
duplicated (each extra take), lost (acknowledged, never taken), worst reply latency.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from tests.reliability.fleet import Catalog, Fleet, policy_of

PAY_RETRY = (0.3, 0.6, 1.2, 2.0)  # then every 2 s: WeChat Pay's 15 s … 6 h schedule, compressed


@dataclass(frozen=True, slots=True)
class Attempt:
    number: int
    replica: int
    started: float  # wall clock, to line up with faults and backend timestamps
    seconds: float
    status: int
    verdict: str  # ack | failure | invalid | late (no answer within the sender's timeout) | cut
    content: str = ""  # the passive reply's text, opened when sealed


@dataclass
class Notification:
    id: int
    route: str
    pattern: str = ""
    attempts: list[Attempt] = field(default_factory=list)

    @property
    def policy(self) -> str:
        return policy_of(self.route)

    @property
    def acked(self) -> bool:
        return any(a.verdict == "ack" for a in self.attempts)


class Storm:
    """Delivers notifications to ``fleet``; ``retry_until`` (monotonic) bounds a Pay sender's retries."""

    def __init__(
        self,
        fleet: Fleet,
        catalog: Catalog,
        rng: random.Random,
        concurrency: int = 48,
        deliveries: int = 4,
    ) -> None:
        self.fleet, self.catalog, self.rng = fleet, catalog, rng
        self.deliveries = deliveries
        self.retry_until = time.monotonic() + 30.0
        self._slots = asyncio.Semaphore(concurrency)
        self._sessions: dict[tuple[int, int], aiohttp.ClientSession] = {}
        self.cut_on_live = 0  # connection errors from a replica nobody killed

    async def close(self) -> None:
        for s in self._sessions.values():
            await s.close()

    def _session(self, replica: int) -> aiohttp.ClientSession:
        # One keep-alive pool per incarnation of a replica: a killed one's dead connections are never reused.
        key = (replica, id(self.fleet.replicas[replica]))
        if key not in self._sessions:
            self._sessions[key] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64))
        return self._sessions[key]

    async def _pick(self) -> int:
        while not self.fleet.live:
            await asyncio.sleep(0.05)
        return self.rng.choice(sorted(self.fleet.live))

    async def attempt(self, n: Notification, number: int) -> Attempt:
        req = self.catalog.request(n.route, n.id)
        async with self._slots:
            replica = await self._pick()
            sidecar = self.fleet.replicas[replica]
            session = self._session(replica)
            started, t0 = time.time(), time.perf_counter()
            status, verdict, content = 0, "late", ""
            try:
                async with asyncio.timeout(self.catalog.timing.sender_timeout):
                    async with session.request(
                        req.method, sidecar.url + req.path_query, headers=req.headers, data=req.body
                    ) as resp:
                        status, body = resp.status, await resp.read()
                verdict, content = self.catalog.classify(n.route, status, body)
            except TimeoutError:
                verdict = "late"
            except (aiohttp.ClientError, OSError):
                verdict = "cut"
                if replica in self.fleet.live and sidecar is self.fleet.replicas[replica]:
                    self.cut_on_live += 1
        a = Attempt(number, replica, started, time.perf_counter() - t0, status, verdict, content)
        n.attempts.append(a)
        return a

    async def deliver(self, n: Notification) -> None:
        n.pattern = self.rng.choice(("burst", "retry", "mixed"))
        together = {"burst": self.deliveries, "retry": 1, "mixed": 2}[n.pattern]
        first = []
        for k in range(1, together + 1):
            first.append(asyncio.create_task(self.attempt(n, k)))
            await asyncio.sleep(self.rng.uniform(0, 0.03))
        await asyncio.gather(*first)
        for k in range(together + 1, self.deliveries + 1):
            await asyncio.sleep(self.rng.uniform(0, 0.2))
            await self.attempt(n, k)
        k = self.deliveries
        while n.policy == "fail" and not n.acked and time.monotonic() < self.retry_until:
            await asyncio.sleep(PAY_RETRY[min(k - self.deliveries, len(PAY_RETRY) - 1)])
            k += 1
            await self.attempt(n, k)

    async def run(self, notifications: list[Notification], rate: float | None = None) -> None:
        """Deliver all; ``rate`` notifications per second (open loop), else as fast as the slots allow."""
        tasks = []
        start = time.monotonic()
        for i, n in enumerate(notifications):
            if rate is not None:
                await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
            tasks.append(asyncio.create_task(self.deliver(n)))
            if rate is None and i % 16 == 15:
                await asyncio.sleep(0)  # let the first ones start before queueing them all
        await asyncio.gather(*tasks)


def plan(count: int, routes: Iterable[str], first_id: int) -> list[Notification]:
    """``count`` notifications spread round-robin over ``routes``."""
    names = list(routes)
    return [Notification(first_id + i, names[i % len(names)]) for i in range(count)]


@dataclass
class Window:
    """A fault's time span (wall clock); a duplicate taken inside one is explained by it."""

    kind: str
    start: float
    end: float


def account(
    notifications: list[Notification],
    taken: dict[int, list[float]],
    windows: Sequence[Window] = (),
    explain_margin: float = 2.0,
) -> dict[str, Any]:
    """The figures of one storm. ``taken`` is notification -> when the backend took it."""
    attempts = [a for n in notifications for a in n.attempts]
    verdicts = Counter(a.verdict for a in attempts)
    duplicated = unexplained = lost = unacked = 0
    dup_routes: Counter[str] = Counter()
    for n in notifications:
        times = sorted(taken.get(n.id, []))
        if len(times) > 1:
            extra = len(times) - 1
            duplicated += extra
            dup_routes[n.route] += extra
            explained = any(
                w.start - explain_margin <= t <= w.end + explain_margin for t in times for w in windows
            )
            if not explained:
                unexplained += extra
        if n.acked and not times:
            lost += 1
        if not n.acked:
            unacked += 1
    answered = [a.seconds for a in attempts if a.verdict in ("ack", "failure", "invalid")]
    answered.sort()
    return {
        "notifications": len(notifications),
        "deliveries": len(attempts),
        "acknowledged": sum(n.acked for n in notifications),
        "unacknowledged": unacked,
        "delivered": sum(1 for n in notifications if taken.get(n.id)),
        "duplicates": duplicated,
        "duplicates_unexplained": unexplained,
        "duplicates_by_route": dict(dup_routes),
        "lost": lost,
        "lost_ids": [n.id for n in notifications if n.acked and not taken.get(n.id)][:20],
        "replies": dict(verdicts),
        "worst_latency": round(max(answered, default=0.0), 3),
        "p99_latency": round(answered[int(len(answered) * 0.99)] if answered else 0.0, 3),
        "patterns": dict(Counter(n.pattern for n in notifications)),
    }
