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

_REDIS_SCHEMES = ("redis://", "rediss://", "redis+cluster://", "redis+sentinel://")


def open_store(url: str, **kw: Any) -> Store:
    """The store for ``url``; ``ValueError`` with the accepted forms if the scheme is unknown."""
    if url == "sqlite://:memory:":
        return SqliteStore(":memory:", **kw)
    if url.startswith("sqlite://"):
        path = url.removeprefix("sqlite://")
        if not path.startswith("/"):
            raise ValueError(
                f"sqlite store URL needs an absolute path after sqlite://, e.g. sqlite:///var/lib/wxgate/state.db "
                f"(three slashes), or sqlite://:memory:; got {url!r}"
            )
        return SqliteStore(path, **kw)
    if url.startswith(_REDIS_SCHEMES):
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
    # Only the scheme is echoed: the rest of a URL may hold a password.
    scheme = repr(url.partition("://")[0]) if "://" in url else "(none)"
    raise ValueError(
        f"unknown store URL scheme {scheme}; expected sqlite:///abs/path, sqlite://:memory:, redis://, "
        "rediss://, redis+cluster://host:port[,host:port] or redis+sentinel://host:port[,host:port]/service"
    )
