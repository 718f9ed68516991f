"""backend_concurrency: one limit per backend URL, waiters bounded in time, shares per worker."""

from __future__ import annotations

import asyncio

from proxy.config import Config, parse_config
from proxy.pipeline.backpressure import BackendLimit, BackendLimits, BackpressureCounters, route_limits
from proxy.pipeline.routes import RouteTable


def _config(top: int | None, routes: list[dict[str, object]]) -> tuple[Config, RouteTable]:
    raw: dict[str, object] = {"upstream": "http://127.0.0.1:9000", "routes": routes}
    if top is not None:
        raw["backend_concurrency"] = top
    config = parse_config(raw, {"T": "token-123"})
    return config, RouteTable.from_config(config)


def _route(name: str, **over: object) -> dict[str, object]:
    return {"name": name, "path": f"/{name}", "protocol": "wechat-mp", "token": "${T}", **over}


def test_routes_on_one_backend_share_its_smallest_limit_and_others_keep_theirs() -> None:
    config, table = _config(
        20,
        [
            _route("a"),
            _route("b", backend_concurrency=5),
            _route("c", upstream="http://127.0.0.1:9001"),
            _route("d", upstream="http://127.0.0.1:9002", backend_concurrency=3),
        ],
    )
    assert route_limits(config, table) == {
        "a": ("http://127.0.0.1:9000", 5),
        "b": ("http://127.0.0.1:9000", 5),
        "d": ("http://127.0.0.1:9002", 3),
    }
    limits = BackendLimits(workers=2)
    limits.use(config, table)
    a, b, c, d = table.routes
    assert limits.for_route(a) is limits.for_route(b) is not None
    assert limits.for_route(c) is None
    shares = [limit.limit for limit in (limits.for_route(a), limits.for_route(d)) if limit is not None]
    assert shares == [2, 1]


def test_a_reload_keeps_the_slots_of_an_unchanged_limit() -> None:
    config, table = _config(4, [_route("a")])
    limits = BackendLimits()
    limits.use(config, table)
    before = limits.for_route(table.routes[0])
    limits.use(config, RouteTable.from_config(config))
    assert limits.for_route(table.routes[0]) is before


def test_a_waiter_gets_a_freed_slot_or_gives_up_at_its_timeout_and_is_counted_meanwhile() -> None:
    waiting: list[int] = []
    counters = BackpressureCounters(queued=lambda route, delta: waiting.append(delta))

    async def main() -> tuple[bool, bool, bool]:
        limit = BackendLimit(1, counters)
        assert await limit.acquire("r", 0.0)
        no_time = await limit.acquire("r", 0.0)
        gave_up = await limit.acquire("r", 0.05)
        asyncio.get_running_loop().call_later(0.02, limit.release)
        got = await limit.acquire("r", 1.0)
        return no_time, gave_up, got

    assert asyncio.run(main()) == (False, False, True)
    assert waiting == [1, -1, 1, -1]
