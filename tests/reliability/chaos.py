"""Faults injected during a storm, on a timeline, and the drain that follows.

Each fault is a real event on a real process: ``redis-server`` SIGKILLed and started again on its port (AOF
replayed) or hung with SIGSTOP, one Redis Cluster master SIGKILLed and restarted, a wxgate replica SIGKILLed
mid-flight and started again, the demo backend's process stopped and started (connections refused), the backend
slow past the deadline, and the backend flapping between dropping connections, HTML 500s, slow answers and good
ones. Every fault is recorded with its wall-clock span:
a duplicate the backend took inside such a span (store down with ``fail_open``, a replica killed between the
backend's answer and the dedup record) is explained by it; any other duplicate fails the run. A store outage
lasts, for wxgate, until its clients have reconnected, which can be seconds after the server is back: its
span is taken from the replicas' own logs (:func:`store_trouble`).
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from proxy.stores import open_store
from tests.reliability.fleet import Fleet
from tests.reliability.storm import Notification, Window
from tests.support.redis_servers import RedisCluster, RedisServer, send_command

Step = tuple[str, float]  # (backend mode, seconds)
FLAPPING: tuple[Step, ...] = (
    ("down", 1.5),
    ("passive", 1.0),
    ("html500", 1.5),
    ("passive", 1.0),
    ("slow", 2.0),
    ("passive", 1.0),
    ("stopped", 1.5),  # the process itself is gone: connections refused
    ("json", 1.0),
    ("passive", 1.0),
)


@dataclass
class Chaos:
    fleet: Fleet
    redis: RedisServer | RedisCluster
    windows: list[Window] = field(default_factory=list)
    faults: list[str] = field(default_factory=list)

    def _record(self, kind: str, start: float, what: str) -> None:
        self.windows.append(Window(kind, start, time.time()))
        self.faults.append(what)

    async def _blocking(self, fn: Callable[[], object]) -> None:
        await asyncio.to_thread(fn)

    async def flap_backend(self, seconds: float, steps: tuple[Step, ...] = FLAPPING) -> None:
        """Cycle the backend through ``steps`` for ``seconds``, then leave it answering normally."""
        end, i = time.monotonic() + seconds, 0
        slow = f"slow:{self.fleet.catalog.timing.slow}"
        while time.monotonic() < end:
            mode, hold = steps[i % len(steps)]
            if mode == "stopped":
                await self._blocking(self.fleet.stop_backend)
                await asyncio.sleep(hold)
                await self._blocking(self.fleet.start_backend)
            else:
                await self._blocking(lambda m=mode: self.fleet.backend.set_mode(slow if m == "slow" else m))
                await asyncio.sleep(hold)
            i += 1
        await self._blocking(lambda: self.fleet.backend.set_mode("passive"))
        # Flapping never excuses a duplicate: the store is up and every replica alive.
        self.faults.append(
            f"backend flapping for {seconds:.0f} s ({i} changes: down, HTML 500, slow, stopped)"
        )

    async def slow_backend(self, seconds: float) -> None:
        """The backend answers past the deadline for ``seconds``: calls are in flight when other faults hit."""
        slow = f"slow:{self.fleet.catalog.timing.slow}"
        await self._blocking(lambda: self.fleet.backend.set_mode(slow))
        await asyncio.sleep(seconds)
        await self._blocking(lambda: self.fleet.backend.set_mode("passive"))
        self.faults.append(f"backend slow ({self.fleet.catalog.timing.slow} s) for {seconds:.0f} s")

    async def kill_redis(self, down_for: float) -> None:
        assert isinstance(self.redis, RedisServer)
        start = time.time()
        await self._blocking(self.redis.kill)
        await asyncio.sleep(down_for)
        await self._blocking(self.redis.start)
        await asyncio.sleep(1.0)  # clients reconnect on their next command
        self._record("store", start, f"redis-server SIGKILLed, restarted after {down_for:.0f} s (AOF)")

    async def hang_redis(self, hung_for: float) -> None:
        """SIGSTOP redis-server (a hung server: connections open, no answers), SIGCONT after ``hung_for``."""
        assert isinstance(self.redis, RedisServer) and self.redis.proc is not None
        start = time.time()
        self.redis.proc.send_signal(signal.SIGSTOP)
        try:
            await asyncio.sleep(hung_for)
        finally:
            self.redis.proc.send_signal(signal.SIGCONT)
        await asyncio.sleep(1.0)
        self._record("store", start, f"redis-server hung (SIGSTOP) for {hung_for:.0f} s")

    async def kill_cluster_node(self, down_for: float) -> None:
        """SIGKILL the master that holds the outbox slot, restart it after ``down_for`` seconds."""
        assert isinstance(self.redis, RedisCluster)
        node = self.outbox_node()
        start = time.time()
        await self._blocking(node.kill)
        await asyncio.sleep(down_for)
        await self._blocking(node.start)
        await self._blocking(self._wait_cluster_ok)
        await asyncio.sleep(1.0)
        self._record(
            "store", start, f"Redis Cluster master (outbox slot) SIGKILLed, restarted after {down_for:.0f} s"
        )

    def outbox_node(self) -> RedisServer:
        assert isinstance(self.redis, RedisCluster)
        first = self.redis.nodes[0].port
        slot = int(send_command(first, "CLUSTER", "KEYSLOT", "wxgate-outbox").strip(b":\r\n"))
        for node in self.redis.nodes:
            for line in send_command(node.port, "CLUSTER", "NODES", timeout=2).decode().splitlines():
                parts = line.split()  # the first line is the RESP bulk length
                if len(parts) > 2 and "myself" in parts[2] and any(_in_range(slot, r) for r in parts[8:]):
                    return node
        raise RuntimeError(f"no master owns slot {slot}")

    def _wait_cluster_ok(self, timeout: float = 30.0) -> None:
        assert isinstance(self.redis, RedisCluster)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            infos = [send_command(n.port, "CLUSTER", "INFO") for n in self.redis.nodes]
            if all(b"cluster_state:ok" in i for i in infos):
                return
            time.sleep(0.1)
        raise RuntimeError("redis cluster did not come back to cluster_state:ok")

    async def kill_replica(self, i: int, down_for: float) -> None:
        start = time.time()
        await self._blocking(lambda: self.fleet.kill(i))
        self.windows.append(Window("replica", start - self.fleet.catalog.timing.backend_timeout, start))
        await asyncio.sleep(down_for)
        await asyncio.to_thread(self.fleet.restart, i)
        self.faults.append(f"wxgate replica {i} SIGKILLed mid-flight, restarted after {down_for:.0f} s")

    async def at(self, delay: float, action: Awaitable[None]) -> None:
        await asyncio.sleep(delay)
        await action


def _in_range(slot: int, spec: str) -> bool:
    if spec.startswith("["):
        return False
    lo, _, hi = spec.partition("-")
    return int(lo) <= slot <= int(hi or lo)


async def drain(
    fleet: Fleet, notifications: list[Notification], store_url: str, timeout: float
) -> dict[str, float]:
    """Wait (faults cleared) until the outbox is empty and every acknowledged notification reached the backend."""
    store = open_store(store_url)
    started = time.monotonic()
    stats = None
    try:
        await store.open()
        while True:
            taken = fleet.log.taken(await asyncio.to_thread(fleet.backend_requests))
            missing = [n.id for n in notifications if n.acked and n.id not in taken]
            stats = await store.outbox_stats(time.time())
            if (not missing and stats.depth == 0) or time.monotonic() - started > timeout:
                break
            await asyncio.sleep(0.5)
    finally:
        await store.close()
    return {
        "drain_seconds": round(time.monotonic() - started, 1),
        "outbox_depth": stats.depth if stats else -1,
        "dead_letters": stats.dead if stats else -1,
    }


def _store_failed(line: dict[str, object]) -> bool:
    if line.get("logger") == "wxgate.access":
        failed = {line.get("dedup"), line.get("outbox"), line.get("reason")}
        return bool(failed & {"store_error", "failed", "store_unavailable"})
    msg = str(line.get("msg", ""))
    return line.get("level") in ("warning", "error") and ("store" in msg or "could not" in msg)


def store_trouble(fleet: Fleet, gap: float = 2.0) -> list[Window]:
    """The spans in which a replica saw the store fail, from the replicas' logs (requests that met a store error,
    outbox writes and settlements that failed), merged when less than ``gap`` seconds apart."""
    spans = []
    for replica in fleet.replicas:  # a restarted replica appends to the log of the one it replaced
        for line in replica.log_lines():
            if _store_failed(line):
                end = float(line.get("ts", 0.0))  # type: ignore[arg-type]
                spans.append((end - float(line.get("duration_seconds", 0.0)), end))  # type: ignore[arg-type]
    merged: list[Window] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1].end + gap:
            merged[-1].end = max(merged[-1].end, end)
        else:
            merged.append(Window("store (seen by wxgate)", start, end))
    return merged
