"""A legacy backend that handles ``--limit`` requests at a time and fails anything above (503), as a process of
its own on a loopback port (so that a storm test's senders and the backend do not share one interpreter).

It takes ``--work`` seconds per request, answers what a healthy WeChat Pay backend answers (v2 SUCCESS XML, v3 an
empty 200), and counts what a storm test asks (``GET /_stats``): deliveries by notification id (a Pay v2 notice's
``transaction_id``, a Pay v3 notice's ``id``), the most requests it saw at once, the requests it refused, and
the Unix time of the last delivery.

    python -m tests.support.limited_backend --port 9000 --limit 20 --work 0.1
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

from aiohttp import web

from proxy.protocols import wechat_pay_v2, xmlmsg
from tests.support.procs import WXGATE, Process, http
from tests.support.redis_servers import free_port


def notification_id(body: bytes) -> str:
    if body.lstrip().startswith(b"{"):
        return str(json.loads(body)["id"])
    return xmlmsg.parse(body)["transaction_id"]


class Counts:
    def __init__(self, limit: int, work: float) -> None:
        self.limit, self.work = limit, work
        self.delivered: Counter[str] = Counter()
        self.refused = self.max_seen = self.now = 0
        self.last_delivery = 0.0

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.now += 1
        try:
            self.max_seen = max(self.max_seen, self.now)
            if self.now > self.limit:
                self.refused += 1
                return web.Response(status=503, text="too busy")
            await asyncio.sleep(self.work)
            self.delivered[notification_id(body)] += 1
            self.last_delivery = time.time()
            if body.lstrip().startswith(b"{"):
                return web.Response(status=200)
            return web.Response(body=wechat_pay_v2.SUCCESS_XML, content_type="text/xml")
        finally:
            self.now -= 1

    async def stats(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "delivered": self.delivered,
                "refused": self.refused,
                "max_seen": self.max_seen,
                "last_delivery": self.last_delivery,
            }
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--limit", type=int, required=True)
    parser.add_argument("--work", type=float, required=True)
    args = parser.parse_args()
    counts = Counts(args.limit, args.work)
    app = web.Application()
    app.router.add_get("/_stats", counts.stats)
    app.router.add_route("*", "/{tail:.*}", counts.handle)
    web.run_app(app, host="127.0.0.1", port=args.port, backlog=1024, access_log=None, print=None)


class LimitedBackend(Process):
    """The backend above as a test's subprocess: ``start()``, ``stats()``, ``stop()``."""

    def __init__(self, tmp: Path, limit: int, work: float) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        module = "tests.support.limited_backend"
        args = [
            *WXGATE[:1],
            "-m",
            module,
            "--port",
            str(self.port),
            "--limit",
            str(limit),
            "--work",
            str(work),
        ]
        super().__init__(args, tmp / f"limited-backend-{self.port}.log")

    def start(self) -> None:
        super().start()
        self.until_ready(
            lambda: http("GET", self.url + "/_stats", timeout=1)[0] == 200, 15, "limited backend"
        )

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(http("GET", self.url + "/_stats")[1])
        return result


if __name__ == "__main__":
    main()
