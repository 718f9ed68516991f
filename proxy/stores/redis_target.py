"""Redis store URLs: parsing, building ``redis.asyncio`` clients, and turning client errors into
:class:`StoreUnavailable` messages that say what to check, with the password never in them.

Accepted URLs (``user:password@`` optional everywhere; ``?ssl=true`` turns on TLS for cluster/sentinel):

    redis://host:6379/0, rediss://host:6380/0        one server (any redis-py ``from_url`` query options)
    redis+cluster://host:7000,host:7001               Redis Cluster, seed nodes
    redis+sentinel://host:26379,host:26380/mymaster   the master of ``mymaster`` as Sentinel reports it

Socket timeouts are short (0.5 s connect, 1 s read by default) and a command that lost its connection is
retried once on a fresh one, so a dead or hung Redis costs a request at most about a second, and a restarted
one is picked up by the next call.
"""

from __future__ import annotations

import contextlib
import re
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, unquote, urlsplit

from redis.asyncio import Redis, RedisCluster
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError

from proxy.stores.base import StoreUnavailable
from proxy.stores.resp import RespError

Kind = Literal["redis", "cluster", "sentinel"]
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


@dataclass(frozen=True)
class RedisTarget:
    """A parsed store URL. ``safe_url`` (no password, no query) is the only form that appears in messages."""

    kind: Kind
    url: str = field(repr=False)
    safe_url: str
    nodes: tuple[tuple[str, int], ...]
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ssl: bool = False
    service: str = ""
    db: int = 0


def _hostport(text: str, default_port: int) -> tuple[str, int]:
    if text.startswith("["):  # [::1]:6379
        host, _, rest = text[1:].partition("]")
        port = rest.removeprefix(":")
    else:
        host, _, port = text.rpartition(":") if ":" in text else (text, "", "")
    # Never echo ``text``: in a mistyped URL it may be a piece of the password.
    if not host:
        raise ValueError("a node has no host (expected host:port)")
    if port and not port.isdigit():
        raise ValueError("a node's port is not a number (expected host:port)")
    return host, int(port) if port else default_port


def _fmt(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_redis_url(url: str) -> RedisTarget:
    """Parse a ``redis://``, ``rediss://``, ``redis+cluster://`` or ``redis+sentinel://`` URL."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("redis", "rediss", "redis+cluster", "redis+sentinel"):
        raise ValueError(
            f"not a redis store URL: {scheme}://… (expected redis, rediss, redis+cluster or redis+sentinel)"
        )
    if "@" in "".join(re.split(r"[/?#]", rest, maxsplit=1)[1:]):
        # `redis://:ab/cd@host` would otherwise be host "localhost" with the password's tail as its path
        raise ValueError(
            f"{scheme}:// URL has an '@' after its host part: a password holding / ? # or @ must be "
            "percent-encoded"
        )
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    userinfo, _, hosts = netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    username, secret = unquote(user) or None, unquote(password) or None
    who = f"{user}@" if user else ""
    if scheme in ("redis", "rediss"):
        parts = urlsplit(url)
        try:
            port = parts.port or 6379
        except ValueError:  # its message quotes the "port", which may be a piece of the password
            raise ValueError(
                f"{scheme}:// URL has no valid host:port (a password holding / ? # or @ must be "
                "percent-encoded)"
            ) from None
        host = parts.hostname or "localhost"
        db = int(path.split("/")[0] or 0) if path.split("/")[0].isdigit() else 0
        safe = f"{scheme}://{who}{_fmt(host, port)}/{db}"
        return RedisTarget("redis", url, safe, ((host, port),), username, secret, scheme == "rediss", db=db)
    ssl = parse_qs(query).get("ssl", ["false"])[0].lower() in ("1", "true", "yes")
    if scheme == "redis+cluster":
        nodes = tuple(_hostport(h, 6379) for h in hosts.split(",") if h)
        if not nodes:
            raise ValueError(
                "redis+cluster:// needs at least one seed node: redis+cluster://host:port[,host:port]"
            )
        safe = f"{scheme}://{who}{','.join(_fmt(*n) for n in nodes)}"
        return RedisTarget("cluster", url, safe, nodes, username, secret, ssl)
    nodes = tuple(_hostport(h, 26379) for h in hosts.split(",") if h)
    service, _, db_text = path.partition("/")
    if not nodes or not service:
        raise ValueError(
            "redis+sentinel:// needs sentinels and a service: redis+sentinel://host:port[,host:port]/name"
        )
    db = int(db_text) if db_text.isdigit() else 0
    safe = f"{scheme}://{who}{','.join(_fmt(*n) for n in nodes)}/{service}"
    return RedisTarget("sentinel", url, safe, nodes, username, secret, ssl, service=unquote(service), db=db)


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
            self._sentinel = Sentinel(list(t.nodes), sentinel_kwargs=sentinel_opts)  # type: ignore[no-untyped-call]
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
