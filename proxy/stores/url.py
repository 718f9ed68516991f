"""Store URLs (pure: no files, no sockets, no client library): the schemes, the SQLite path, and Redis URLs
parsed once into a :class:`RedisTarget`. The configuration check and :func:`proxy.stores.open_store` both use
these, so a URL ``wxgate check`` accepts is one the store opens.

    sqlite:///abs/path/state.db, sqlite://:memory:   the embedded store (one replica)

Redis URLs (``user:password@`` optional everywhere; ``?ssl=true`` turns on TLS for cluster/sentinel):

    redis://host:6379/0, rediss://host:6380/0        one server (any redis-py ``from_url`` query options)
    redis+cluster://host:7000,host:7001               Redis Cluster, seed nodes
    redis+sentinel://host:26379,host:26380/mymaster   the master of ``mymaster`` as Sentinel reports it

Error messages never quote the URL: in a mistyped one, any piece may be part of the password.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import parse_qs, unquote, urlsplit

Kind = Literal["redis", "cluster", "sentinel"]
REDIS_SCHEMES = ("redis", "rediss", "redis+cluster", "redis+sentinel")
SCHEMES = ("sqlite", *REDIS_SCHEMES)
MEMORY = "sqlite://:memory:"


def scheme_of(url: str) -> str:
    """The URL's scheme if it is a store scheme; ``ValueError`` naming the accepted forms otherwise. Only the
    scheme is ever echoed: the rest of a URL may hold a password."""
    scheme = url.partition("://")[0] if "://" in url else ""
    if scheme not in SCHEMES:
        got = f"{scheme}://…" if scheme else "no scheme"
        raise ValueError(
            "expected one of sqlite:///abs/path, sqlite://:memory:, redis://, rediss://, "
            f"redis+cluster://host:port[,host:port] or redis+sentinel://host:port[,host:port]/service; got {got}"
        )
    return scheme


def sqlite_path(url: str) -> str:
    """The database path of a ``sqlite://`` URL (``:memory:`` for the in-memory store)."""
    if url == MEMORY:
        return ":memory:"
    path = url.removeprefix("sqlite://")
    if not path.startswith("/"):
        raise ValueError("expected sqlite:///absolute/path (three slashes) or sqlite://:memory:")
    return path


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
    has_query: bool = False  # query options (only redis-py reads them)


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
    if not sep or scheme not in REDIS_SCHEMES:
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
        return RedisTarget(
            "redis",
            url,
            safe,
            ((host, port),),
            username,
            secret,
            scheme == "rediss",
            db=db,
            has_query=bool(query),
        )
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
