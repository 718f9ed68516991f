"""Open-loop load: requests at a fixed rate, latency measured from each request's *scheduled* send time.

A closed-loop tool (wrk) waits for an answer before sending the next request on a connection, so a stall
delays the requests that would have been sent meanwhile and they never record the stall ("coordinated
omission"). Here request ``i`` is due at ``t0 + i / rate`` whatever happened before, goes out on an idle
keep-alive connection (a new one is opened when all are busy), and its latency runs from when it was due.

Timing: a thread sleeps to each due time with ``time.sleep`` (nanosecond timer) and hands the send to the
event loop with ``call_soon_threadsafe``, which wakes it at once; an asyncio timer alone would wake up to
1 ms late (epoll's millisecond timeout). The garbage collector is off while measuring.

    python bench/openloop.py --port 8080 --corpus FILE --rate 500 --duration 10

prints one JSON line: sent, completed, errors, status counts, achieved rate and latency percentiles (ms).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import sys
import threading
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.corpus import read

MAX_CONNECTIONS = 1024
CURVE = (0, 10, 25, 50, 75, 90, 95, 98, 99, 99.5, 99.8, 99.9, 99.95, 99.98, 99.99)


class Conn(asyncio.Protocol):
    def __init__(self, gen: OpenLoop) -> None:
        self.gen = gen
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.due = 0.0
        self.busy = False
        self.pending: bytes | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        if self.pending is not None:
            transport.write(self.pending)
            self.pending = None

    def send(self, req: bytes, due: float) -> None:
        self.busy, self.due, self.buf = True, due, b""
        if self.transport is None:
            self.pending = req
        else:
            self.transport.write(req)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head = self.buf[:end].lower()
        length = 0
        i = head.find(b"\r\ncontent-length:")
        if i >= 0:
            j = head.find(b"\r\n", i + 2)
            length = int(head[i + 17 : j if j >= 0 else len(head)])
        if len(self.buf) < end + 4 + length:
            return
        status = int(head[9:12])
        self.busy = False
        self.gen.done(self, self.due, time.perf_counter() - self.due, status)

    def connection_lost(self, exc: Exception | None) -> None:
        self.gen.lost(self)


class OpenLoop:
    def __init__(self, host: str, port: int, corpus: list[bytes], rate: float, duration: float) -> None:
        self.host, self.port = host, port
        self.corpus = corpus
        self.rate, self.count = rate, min(len(corpus), int(rate * duration))
        self.idle: list[Conn] = []
        self.conns: set[Conn] = set()
        self.latencies: list[float] = []
        self.slow: list[tuple[float, float]] = []  # (due, latency) of answers over --slow-ms
        self.slow_after = float("inf")
        self.t0 = 0.0
        self.status: Counter[int] = Counter()
        self.errors = 0
        self.sent = 0
        self.finished = asyncio.Event()
        self.loop = asyncio.get_running_loop()

    async def connect(self) -> Conn:
        conn = Conn(self)
        self.conns.add(conn)
        await self.loop.create_connection(lambda: conn, self.host, self.port)
        return conn

    def fire(self, i: int, due: float) -> None:
        self.sent += 1
        if self.idle:
            self.idle.pop().send(self.corpus[i], due)
            return
        if len(self.conns) >= MAX_CONNECTIONS:
            self.errors += 1
            self._check_done()
            return
        conn = Conn(self)
        self.conns.add(conn)
        conn.send(self.corpus[i], due)
        task = self.loop.create_task(self.loop.create_connection(lambda: conn, self.host, self.port))
        task.add_done_callback(lambda t: t.cancelled() or t.exception() is None or self.lost(conn))

    def done(self, conn: Conn, due: float, latency: float, status: int) -> None:
        self.latencies.append(latency)
        if latency > self.slow_after:
            self.slow.append((due - self.t0, latency))
        self.status[status] += 1
        self.idle.append(conn)
        self._check_done()

    def lost(self, conn: Conn) -> None:
        if conn in self.conns:
            self.conns.discard(conn)
            if conn in self.idle:
                self.idle.remove(conn)
            if conn.busy:
                conn.busy = False
                self.errors += 1
                self._check_done()

    def _check_done(self) -> None:
        if self.sent == self.count and len(self.latencies) + self.errors >= self.count:
            self.finished.set()

    def schedule(self, t0: float) -> None:
        """The timer thread: sleep to each due time, then let the loop send."""
        for i in range(self.count):
            due = t0 + i / self.rate
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            self.loop.call_soon_threadsafe(self.fire, i, due)


def percentile(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


async def run(args: argparse.Namespace) -> dict[str, object]:
    corpus = read(Path(args.corpus))
    gen = OpenLoop(args.host, args.port, corpus, args.rate, args.duration)
    for _ in range(args.conns):
        gen.idle.append(await gen.connect())
    gc.collect()
    gc.freeze()
    gc.disable()
    t0 = gen.t0 = time.perf_counter() + 0.05
    if args.slow_ms:
        gen.slow_after = args.slow_ms / 1000
    timer = threading.Thread(target=gen.schedule, args=(t0,), daemon=True)
    timer.start()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(gen.finished.wait(), args.duration + args.grace)
    elapsed = time.perf_counter() - t0
    gc.enable()
    lat = gen.latencies
    ms = 1000.0
    return {
        "rate": args.rate,
        "sent": gen.sent,
        "completed": len(lat),
        "errors": gen.errors + (gen.sent - len(lat) - gen.errors),
        "status": {str(k): v for k, v in sorted(gen.status.items())},
        "achieved_rps": round(len(lat) / elapsed, 1) if elapsed > 0 else 0.0,
        "connections": len(gen.conns),
        "p50_ms": round(percentile(lat, 50) * ms, 3),
        "p90_ms": round(percentile(lat, 90) * ms, 3),
        "p99_ms": round(percentile(lat, 99) * ms, 3),
        "p999_ms": round(percentile(lat, 99.9) * ms, 3),
        "max_ms": round(max(lat) * ms, 3) if lat else 0.0,
        # the distribution, for the chart: [percentile, ms]
        "curve": [[q, round(percentile(lat, q) * ms, 3)] for q in CURVE] if lat else [],
    } | ({"slow": [[round(d, 4), round(x * ms, 2)] for d, x in gen.slow]} if args.slow_ms else {})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--corpus", required=True)
    p.add_argument("--rate", type=float, default=500.0)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--conns", type=int, default=32, help="keep-alive connections opened before the run")
    p.add_argument(
        "--slow-ms",
        type=float,
        default=0.0,
        help="also list when each answer slower than this was due (seconds)",
    )
    p.add_argument("--grace", type=float, default=5.0, help="seconds to wait for the last answers")
    print(json.dumps(asyncio.run(run(p.parse_args()))), flush=True)


if __name__ == "__main__":
    main()
