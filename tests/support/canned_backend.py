"""A backend that answers what a test tells it to, over real HTTP on a loopback port (a thread of the test
process), and records every request it got: for answers the demo backend cannot give, such as a passive reply
that the backend encrypted by itself."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import ClassVar


@dataclass(frozen=True, slots=True)
class Received:
    method: str
    target: str
    headers: dict[str, str]  # names lower-cased
    body: bytes

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]


class CannedBackend:
    """``with CannedBackend() as b:`` serves on ``b.url``; ``b.answer(status, content_type, body)`` sets what
    every following request gets (``success`` at first); ``b.received`` lists what came in."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self._reply: tuple[int, str, bytes] = (200, "text/plain", b"success")
        self._lock = threading.Lock()
        backend = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version: ClassVar[str] = "HTTP/1.1"  # type: ignore[misc]  # keep-alive, as wxgate pools

            def _serve(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                headers = {k.lower(): v for k, v in self.headers.items()}
                with backend._lock:
                    backend.received.append(Received(self.command, self.path, headers, body))
                    status, content_type, data = backend._reply
                self.send_response(status)
                self.send_header("content-type", content_type)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _serve

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def answer(self, status: int, content_type: str, body: bytes) -> None:
        with self._lock:
            self._reply = (status, content_type, body)

    def reset(self) -> None:
        with self._lock:
            self.received.clear()
            self._reply = (200, "text/plain", b"success")

    def __enter__(self) -> CannedBackend:
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
