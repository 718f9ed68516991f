"""State stores behind one interface (:class:`Store`), chosen by the ``store:`` URL in ``proxy.yaml``.

    store = open_store("sqlite:///var/lib/wxgate/state.db")   # or sqlite://:memory:, redis://…, rediss://…,
    async with store:                                          # redis+cluster://…, redis+sentinel://…/name
        claim = await store.claim(key, lease=10, ttl=600)

``open_store`` only builds the store; ``open()`` (or ``async with``) connects and raises
:class:`StoreUnavailable` with a message saying what to check. Keyword arguments go to the implementation's
constructor (``SqliteStore``: ``clock``, ``purge_interval``, ``settle_poll``; ``RedisStore``: ``namespace``,
``connect_timeout``, ``timeout``, ``settle_poll``).
"""

from __future__ import annotations

from typing import Any

from proxy.stores.base import Claim, ClaimState, OutboxItem, OutboxStats, Store, StoreUnavailable
from proxy.stores.redis import RedisStore
from proxy.stores.sqlite import SqliteStore
from proxy.stores.url import scheme_of, sqlite_path

__all__ = [
    "Claim",
    "ClaimState",
    "OutboxItem",
    "OutboxStats",
    "RedisStore",
    "SqliteStore",
    "Store",
    "StoreUnavailable",
    "open_store",
]


def open_store(url: str, **kw: Any) -> Store:
    """The store for ``url``; ``ValueError`` with the accepted forms if it is not a store URL."""
    if scheme_of(url) == "sqlite":
        return SqliteStore(sqlite_path(url), **kw)
    try:
        store = RedisStore(url, **kw)
        if url.startswith(("redis://", "rediss://")) and "?" in url:
            # redis-py reads query options only when it makes a connection: make one (unconnected) now
            # so a bad option fails at start (and in `wxgate check`), not on the first request.
            from redis.asyncio import Redis

            pool = Redis.from_url(url).connection_pool
            pool.connection_class(**pool.connection_kwargs)
        return store
    except (ValueError, TypeError) as e:  # redis-py's own URL parsing: a query option it cannot take
        # Its messages name the option, never the value; the URL itself is never echoed.
        raise ValueError(f"{url.partition('://')[0]}:// store URL is not usable: {e}") from None
