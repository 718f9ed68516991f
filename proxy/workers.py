"""``workers: N`` (N > 1): a supervisor process running N ``wxgate run`` workers on the one ``listen`` address.

One process serves one core (mitmproxy and the addon chain run on one event loop). The supervisor:

- binds ``listen`` itself, one ``SO_REUSEPORT`` socket per worker on Linux (the kernel spreads new connections
  evenly over them; a shared socket would let one busy worker take most of them), elsewhere one socket they all
  accept on; each worker inherits its socket (:mod:`proxy.worker_role`). The supervisor keeps its copies open,
  so connections arriving while a worker restarts wait in that socket's backlog instead of being refused;
- restarts a worker that exits, after 0.5 s doubling to 10 s while it keeps failing (back to 0.5 s once it has
  run 30 s); a worker that fails before all have started once means the configuration or the host is wrong: the
  supervisor stops the others and exits with its status (2 for a configuration error; the worker's log says why)
  instead of crash-looping;
- passes SIGHUP on to every worker (each reloads the file itself; one still starting gets it once it is up);
- on SIGTERM or SIGINT, closes its listening copies and passes SIGTERM on: each worker drains as a single
  process does, and the supervisor exits 0 once all have (workers still running ``drain_timeout`` + 15 s later
  are killed);
- serves ``admin`` for all workers (:mod:`proxy.observability.worker_admin`);
- opens a SQLite store once before starting workers, so its schema and WAL mode exist before they share it.

Workers run in their own session: a terminal's Ctrl-C reaches the supervisor alone, which drains them in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from proxy.config import Config, ConfigError, load_config
from proxy.observability.worker_admin import WorkerAdmin
from proxy.stores import SqliteStore, open_store
from proxy.worker_role import WorkerRole

logger = logging.getLogger("wxgate")

BACKOFF_MIN = 0.5
BACKOFF_MAX = 10.0
STABLE_AFTER = 30.0  # a worker that ran this long and then failed is restarted quickly again
KILL_MARGIN = 15.0  # past drain_timeout: the workers' claim release and span flush fit in it
BACKLOG = 100  # asyncio's default, which the workers' servers set again


@dataclass
class Slot:
    """One worker position: its sockets and admin socket outlive the processes that fill it."""

    index: int
    sockets: list[socket.socket]
    admin_socket: str
    proc: asyncio.subprocess.Process | None = None
    up: bool = False
    reload_pending: bool = False
    restarts: int = 0


def bind_listeners(host: str, port: int, count: int) -> list[list[socket.socket]]:
    """Each worker's listening sockets (the same ones for all where ``SO_REUSEPORT`` is missing)."""
    addrs = dict.fromkeys(
        (family, sockaddr)
        for family, _, _, _, sockaddr in socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    )
    reuseport = sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")

    def bind(family: int, sockaddr: Any) -> socket.socket:
        s = socket.socket(family, socket.SOCK_STREAM)
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuseport:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            s.bind(sockaddr)
            s.listen(BACKLOG)
        except OSError as e:
            s.close()
            raise OSError(e.errno, f"listen {host}:{port}: {e.strerror}") from None
        return s

    if not reuseport:
        shared = [bind(f, a) for f, a in addrs]
        return [shared] * count
    return [[bind(f, a) for f, a in addrs] for _ in range(count)]


class Supervisor:
    def __init__(self, config: Config, config_path: Path, count: int) -> None:
        self.config = config
        self.config_path = config_path
        groups = bind_listeners(*config.listen_addr, count)
        self.rundir = tempfile.mkdtemp(prefix="wxgate-workers-")
        self.slots = [Slot(i, groups[i], os.path.join(self.rundir, f"worker-{i}.sock")) for i in range(count)]
        # Closed by the kernel when this process ends, however it ends: workers then drain on their own.
        self._pipe_r, self._pipe_w = os.pipe()
        self.admin = WorkerAdmin(self.sockets, lambda: self.draining)
        self.draining = False
        self.started = False  # every worker has been up once
        self.failed = 0
        self._stop = asyncio.Event()

    def sockets(self) -> list[str | None]:
        return [s.admin_socket if s.up else None for s in self.slots]

    def pids(self) -> list[int]:
        return [s.proc.pid for s in self.slots if s.proc is not None and s.proc.returncode is None]

    async def run(self) -> int:
        try:
            await self._prepare_store()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.drain)
            loop.add_signal_handler(signal.SIGHUP, self.reload)
            await self.admin.start(*self.config.admin_addr)
            logger.info(
                "wxgate supervising %d workers on %s (admin %s)",
                len(self.slots),
                self.config.listen,
                self.config.admin,
            )
            codes = await asyncio.gather(*(self._keep(slot) for slot in self.slots))
        finally:
            await self.admin.stop()
            self._close()
        if self.failed:
            return self.failed
        # A worker still starting when SIGTERM came has no handler yet: it ends by the signal, having served nothing.
        return 0 if all(rc in (0, -signal.SIGTERM) for rc in codes) else 1

    async def _prepare_store(self) -> None:
        store = open_store(self.config.store)
        if isinstance(store, SqliteStore):
            await store.open()
            await store.close()

    async def _keep(self, slot: Slot) -> int:
        """Run ``slot``'s worker until draining, restarting it whenever it exits; its last exit code."""
        backoff = BACKOFF_MIN
        while True:
            started = time.monotonic()
            proc = slot.proc = await self._spawn(slot)
            watcher = asyncio.create_task(self._watch_up(slot, proc))
            rc = await proc.wait()
            watcher.cancel()
            slot.up = False
            if self.draining:
                return rc
            if not self.started:
                logger.error(
                    "worker %d exited with %s while starting; stopping (see its log above)", slot.index, rc
                )
                self.failed = rc if rc > 0 else 1  # 2: its configuration error, as a single process exits
                self.drain()
                return rc
            if time.monotonic() - started > STABLE_AFTER:
                backoff = BACKOFF_MIN
            logger.error(
                "worker %d (pid %d) exited with %s; restarting it in %.1f s",
                slot.index,
                proc.pid,
                rc,
                backoff,
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), backoff)
            if self.draining:
                return 0
            backoff = min(backoff * 2, BACKOFF_MAX)
            slot.restarts += 1

    def worker_command(self) -> list[str]:
        """How a worker is started (``wxgate run`` on the same file; the benchmark starts its own launcher)."""
        return [sys.executable, "-m", "proxy.cli", "-c", str(self.config_path), "run"]

    async def _spawn(self, slot: Slot) -> asyncio.subprocess.Process:
        fds = tuple(s.fileno() for s in slot.sockets)
        role = WorkerRole(slot.index, fds, slot.admin_socket, self._pipe_r)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(slot.admin_socket)
        return await asyncio.create_subprocess_exec(
            *self.worker_command(),
            env={**os.environ, **role.environ()},
            pass_fds=(*fds, self._pipe_r),
            start_new_session=True,
        )

    async def _watch_up(self, slot: Slot, proc: asyncio.subprocess.Process) -> None:
        """Mark ``slot`` up once its worker answers ``/healthz`` (its signal handlers are installed by then)."""
        while proc.returncode is None:
            status, _ = await self.admin.get(slot.admin_socket, "/healthz")
            if status == 200:
                slot.up = True
                logger.info("worker %d up (pid %d)", slot.index, proc.pid)
                if slot.reload_pending:
                    slot.reload_pending = False
                    proc.send_signal(signal.SIGHUP)
                self.started = self.started or all(s.up for s in self.slots)
                return
            await asyncio.sleep(0.05)

    def reload(self) -> None:
        """SIGHUP: every worker reloads the file itself; the supervisor keeps only ``drain_timeout``."""
        if self.draining:
            return
        with contextlib.suppress(ConfigError, OSError):  # the workers log what is wrong with it
            self.config = load_config(str(self.config_path), os.environ)
        for slot in self.slots:
            if slot.up and slot.proc is not None and slot.proc.returncode is None:
                slot.proc.send_signal(signal.SIGHUP)
            else:
                slot.reload_pending = True

    def drain(self) -> None:
        if self.draining:
            return
        self.draining = True
        self._stop.set()
        # The workers hold their own copies of the sockets until they stop accepting.
        self._close_listeners()
        for slot in self.slots:
            if slot.proc is not None and slot.proc.returncode is None:
                slot.proc.send_signal(signal.SIGTERM)
        asyncio.get_running_loop().call_later(self.config.drain_timeout + KILL_MARGIN, self._kill_all)

    def _kill_all(self) -> None:
        for slot in self.slots:
            if slot.proc is not None and slot.proc.returncode is None:
                logger.warning("worker %d still running after drain_timeout; killing it", slot.index)
                slot.proc.kill()

    def _close_listeners(self) -> None:
        for slot in self.slots:
            for s in slot.sockets:
                s.close()

    def _close(self) -> None:
        self._close_listeners()
        for fd in (self._pipe_r, self._pipe_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        shutil.rmtree(self.rundir, ignore_errors=True)


def supervise(config: Config, config_path: Path, count: int) -> int:
    async def main() -> int:
        return await Supervisor(config, config_path, count).run()

    return asyncio.run(main())
