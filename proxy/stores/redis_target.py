"""Redis targets: building ``redis.asyncio`` clients for a parsed store URL (:mod:`.redis_url`), and turning
client errors into :class:`StoreUnavailable` messages that say what to check, with the password never in them.

Socket timeouts are short (0.5 s connect, 1 s read by default) and a command that lost its connection is
retried once on a fresh one, so a dead or hung Redis costs a request at most about a second, and a restarted
one is picked up by the next call.
"""

from __future__ import annotations

import contextlib
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from redis.asyncio import Redis, RedisCluster
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError

from proxy.stores.base import StoreUnavailable
from proxy.stores.resp import RespError
from proxy.stores.url import Kind, RedisTarget

# OSError covers TimeoutError, socket errors and RespConnectionError; RespError is a server error reply.
REDIS_ERRORS = (RedisError, RedisClusterException, RespError, OSError)
# CPython's selector transport raises TypeError/AttributeError when written to right after its connection was
# lost (python/cpython#136234, not fixed in 3.12); redis-py passes it on (redis/redis-py#3546).
_TRANSPORT_BUGS = (TypeError, AttributeError)
_HINTS: dict[Kind, str] = {
    "redis": "check that redis is running at that address, reachable from this host, and that the URL's "
    "password and TLS scheme (redis:// or rediss://) are right",
    "cluster": "check that the seed nodes are reachable and that `redis-cli cluster info` on them reports "
    "cluster_state:ok",
    "sentinel": "check that the sentinels are reachable, that they know the service name, and that its "
    "master is up",
}


class RedisConnector:
    """Builds the store's clients for one target and translates their errors."""

    def __init__(
        self, target: RedisTarget, *, connect_timeout: float, timeout: float, max_connections: int
    ) -> None:
        self.target = target
        self._options: dict[str, Any] = {
            "socket_connect_timeout": connect_timeout,
            "socket_timeout": timeout,
            "decode_responses": False,
        }
        self._max_connections = max_connections
        self._sentinel: Sentinel | None = None

    def _retry(self) -> Retry:
        # One quick retry on a fresh connection: a pooled socket to a restarted Redis fails once, then works.
        # Not on timeouts: retrying those would double what a hung Redis costs each request.
        return Retry(
            ExponentialBackoff(cap=0.05, base=0.01), retries=1, supported_errors=(RedisConnectionError,)
        )

    def _auth(self) -> dict[str, Any]:
        return {"username": self.target.username, "password": self.target.password}

    def client(self) -> Redis | RedisCluster:
        """The command client; its pool (per node, on a cluster) holds the store's ``max_connections``."""
        t = self.target
        opts = {**self._options, "retry": self._retry(), "max_connections": self._max_connections}
        if t.kind == "redis":
            return Redis.from_url(t.url, **opts)
        if t.kind == "cluster":
            startup = [ClusterNode(host, port) for host, port in t.nodes]
            return RedisCluster(startup_nodes=startup, ssl=t.ssl, **self._auth(), **opts)
        return self._master(opts)

    def _master(self, opts: dict[str, Any]) -> Redis:
        t = self.target
        if self._sentinel is None:
            sentinel_opts = {k: v for k, v in self._options.items() if k.startswith("socket_")}
            # redis-py leaves Sentinel.__init__ unannotated.
            self._sentinel = Sentinel(list(t.nodes), sentinel_kwargs=sentinel_opts)  # type: ignore[no-untyped-call,unused-ignore]
        master: Redis = self._sentinel.master_for(t.service, db=t.db, ssl=t.ssl, **self._auth(), **opts)
        return master

    def subscriber(self, cluster: Redis | RedisCluster, attempt: int) -> Redis:
        """A plain client for the pub/sub connection. On a cluster any node will do (PUBLISH reaches every
        node), so each reconnect ``attempt`` tries the next known node."""
        t, opts = self.target, {**self._options, "retry": self._retry()}
        if t.kind == "redis":
            return Redis.from_url(t.url, **opts)
        if t.kind == "sentinel":
            return self._master(opts)
        known = cluster.get_nodes() if isinstance(cluster, RedisCluster) else []
        nodes = [(n.host, int(n.port)) for n in known] or list(t.nodes)
        host, port = nodes[attempt % len(nodes)]
        return Redis(host=host, port=port, ssl=t.ssl, **self._auth(), **opts)  # one connection: pub/sub

    async def aclose(self) -> None:
        """Close what the connector itself holds: the Sentinel's connections to the sentinels."""
        if self._sentinel is not None:
            for client in self._sentinel.sentinels:
                with contextlib.suppress(*REDIS_ERRORS):
                    await client.aclose()
            self._sentinel = None

    def unavailable(self, exc: BaseException) -> StoreUnavailable:
        detail = f"{type(exc).__name__}: {exc}"
        if self.target.password:
            detail = detail.replace(self.target.password, "***")
        return StoreUnavailable(
            f"redis store {self.target.safe_url} is unavailable ({detail}); {_HINTS[self.target.kind]}"
        )

    @contextlib.contextmanager
    def translate(self) -> Iterator[None]:
        """Raise :class:`StoreUnavailable` for any client, network or server error inside the block."""
        try:
            yield
        except REDIS_ERRORS as exc:
            raise self.unavailable(exc) from exc
        except _TRANSPORT_BUGS as exc:
            if not _raised_in_asyncio_transport(exc):
                raise
            raise self.unavailable(ConnectionError("the connection was lost while writing")) from exc


def _raised_in_asyncio_transport(exc: BaseException) -> bool:
    frames = traceback.extract_tb(exc.__traceback__)
    return bool(frames) and Path(frames[-1].filename).match("asyncio/*_events.py")
