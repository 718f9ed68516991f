"""A real ``prometheus`` server for integration tests: scrapes given targets on a free loopback port.

It runs with its own data directory, a 1 s scrape and rule-evaluation interval and exemplar storage on, and is
always stopped by PID (``Process.stop``). Queries go through the HTTP API.
"""

from __future__ import annotations

import json
import shutil
import time
import urllib.parse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from tests.support.procs import Process, http
from tests.support.redis_servers import free_port


class Prometheus(Process):
    def __init__(self, tmp: Path, targets: dict[str, list[str]], rule_files: Sequence[Path] = ()) -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            raise RuntimeError(
                "prometheus is missing: run .ci/install-system-deps (Debian package prometheus)"
            )
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(p) for p in rule_files],
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": addrs}]} for job, addrs in targets.items()
            ],
        }
        home = tmp / f"prometheus-{self.port}"
        home.mkdir()
        (home / "prometheus.yml").write_text(yaml.safe_dump(config))
        super().__init__(
            [
                binary,
                f"--config.file={home / 'prometheus.yml'}",
                f"--storage.tsdb.path={home / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--enable-feature=exemplar-storage",
                "--log.level=warn",
            ],
            home / "prometheus.log",
        )

    def start(self) -> None:
        super().start()
        self.until_ready(lambda: http("GET", self.url + "/-/ready", timeout=1)[0] == 200, 20, "prometheus")

    def api(self, path: str, **params: str) -> Any:
        status, body, _ = http("GET", f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}")
        doc = json.loads(body)
        if status != 200 or doc.get("status") != "success":
            raise AssertionError(f"{path} {params}: {status} {doc.get('error', body[:300])}")
        return doc["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.api("query", query=expr)["result"]
        return result

    def scrapes(self, job: str) -> float:
        """How many samples of ``up`` the job has in the last minute (one per scrape)."""
        result = self.query(f'count_over_time(up{{job="{job}"}}[1m])')
        return float(result[0]["value"][1]) if result else 0.0

    def wait_for_scrapes(self, job: str, count: int, timeout: float = 20.0) -> None:
        start = self.scrapes(job)
        deadline = time.monotonic() + timeout
        while self.scrapes(job) < start + count:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"prometheus did not scrape {job} {count} more times:\n{self.logs()[-2000:]}"
                )
            time.sleep(0.2)
