"""Real wxgate and demo-backend processes for integration tests, on free loopback ports.

Each helper starts exactly one subprocess it owns, waits until it serves, and stops it by PID (SIGTERM, then
SIGKILL). Processes left behind by a failing test are stopped at interpreter exit.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from tests.support.redis_servers import free_port

ROOT = Path(__file__).resolve().parents[2]
WXGATE = [sys.executable, "-m", "proxy.cli"]
_live: set[subprocess.Popen[bytes]] = set()


@atexit.register
def _cleanup() -> None:
    for p in list(_live):
        with contextlib.suppress(ProcessLookupError):
            p.kill()


def http(
    method: str, url: str, body: bytes = b"", headers: dict[str, str] | None = None, timeout: float = 10.0
) -> tuple[int, bytes, dict[str, str]]:
    """A tiny blocking HTTP client for control calls (status, body, headers); never raises on HTTP errors."""
    req = urllib.request.Request(
        url, data=body if method != "GET" else None, method=method, headers=headers or {}
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read(), {k.lower(): v for k, v in r.headers.items()}
    except urllib.error.HTTPError as e:
        return e.code, e.read(), {k.lower(): v for k, v in e.headers.items()}


def send_outbound(url: str, out: Any) -> tuple[int, bytes]:
    """Send a built request (:class:`proxy.tools.traffic.Outbound`) to ``url`` (a sidecar's); status and body."""
    from proxy.tools.sender import Request

    r = Request.of(out)
    status, body, _ = http(r.method, url + r.path_query, r.body, r.headers)
    return status, body


def wait_until(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if check():
                return
        time.sleep(0.05)
    raise TimeoutError(f"{what} not ready within {timeout}s")


class Process:
    def __init__(self, args: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.args, self.log_path, self.env = args, log, env
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT), **(self.env or {})}
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(self.args, stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        _live.add(self.proc)

    def until_ready(self, check: Any, timeout: float, what: str) -> None:
        """Wait for a started process; one that never gets ready is stopped (and its log closed) before raising."""
        try:
            wait_until(check, timeout, what)
        except BaseException:
            self.stop(5)
            raise

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        rc = self.proc.wait(timeout)
        _live.discard(self.proc)
        self._log.close()
        return rc

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is not None:
            return self.wait(1)
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.wait(5)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.wait(5)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_lines(self) -> list[dict[str, Any]]:
        out = []
        for line in self.logs().splitlines():
            with contextlib.suppress(ValueError):
                obj = json.loads(line)
                if isinstance(obj, dict):
                    out.append(obj)
        return out


class Backend(Process):
    """The demo legacy backend."""

    def __init__(self, tmp: Path, mode: str = "passive", port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        super().__init__(
            [*WXGATE, "demo-backend", "--listen", f"127.0.0.1:{self.port}", "--mode", mode],
            tmp / f"backend-{self.port}.log",
        )

    def start(self) -> None:
        super().start()
        self.until_ready(
            lambda: http("GET", self.url + "/_demo/stats", timeout=1)[0] == 200, 15, "demo backend"
        )

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(http("GET", self.url + "/_demo/stats")[1])
        return result

    def requests(self) -> list[dict[str, Any]]:
        reqs: list[dict[str, Any]] = self.stats()["requests"]
        return reqs

    def set_mode(self, mode: str) -> None:
        assert http("POST", self.url + "/_demo/mode", mode.encode())[0] == 200


class Sidecar(Process):
    """``wxgate run`` with a configuration written from a dict."""

    def __init__(
        self,
        tmp: Path,
        config: dict[str, Any],
        env: dict[str, str] | None = None,
        port: int | None = None,
        admin_port: int | None = None,
        name: str = "wxgate",
    ) -> None:
        self.port = port or free_port()
        self.admin_port = admin_port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.admin_url = f"http://127.0.0.1:{self.admin_port}"
        cfg = {
            "listen": f"127.0.0.1:{self.port}",
            "admin": f"127.0.0.1:{self.admin_port}",
            "store": f"sqlite:///{tmp}/{name}-state.db",
            **config,
        }
        self.config = cfg
        self.config_path = tmp / f"{name}-{self.port}.yaml"
        self.config_path.write_text(yaml.safe_dump(cfg))
        super().__init__([*WXGATE, "-c", str(self.config_path), "run"], tmp / f"{name}-{self.port}.log", env)

    def start(self, wait: float = 20.0) -> None:
        super().start()

        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"wxgate exited with {self.proc.returncode}:\n{self.logs()[-3000:]}")
            return http("GET", self.admin_url + "/readyz", timeout=1)[0] == 200

        self.until_ready(ready, wait, "wxgate")

    def reload(self, config: dict[str, Any] | None = None, expect: str = "success") -> None:
        """Rewrite the configuration file (``config`` replaces the keys it names), send SIGHUP and wait until
        ``wxgate_config_reloads_total{result=expect}`` has counted it."""
        if config is not None:
            self.config = {**self.config, **config}
            self.config_path.write_text(yaml.safe_dump(self.config))
        before = self.metric("wxgate_config_reloads_total", result=expect)
        self.signal(signal.SIGHUP)
        wait_until(
            lambda: self.metric("wxgate_config_reloads_total", result=expect) > before,
            10,
            f"reload ({expect})",
        )

    def metric(self, name: str, **labels: str) -> float:
        """The value of one sample on /metrics (0.0 when absent)."""
        from prometheus_client.parser import text_string_to_metric_families

        text = http("GET", self.admin_url + "/metrics")[1].decode()
        total = 0.0
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                    total += s.value
        return total
