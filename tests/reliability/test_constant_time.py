"""Signature comparisons are constant-time.

Two checks that cannot flake: an AST scan of ``proxy/protocols/`` finds no ``==``/``!=`` (or ``in``) between
signature-like values, and a spy on ``hmac.compare_digest`` shows that refusing a tampered signature of each
protocol went through it with the tampered value. A wall-clock check would not add to these: the early exit of
``==`` on a 40-character digest is a few nanoseconds, far below the noise of a shared 2-core machine, so any bound
loose enough never to flake could not fail either. Pay v3 verifies RSA signatures inside ``cryptography``.
"""

from __future__ import annotations

import ast
import hmac
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest

from proxy.config import parse_config
from proxy.pipeline.routes import RouteTable
from proxy.protocols.base import Inbound, Rejected
from tests.reliability.conftest import Figures
from tests.reliability.figures import Row
from tests.reliability.fleet import ENV, ROUTES, Catalog, Timing

PROTOCOLS = Path(__file__).resolve().parents[2] / "proxy" / "protocols"
SIGNATURE_LIKE = ("sig", "sign", "mac", "digest", "hmac", "token", "tail", "expected", "given")
NOT_SECRET = ("type", "prefix", "version")  # algorithm identifiers and format markers are public


def _suspicious(expr: ast.expr) -> bool:
    text = ast.unparse(expr).lower()
    if isinstance(expr, ast.Constant):
        return False
    return any(s in text for s in SIGNATURE_LIKE) and not any(s in text for s in NOT_SECRET)


def unsafe_comparisons(source: str, filename: str = "<src>") -> list[str]:
    """``file:line: expr`` for every ==, !=, in, not in whose operands look like signatures or secrets."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Compare):
            continue
        ops = (ast.Eq, ast.NotEq, ast.In, ast.NotIn)
        if any(isinstance(op, ops) for op in node.ops) and any(
            _suspicious(e) for e in [node.left, *node.comparators]
        ):
            out.append(f"{filename}:{node.lineno}: {ast.unparse(node)}")
    return out


def test_the_scanner_finds_a_plain_comparison() -> None:
    bad = "def check(given, expected_signature):\n    return given.lower() == expected_signature\n"
    assert unsafe_comparisons(bad) == ["<src>:2: given.lower() == expected_signature"]
    ok = "def check(a, b):\n    return hmac.compare_digest(a, b) and kind == 'WECHATPAY2-SHA256-RSA2048'\n"
    assert unsafe_comparisons(ok) == []


def test_no_signature_is_compared_with_eq_in_any_protocol(figures: Figures) -> None:
    found, compared = [], 0
    files = [p for p in sorted(PROTOCOLS.glob("*.py")) if p.name != "senders.py"]  # senders.py only signs
    assert len(files) >= 8
    for path in files:
        source = path.read_text()
        found += unsafe_comparisons(source, path.name)
        compared += sum(isinstance(n, ast.Compare) for n in ast.walk(ast.parse(source)))
    assert found == []
    figures.add(
        Row(
            scenario="constant time",
            run="suite",
            seconds=0.0,
            load=f"{len(files)} modules of proxy/protocols, {compared} comparisons examined",
            inputs=compared,
            notes="no ==/!=/in on a signature-like value; a tampered signature reached hmac.compare_digest in "
            "each of the six checks (MP signature and msg_signature, WeCom, Pay v2 sign, HMAC, Standard "
            "Webhooks); Pay v3's RSA signature is verified inside cryptography.",
        )
    )


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> Catalog:
    return Catalog(tmp_path_factory.mktemp("ct"), Timing())


def _flip(text: str) -> str:
    i = len(text) // 2
    return text[:i] + ("1" if text[i] != "1" else "2") + text[i + 1 :]


def _tampered(route: str, req: Any) -> tuple[Inbound, str]:
    """The request with its signature changed in the middle (same length, same alphabet), and that value."""
    parts = urlsplit(req.path_query)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    headers = {k.lower(): v for k, v in req.headers.items()}
    body = req.body
    if route in ("mp", "hmac"):
        name = "signature" if route == "mp" else "sign"
        query[name] = given = _flip(query[name])
    elif route in ("mp-safe", "wecom"):
        query["msg_signature"] = given = _flip(query["msg_signature"])
    elif route == "pay2":
        text = body.decode()
        start = text.index("<sign><![CDATA[") + len("<sign><![CDATA[")
        given = _flip(text[start : start + 64])
        body = (text[:start] + given + text[start + 64 :]).encode()
    else:  # std: base64 of the HMAC; flip a character that keeps it base64
        version, _, value = headers["webhook-signature"].partition(",")
        headers["webhook-signature"] = f"{version},{_flip(value)}"
        given = _flip(value)
    return Inbound(req.method, parts.path, query, headers, body), given


@pytest.mark.parametrize("route", ["mp", "mp-safe", "wecom", "pay2", "hmac", "std"])
def test_a_tampered_signature_is_refused_through_compare_digest(
    route: str, catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    table = RouteTable.from_config(parse_config({"routes": catalog.routes_config}, ENV))
    protocol = table.match(ROUTES[route]["path"]).protocol  # type: ignore[union-attr]
    inbound, given = _tampered(route, catalog.request(route, 4242))
    seen: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        seen.append(
            (
                bytes(a, "utf-8") if isinstance(a, str) else bytes(a),
                bytes(b, "utf-8") if isinstance(b, str) else bytes(b),
            )
        )
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    with pytest.raises(Rejected) as refused:
        protocol.verify(inbound, time.time())
    assert refused.value.reason in ("bad_signature", "bad_msg_signature", "bad_sign")
    candidates = {given.encode(), given.lower().encode(), given.upper().encode()}
    if route == "std":
        import base64

        candidates = {base64.b64decode(given)}
    assert any(b in candidates or a in candidates for a, b in seen), (
        f"{route}: {given!r} never reached compare_digest"
    )
