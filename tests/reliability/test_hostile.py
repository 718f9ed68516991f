"""Hostile input over raw sockets: each case gets a clear refusal, the backend receives nothing, the proxy keeps
serving. Which layer answered (mitmproxy's own HTTP/1 parser, or wxgate with its reason) goes to the figures."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from proxy.tools.sender import Request
from tests.reliability.conftest import Figures
from tests.reliability.figures import Row
from tests.reliability.fleet import ENV, Catalog, Timing
from tests.reliability.hostile import MINI_ROUTES, Answer, Corpus, families, head, mini_text, send
from tests.support.procs import Backend, Sidecar

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Sidecar, Backend, Catalog]]:
    tmp = tmp_path_factory.mktemp("hostile")
    catalog = Catalog(tmp, Timing())
    backend = Backend(tmp)
    backend.start()
    routes = [*catalog.routes_config, *MINI_ROUTES]
    sidecar = Sidecar(tmp, {"upstream": backend.url, "routes": routes}, env=ENV, name="hostile")
    sidecar.start()
    yield sidecar, backend, catalog
    sidecar.stop()
    backend.stop()


def access_lines(sidecar: Sidecar) -> list[dict[str, object]]:
    return [line for line in sidecar.log_lines() if line.get("logger") == "wxgate.access"]


def test_every_hostile_request_is_refused_and_nothing_reaches_the_backend(
    target: tuple[Sidecar, Backend, Catalog], figures: Figures
) -> None:
    sidecar, backend, catalog = target
    cases = Corpus(catalog).cases()
    started, table = time.monotonic(), []
    # an unsigned GET after each case proves the listener still answers (403, logged last)
    alive = b"GET /mp?signature=0&timestamp=1&nonce=1 HTTP/1.1\r\nHost: x\r\n\r\n"

    async def run() -> list[tuple[Answer, Answer, str]]:
        out, seen = [], len(access_lines(sidecar))
        for case in cases:
            answer, after = await send(sidecar.port, case.wire), await send(sidecar.port, alive)
            lines = access_lines(sidecar)
            mine = lines[seen:-1]  # the case's own line, if it got as far as wxgate
            seen = len(lines)
            out.append((answer, after, str(mine[0].get("reason", "")) if mine else ""))
        return out

    answers = asyncio.run(run())
    for case, (answer, after, reason) in zip(cases, answers, strict=True):
        table.append({"case": case.name, "status": answer.status, "layer": answer.layer, "reason": reason})
        assert answer.outcome in case.expect, (case.name, answer.status, answer.layer, answer.body[:200])
        assert after.status == 403, f"the proxy stopped answering after {case.name!r}"
    assert backend.stats()["count"] == 0
    # and genuine traffic still goes through
    req = catalog.request("mp", 2)
    ok = asyncio.run(send(sidecar.port, _wire(req)))
    assert ok.status == 200 and backend.stats()["count"] == 1
    mini = Corpus(catalog).mini(
        mini_text(b'"Content":"hi","MsgId":3'), mode="safe"
    )  # the Mini Program URL too
    assert asyncio.run(send(sidecar.port, mini)).status == 200 and backend.stats()["count"] == 2
    layers = {row["layer"] for row in table}
    assert layers == {"mitmproxy", "wxgate"}
    figures.add(
        Row(
            scenario="hostile input",
            run="suite",
            seconds=time.monotonic() - started,
            load=f"{len(cases)} raw requests, one replica",
            inputs=len(cases),
            notes="; ".join(f"{k}: {v}" for k, v in sorted(families(cases).items()))
            + f". Refused by mitmproxy's parser: {sum(r['layer'] == 'mitmproxy' for r in table)}, by wxgate: "
            f"{sum(r['layer'] == 'wxgate' for r in table)}; the backend received nothing.",
            corpus=table,
        )
    )


def _wire(req: Request) -> bytes:
    return head(req.method, req.path_query, list(req.headers.items()), req.body)
