"""Real ``redis-server`` processes for tests and benchmarks, on free loopback ports.

``RedisServer`` owns one process: ``start()``, ``stop()`` (SIGTERM), ``kill()`` (SIGKILL, like a crash) and
``restart()``, always on the same port and data directory, so a test can take Redis away and bring it back
under a client that keeps its URL. ``aof=True`` turns on ``appendonly yes`` + ``appendfsync always``, so every
acknowledged write survives ``kill()``. ``RedisCluster`` builds an N-master cluster with
``redis-cli --cluster create`` and waits until every node reports ``cluster_state:ok``. ``RedisSentinel`` is
a sentinel (``redis-server --sentinel``) monitoring one ``RedisServer`` as a named service.

Every process started here is also stopped at interpreter exit, so a failing test never leaves one behind.
"""

from __future__ import annotations

import atexit
import contextlib
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
REDIS_CLI = shutil.which("redis-cli") or "/usr/bin/redis-cli"
HOST = "127.0.0.1"

_live: set[RedisServer] = set()


_handed_out: set[int] = set()


def free_port() -> int:
    """A TCP port that is free on the loopback interface right now, and never one this process handed out
    before: the kernel may offer a port again as soon as it is closed, so two calls in a row (a sidecar's
    listener and admin port) could get the same one before either binds it."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((HOST, 0))
            port = int(s.getsockname()[1])
        if port not in _handed_out:
            _handed_out.add(port)
            return port
    raise RuntimeError("no fresh loopback port after 100 tries")


def send_command(port: int, *args: str, timeout: float = 1.0) -> bytes:
    """Send one RESP command over a fresh socket and return the raw reply (enough for PING / CLUSTER INFO)."""
    payload = f"*{len(args)}\r\n".encode() + b"".join(
        f"${len(a.encode())}\r\n".encode() + a.encode() + b"\r\n" for a in args
    )
    with socket.create_connection((HOST, port), timeout=timeout) as s:
        s.sendall(payload)
        data = s.recv(65536)
        if data.startswith(b"$"):
            length = int(data[1 : data.index(b"\r\n")])
            while len(data) < data.index(b"\r\n") + 2 + length:
                data += s.recv(65536)
        return data


class RedisServer:
    """One ``redis-server`` subprocess bound to 127.0.0.1 with its own data directory."""

    def __init__(
        self,
        port: int | None = None,
        *,
        aof: bool = False,
        data_dir: Path | None = None,
        password: str | None = None,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.port = port or free_port()
        self.aof = aof
        self.password = password
        self.extra_args = extra_args
        self._own_dir = data_dir is None
        self.dir = data_dir or Path(tempfile.mkdtemp(prefix=f"wxgate-redis-{self.port}-"))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}{HOST}:{self.port}/0"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def args(self) -> list[str]:
        args = [REDIS_SERVER, "--port", str(self.port), "--bind", HOST, "--dir", str(self.dir)]
        args += ["--daemonize", "no", "--save", "", "--logfile", str(self.dir / "redis.log")]
        if self.aof:
            args += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            args += ["--appendonly", "no"]
        if self.password:
            args += ["--requirepass", self.password]
        return args + list(self.extra_args)

    def start(self, timeout: float = 10.0) -> RedisServer:
        if self.running:
            return self
        self.dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(self.args(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _live.add(self)
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        auth = ("AUTH", self.password) if self.password else None
        while time.monotonic() < deadline:
            if not self.running:
                raise RuntimeError(f"redis-server on port {self.port} exited; see {self.dir / 'redis.log'}")
            with contextlib.suppress(OSError):
                reply = send_command(self.port, *(auth or ("PING",)))
                if reply.startswith((b"+PONG", b"+OK")):
                    return
            time.sleep(0.02)
        raise RuntimeError(f"redis-server on port {self.port} not ready after {timeout}s")

    def _wait_exit(self, sig: int) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def stop(self) -> None:
        """Graceful shutdown (SIGTERM); the data directory is kept for ``restart()``."""
        self._wait_exit(signal.SIGTERM)

    def kill(self) -> None:
        """Crash it (SIGKILL): only what was fsynced survives."""
        self._wait_exit(signal.SIGKILL)

    def restart(self) -> RedisServer:
        self.stop()
        return self.start()

    def cleanup(self) -> None:
        """Stop and remove the data directory if this object created it."""
        self.stop()
        _live.discard(self)
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.cleanup()


class RedisCluster:
    """``masters`` cluster-enabled servers joined with ``redis-cli --cluster create`` (no replicas)."""

    def __init__(self, masters: int = 3) -> None:
        self.nodes: list[RedisServer] = []
        for _ in range(masters):
            port, bus = free_port(), free_port()
            extra = (
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-port",
                str(bus),
            )
            self.nodes.append(RedisServer(port, extra_args=(*extra, "--cluster-node-timeout", "5000")))

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"{HOST}:{n.port}" for n in self.nodes)

    def start(self, timeout: float = 30.0) -> RedisCluster:
        for node in self.nodes:
            node.start()
        addrs = [f"{HOST}:{n.port}" for n in self.nodes]
        create = [REDIS_CLI, "--cluster", "create", *addrs, "--cluster-replicas", "0", "--cluster-yes"]
        subprocess.run(create, check=True, capture_output=True, timeout=timeout)
        deadline = time.monotonic() + timeout
        while not all(b"cluster_state:ok" in send_command(n.port, "CLUSTER", "INFO") for n in self.nodes):
            if time.monotonic() > deadline:
                raise RuntimeError("redis cluster did not reach cluster_state:ok")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        for node in self.nodes:
            node.cleanup()

    def __enter__(self) -> RedisCluster:
        return self.start()

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class RedisSentinel(RedisServer):
    """A sentinel monitoring ``master`` as ``service``; ``url`` is the store URL for that service."""

    def __init__(self, master: RedisServer, service: str = "mymaster") -> None:
        super().__init__()
        self.master, self.service = master, service

    @property
    def url(self) -> str:
        auth = f":{self.master.password}@" if self.master.password else ""
        return f"redis+sentinel://{auth}{HOST}:{self.port}/{self.service}"

    def args(self) -> list[str]:
        conf = self.dir / "sentinel.conf"  # sentinel rewrites its config file, so it gets its own copy
        lines = [f"port {self.port}", f"bind {HOST}", f"dir {self.dir}"]
        lines.append(f"sentinel monitor {self.service} {HOST} {self.master.port} 1")
        if self.master.password:
            lines.append(f"sentinel auth-pass {self.service} {self.master.password}")
        conf.write_text("\n".join(lines) + "\n")
        return [
            REDIS_SERVER,
            str(conf),
            "--sentinel",
            "--daemonize",
            "no",
            "--logfile",
            str(self.dir / "redis.log"),
        ]

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                reply = send_command(self.port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service)
                if str(self.master.port).encode() in reply:
                    return
            time.sleep(0.02)
        raise RuntimeError(f"sentinel on port {self.port} does not know {self.service!r} after {timeout}s")


@atexit.register
def _stop_leftovers() -> None:
    for server in list(_live):
        server.cleanup()
