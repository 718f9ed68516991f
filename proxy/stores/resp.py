"""A lean Redis client for the store's hot path: EVALSHA over one pipelined connection.

Why it exists: every dedup and replay check is one EVALSHA (:mod:`.redis_scripts`), and redis-py's asyncio
client spends ~110 µs of Python CPU on each (retry wrapper, connection pool checkout, command packing) around
a ~50 µs loopback round trip. :class:`RespClient` sends every command on one connection, packed and parsed in C
by hiredis, with no task, timer or lock per call. bench/resp_bench.py, 32 calls in flight: ~10 µs of CPU per
EVALSHA, half of it the kernel's (redis-py: ~65 µs); one at a time, where each call pays its own send, poll
and receive, ~30 µs (redis-py: ~85 µs).

One connection, many callers: each command is written as it comes and its future queued; replies resolve the
queue in order (RESP answers in order). The connection opens on first use and again after any loss, with
``AUTH`` and ``SELECT`` sent before any command; callers arriving meanwhile share that one attempt, which is
bounded by ``connect_timeout``.

Failure semantics:

* An error reply (``ERR``, ``WRONGTYPE``, ``OOM``, ``NOAUTH``, ``READONLY``…) raises :class:`RespError` with
  the server's message; the connection stays in use. ``evalsha`` answers ``NOSCRIPT`` by sending ``SCRIPT
  LOAD`` and the EVALSHA again (one round trip): a script that was not loaded did not run.
* Refused, lost or hung connections raise :class:`RespConnectionError` (an ``OSError``). A pipelined connection
  whose oldest reply is ``timeout`` seconds late is out of step for everyone: it is closed and every call on
  it fails at once; one timer per connection watches the oldest reply. Calls are never resent once written
  (whether they ran is unknown, and the caller decides); the next call connects anew.
* A cancelled caller leaves the connection in step: its reply is read and dropped when it comes.
* At most ``max_pending`` replies are awaited per connection (memory stays bounded while Redis hangs); beyond
  that, calls fail at once with :class:`RespConnectionError`.
* Messages name ``host:port``, never the password.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Sequence
from ssl import SSLContext, create_default_context
from types import TracebackType
from typing import Any, cast

import hiredis

from proxy.stores.url import RedisTarget, parse_redis_url

Arg = str | bytes | bytearray | memoryview | int | float  # redis-py's EncodableT
"""A command argument: ``str`` goes as UTF-8, numbers as their ``repr`` (``bool`` and ``None`` are refused)."""

# RESP2 command packing in C; its stub types the argument as a 1-tuple.
_pack = cast(Callable[[tuple[Arg, ...]], bytes], hiredis.pack_command)
_MORE = object()  # hiredis.Reader.gets() when a reply is incomplete (None is a nil reply)


def _encode(args: tuple[Arg, ...]) -> bytes:
    try:
        return _pack(args)
    except TypeError:  # hiredis takes no bytearray; anything else is the caller's mistake
        for arg in args:
            if isinstance(arg, bool) or not isinstance(arg, Arg):
                raise TypeError(
                    f"a redis command argument must be str, bytes, int or float, not {type(arg).__name__}"
                ) from None
        return _pack(tuple(bytes(a) if isinstance(a, bytearray) else a for a in args))


class RespError(Exception):
    """An error reply from the server; the connection is fine. ``str()`` is the server's message."""

    @property
    def code(self) -> str:
        """The error's first word: ``ERR``, ``NOSCRIPT``, ``WRONGTYPE``, ``OOM``, ``NOAUTH``…"""
        return str(self).partition(" ")[0]


class RespConnectionError(ConnectionError):
    """No answer: refused, lost, timed out, closed or overloaded. Whether a written command ran is unknown."""


class _Connection(asyncio.Protocol):
    """One transport and the futures awaiting its replies, oldest first (with when each was sent)."""

    transport: asyncio.Transport

    def __init__(self, loop: asyncio.AbstractEventLoop, name: str, timeout: float, max_pending: int) -> None:
        self.loop = loop
        self.name = name
        self.timeout = timeout
        self.max_pending = max_pending
        self.reader = hiredis.Reader(replyError=RespError, notEnoughData=_MORE)
        self.pending: deque[tuple[asyncio.Future[Any], float]] = deque()
        self.closed = False
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def send(self, command: bytes) -> asyncio.Future[Any]:
        """Write one packed command; the future gets its reply, or a RespError/RespConnectionError as value."""
        if self.closed:
            raise RespConnectionError(f"connection to redis {self.name} lost")
        if len(self.pending) >= self.max_pending:
            raise RespConnectionError(
                f"redis {self.name}: {self.max_pending} replies already pending; redis is not keeping up"
            )
        fut = self.loop.create_future()
        now = self.loop.time()
        try:
            self.transport.write(command)
        except (TypeError, AttributeError) as exc:  # a transport torn down under us (python/cpython#136234)
            self.fail(f"connection to redis {self.name} lost while writing", exc)
            raise RespConnectionError(f"connection to redis {self.name} lost while writing") from exc
        self.pending.append((fut, now))
        if self.timer is None:
            self.timer = self.loop.call_at(now + self.timeout, self._watch)
        return fut

    def data_received(self, data: bytes) -> None:
        reader, pending = self.reader, self.pending
        reader.feed(data)
        try:
            while (reply := reader.gets()) is not _MORE:
                fut = pending.popleft()[0]
                if not fut.done():  # done: its caller was cancelled, and the reply is dropped
                    fut.set_result(reply)
        except (hiredis.ProtocolError, IndexError) as exc:
            self.fail(f"redis {self.name} sent a reply that is not RESP or that nothing asked for", exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(f"connection to redis {self.name} lost", exc)

    def _watch(self) -> None:
        """The one timer: fires when the oldest pending reply is due, and re-arms for the next oldest."""
        self.timer = None
        if not self.pending:
            return
        due = self.pending[0][1] + self.timeout
        if self.loop.time() + 0.001 >= due:
            self.fail(f"no reply from redis {self.name} within {self.timeout} s")
        else:
            self.timer = self.loop.call_at(due, self._watch)

    def fail(self, why: str, cause: BaseException | None = None) -> None:
        """Close for good and answer every pending call with a RespConnectionError."""
        if not self.closed:
            self.closed = True
            self.transport.abort()
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        while self.pending:
            fut = self.pending.popleft()[0]
            if not fut.done():
                error = RespConnectionError(why)
                error.__cause__ = cause
                fut.set_result(error)  # a value, not set_exception: nothing to "never retrieve"


class RespClient:
    """One multiplexed, pipelined connection to one Redis server, opened on first use and after any loss.

    Use it from one event loop. ``aclose()`` fails pending calls; a call after it connects again.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 6379,
        *,
        username: str | None = None,
        password: str | None = None,
        db: int = 0,
        ssl: SSLContext | None = None,
        connect_timeout: float = 0.5,
        timeout: float = 1.0,
        max_pending: int = 10_000,
    ) -> None:
        if timeout <= 0 or connect_timeout <= 0 or max_pending < 1:
            raise ValueError("timeout and connect_timeout must be > 0, max_pending >= 1")
        self.host, self.port, self.db = host, port, db
        self._name = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self._username = username
        self._password = password
        self._ssl = ssl
        self._connect_timeout = connect_timeout
        self._timeout = timeout
        self._max_pending = max_pending
        self._conn: _Connection | None = None
        self._connecting: asyncio.Task[_Connection] | None = None

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        ssl_context: SSLContext | None = None,
        connect_timeout: float = 0.5,
        timeout: float = 1.0,
        max_pending: int = 10_000,
    ) -> RespClient:
        """A client for a ``redis://`` or ``rediss://`` URL (``rediss``: ``ssl_context``, or the default one).

        Query options (``ssl_cert_reqs``, ``ssl_ca_certs``…) are not read: pass ``ssl_context`` instead.
        """
        return cls.from_target(
            parse_redis_url(url),
            ssl_context=ssl_context,
            connect_timeout=connect_timeout,
            timeout=timeout,
            max_pending=max_pending,
        )

    @classmethod
    def from_target(
        cls,
        t: RedisTarget,
        *,
        ssl_context: SSLContext | None = None,
        connect_timeout: float = 0.5,
        timeout: float = 1.0,
        max_pending: int = 10_000,
    ) -> RespClient:
        """A client for a parsed one-server target."""
        if t.kind != "redis":
            raise ValueError(f"RespClient talks to one server (redis:// or rediss://), not {t.safe_url}")
        context = (ssl_context or create_default_context()) if t.ssl else None
        host, port = t.nodes[0]
        return cls(
            host,
            port,
            username=t.username,
            password=t.password,
            db=t.db,
            ssl=context,
            connect_timeout=connect_timeout,
            timeout=timeout,
            max_pending=max_pending,
        )

    def __repr__(self) -> str:
        return f"RespClient({'rediss' if self._ssl else 'redis'}://{self._name}/{self.db})"

    # -- commands ----------------------------------------------------------------------------------------------
    async def execute(self, *args: Arg) -> Any:
        """Send one command; its reply as hiredis gives it (bytes, int, None, lists; status replies as bytes)."""
        reply = await self._call(_encode(args))
        if isinstance(reply, Exception):
            raise reply
        return reply

    async def evalsha(
        self, sha: str, script: str | bytes | memoryview, keys: Sequence[Arg], args: Sequence[Arg]
    ) -> Any:
        """EVALSHA ``sha``; on NOSCRIPT, SCRIPT LOAD ``script`` and EVALSHA again, pipelined (one round trip)."""
        command = _encode(("EVALSHA", sha, len(keys), *keys, *args))
        reply = await self._call(command)
        if isinstance(reply, Exception):
            if isinstance(reply, RespError) and str(reply).startswith("NOSCRIPT"):
                return await self._load_and_call(script, command)
            raise reply
        return reply

    async def _call(self, command: bytes) -> Any:
        conn = self._conn
        if conn is None or conn.closed or conn.transport.is_closing():
            conn = await self._connect()  # lost before this command was written: safe to send on a new one
        return await conn.send(command)

    async def _load_and_call(self, script: str | bytes | memoryview, command: bytes) -> Any:
        conn = self._conn
        if conn is None or conn.closed or conn.transport.is_closing():
            conn = await self._connect()
        loaded = conn.send(_encode(("SCRIPT", "LOAD", script)))
        reply = await conn.send(command)  # answered after the load, so `loaded` is done too
        if isinstance(reply, RespError) and loaded.done() and isinstance(loaded.result(), RespError):
            raise loaded.result()  # why the script would not load (a compile error, OOM…)
        if isinstance(reply, Exception):
            raise reply
        return reply

    # -- connection --------------------------------------------------------------------------------------------
    async def _connect(self) -> _Connection:
        task = self._connecting
        if task is None:
            task = self._connecting = asyncio.get_running_loop().create_task(self._open())
            task.add_done_callback(_retrieve)
        try:
            return await asyncio.shield(task)  # one caller's cancellation must not stop everyone's connect
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if task.cancelled() and (current is None or not current.cancelling()):
                raise RespConnectionError(f"client for redis {self._name} closed while connecting") from None
            raise

    async def _open(self) -> _Connection:
        loop = asyncio.get_running_loop()
        conn: _Connection | None = None

        def protocol() -> _Connection:
            return _Connection(loop, self._name, self._timeout, self._max_pending)

        try:
            async with asyncio.timeout(self._connect_timeout):
                _, conn = await loop.create_connection(protocol, self.host, self.port, ssl=self._ssl)
                setup: list[asyncio.Future[Any]] = []
                if self._password is not None:
                    who = (self._username,) if self._username else ()
                    setup.append(conn.send(_pack(("AUTH", *who, self._password))))
                if self.db:
                    setup.append(conn.send(_pack(("SELECT", self.db))))
                for fut in setup:
                    reply = await fut
                    if isinstance(reply, Exception):
                        raise reply
        except BaseException as exc:
            if conn is not None:
                conn.fail(f"connection to redis {self._name} not set up")
            if isinstance(exc, TimeoutError):
                raise RespConnectionError(
                    f"could not connect to redis {self._name} within {self._connect_timeout} s"
                ) from None
            if isinstance(exc, OSError):  # refused, unreachable, TLS failure, lost during AUTH/SELECT
                raise RespConnectionError(f"could not connect to redis {self._name}: {exc}") from exc
            if isinstance(exc, asyncio.CancelledError):  # only aclose() cancels this task
                raise RespConnectionError(f"client for redis {self._name} closed while connecting") from None
            raise  # RespError from AUTH/SELECT: WRONGPASS, NOAUTH, ERR DB index is out of range…
        finally:
            self._connecting = None
        self._conn = conn
        return conn

    async def aclose(self) -> None:
        """Close the connection (failing pending calls with RespConnectionError). Idempotent; a later call
        connects again."""
        task = self._connecting
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait([task])
            self._connecting = None  # a task cancelled before it ran never reached its own cleanup
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.fail(f"client for redis {self._name} closed")

    async def __aenter__(self) -> RespClient:
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


def _retrieve(task: asyncio.Task[_Connection]) -> None:
    """Mark a failed connect as seen: its waiters (if any are left) got the error through shield()."""
    if not task.cancelled():
        task.exception()
