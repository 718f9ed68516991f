"""Client CPU per EVALSHA: redis-py (as RedisStore builds it) vs proxy.stores.resp.RespClient, side by side.

Starts its own redis-server on a free loopback port (tests/support) and stops it; never touches an existing
Redis. Each client runs the store's ``remember`` script (:mod:`proxy.stores.redis_scripts`) on fresh keys,
``-n`` calls one at a time, then with ``--concurrency`` in flight, and reports this process's CPU per call
(time.process_time, which leaves out redis-server; the kernel's share, mostly socket syscalls, shown apart) and
wall time per call, the median of ``--repeat`` runs.

    .venv/bin/python bench/resp_bench.py [-n 20000] [--concurrency 32] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import resource
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402
from redis._parsers import _AsyncRESP2Parser  # noqa: E402
from redis.asyncio import Redis  # noqa: E402

from proxy.stores.redis_scripts import REMEMBER  # noqa: E402
from proxy.stores.redis_target import RedisConnector  # noqa: E402
from proxy.stores.resp import RespClient  # noqa: E402
from proxy.stores.url import parse_redis_url  # noqa: E402
from tests.support.redis_servers import RedisServer  # noqa: E402

Call = Callable[[str], Awaitable[Any]]
TTL_MS = 600_000


async def run(call: Call, prefix: str, n: int, concurrency: int) -> tuple[float, float, float]:
    """Wall, process-CPU and kernel-CPU seconds for ``n`` calls with ``concurrency`` in flight."""
    keys = iter(range(n))

    async def worker() -> None:
        for i in keys:
            await call(f"bench:{{{prefix}:{i}}}:n")

    started, cpu = time.perf_counter(), time.process_time()
    kernel = resource.getrusage(resource.RUSAGE_SELF).ru_stime
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    kernel = resource.getrusage(resource.RUSAGE_SELF).ru_stime - kernel
    return time.perf_counter() - started, time.process_time() - cpu, kernel


def redis_py(url: str, hiredis_parser: bool) -> tuple[Callable[[], Awaitable[None]], Call]:
    """The client RedisStore uses today (RedisConnector: retry, timeouts, pool of 64), one script."""
    connector = RedisConnector(parse_redis_url(url), connect_timeout=0.5, timeout=1.0, max_connections=64)
    client = connector.client()
    assert isinstance(client, Redis)
    if not hiredis_parser:
        client.connection_pool.connection_kwargs["parser_class"] = _AsyncRESP2Parser
    script = client.register_script(REMEMBER)

    async def call(key: str) -> Any:
        return await script(keys=[key], args=["0123456789abcdef", TTL_MS])

    return client.aclose, call


def resp(url: str) -> tuple[Callable[[], Awaitable[None]], Call]:
    client = RespClient.from_url(url, connect_timeout=0.5, timeout=1.0)
    sha = Redis().register_script(REMEMBER).sha  # the same SHA redis-py computes

    async def call(key: str) -> Any:
        return await client.evalsha(sha, REMEMBER, [key], ["0123456789abcdef", TTL_MS])

    return client.aclose, call


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("-n", type=int, default=20_000, help="EVALSHA calls per run (default 20000)")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs per configuration; the median is reported"
    )
    args = parser.parse_args()
    modes = [("sequential", 1), (f"concurrency {args.concurrency}", args.concurrency)]
    rows = [
        "| client | mode | client CPU µs per call | of which kernel | wall µs per call | calls/s |",
        "|---|---|--:|--:|--:|--:|",
    ]
    with RedisServer() as server:
        clients = {
            "redis-py, hiredis parser": lambda: redis_py(server.url, hiredis_parser=True),
            "redis-py, Python parser": lambda: redis_py(server.url, hiredis_parser=False),
            "RespClient": lambda: resp(server.url),
        }
        for name, make in clients.items():
            close, call = make()
            try:
                await run(call, f"{name}:warmup", 1000, args.concurrency)  # connections up, script loaded
                for mode, concurrency in modes:
                    runs = [
                        await run(call, f"{name}:{mode}:{r}", args.n, concurrency) for r in range(args.repeat)
                    ]
                    wall, cpu, kernel = (statistics.median(r[i] for r in runs) for i in range(3))
                    rows.append(
                        f"| {name} | {mode} | {cpu / args.n * 1e6:,.1f} | {kernel / args.n * 1e6:,.1f} | "
                        f"{wall / args.n * 1e6:,.1f} | {args.n / wall:,.0f} |"
                    )
                    print(rows[-1], file=sys.stderr, flush=True)
            finally:
                await close()
    print("\n".join(rows))
    print(
        f"\n{platform.machine()}, Python {platform.python_version()}, redis-py {redis.__version__}; "
        f"n={args.n}, median of {args.repeat}; client and redis-server on one host over loopback"
    )


if __name__ == "__main__":
    asyncio.run(main())
