"""A worker's side of ``workers: N``: what the supervisor (:mod:`proxy.workers`) hands a worker, and its use.

The supervisor starts each worker as ``wxgate run`` with these environment variables:

- ``WXGATE_WORKER``: the worker's index, 0 to N-1 (worker 0 runs the outbox redelivery: once per store);
- ``WXGATE_WORKER_LISTEN_FDS``: the listening sockets it serves ``listen`` on (bound by the supervisor, one
  ``SO_REUSEPORT`` socket per worker on Linux so the kernel spreads connections evenly);
- ``WXGATE_WORKER_ADMIN``: the Unix socket its admin server (``/metrics``, ``/healthz``, ``/readyz``) listens on,
  for the supervisor's admin port to read;
- ``WXGATE_WORKER_PARENT_FD``: the read end of a pipe the supervisor holds open; end of file means the
  supervisor is gone (even by SIGKILL), and the worker drains and exits instead of serving on unsupervised.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

INDEX = "WXGATE_WORKER"
LISTEN_FDS = "WXGATE_WORKER_LISTEN_FDS"
ADMIN = "WXGATE_WORKER_ADMIN"
PARENT_FD = "WXGATE_WORKER_PARENT_FD"


@dataclass(frozen=True)
class WorkerRole:
    index: int
    listen_fds: tuple[int, ...]
    admin_socket: str
    parent_fd: int

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> WorkerRole | None:
        """The role the supervisor gave this process; ``None`` when it runs on its own."""
        if INDEX not in environ:
            return None
        return cls(
            index=int(environ[INDEX]),
            listen_fds=tuple(int(fd) for fd in environ[LISTEN_FDS].split(",")),
            admin_socket=environ[ADMIN],
            parent_fd=int(environ[PARENT_FD]),
        )

    def environ(self) -> dict[str, str]:
        return {
            INDEX: str(self.index),
            LISTEN_FDS: ",".join(map(str, self.listen_fds)),
            ADMIN: self.admin_socket,
            PARENT_FD: str(self.parent_fd),
        }

    @property
    def runs_outbox(self) -> bool:
        """Redelivery runs once per store, not once per worker (leases keep it safe either way; this keeps it
        cheap and the backend's redelivery rate what ``outbox:`` says)."""
        return self.index == 0

    def adopt_listeners(self) -> None:
        """Make mitmproxy's reverse-proxy server accept on the inherited sockets instead of binding its own.

        mitmproxy 12 binds in ``AsyncioServerInstance.listen(host, port)`` with ``asyncio.start_server`` and has
        no option to pass a socket, and its server classes are registered one per mode (a subclass for reverse
        mode cannot be added), so this worker process replaces that one method on the reverse-mode class.
        """
        from mitmproxy.proxy import mode_servers  # here: the supervisor reads roles without loading mitmproxy

        sockets = [socket.socket(fileno=fd) for fd in self.listen_fds]

        async def listen(instance: Any, host: str, port: int) -> list[asyncio.Server]:
            return [await asyncio.start_server(instance.handle_stream, sock=s) for s in sockets]

        mode_servers.ReverseInstance.listen = listen  # type: ignore[method-assign,assignment]

    def watch_supervisor(self, gone: Callable[[], None]) -> None:
        """Call ``gone`` once when the supervisor's end of the pipe closes."""
        loop = asyncio.get_running_loop()

        def readable() -> None:
            try:
                data = os.read(self.parent_fd, 64)
            except BlockingIOError:
                return
            if not data:
                loop.remove_reader(self.parent_fd)
                gone()

        os.set_blocking(self.parent_fd, False)
        loop.add_reader(self.parent_fd, readable)
