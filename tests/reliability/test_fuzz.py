"""Hypothesis against every parser, verifier and envelope, and against the whole addon chain.

Only documented outcomes: a parser returns or raises :class:`Rejected` with a 4xx status and a reason listed in
docs/operations.md's troubleshooting table; a verifier verifies or refuses the same way; the addon chain answers
every request itself (no exception escapes a hook, none is swallowed as ``verify_error``/``dedup_error``/
``forward_error``), and forwards nothing it did not verify. Inputs are random bytes and, mostly, mutations of
correctly signed requests of every protocol, so the checks past the signature are reached too.
``WXGATE_FUZZ_EXAMPLES`` sets the examples per target (the soak raises it).
"""

from __future__ import annotations

import asyncio
import inspect
import os
import re
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mitmproxy import http
from mitmproxy.test import tflow
from prometheus_client import CollectorRegistry

from addons.admission import Admission
from addons.dedup import Dedup
from addons.envelope import Envelope
from addons.forward import Forward
from addons.metrics import MetricsAddon
from addons.routing import Routing
from addons.start import ExchangeStart
from addons.verify import Verify
from proxy.config import parse_config
from proxy.observability.metrics import Metrics
from proxy.pipeline.exchange import Exchange, exchange
from proxy.pipeline.outbox import StoreSettlement
from proxy.pipeline.routes import RouteTable
from proxy.protocols import payload, wechat_pay_v2, wechat_pay_v3, wxcrypt, xmlmsg
from proxy.protocols.base import Inbound, Rejected, Verified
from proxy.stores import SqliteStore
from proxy.tasks import BackgroundTasks
from proxy.upstream.client import UpstreamClient, UpstreamResult
from tests.reliability.conftest import Figures
from tests.reliability.figures import Row
from tests.reliability.fleet import AES, APP_ID, ENV, PAY_KEY, ROUTES, V3_KEY, Catalog, Timing

EXAMPLES = int(os.environ.get("WXGATE_FUZZ_EXAMPLES", "150"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,  # reproducible from the seed printed on failure; nothing written to .hypothesis
)
OPERATIONS = Path(__file__).resolve().parents[2] / "docs" / "operations.md"
CODE = re.compile(r"[a-z][a-z0-9]*(_[a-z0-9]+)+")
INTERNAL = {"verify_error", "dedup_error", "forward_error", "not_verified", "passthrough_error"}
tried: dict[str, int] = {}


def documented_reasons() -> set[str]:
    """Reason codes in the first column of operations.md's troubleshooting table."""
    text = OPERATIONS.read_text()
    section = text[text.index("## Troubleshooting signature failures") : text.index("## Other problems")]
    rows = [line.split("|")[1] for line in section.splitlines() if line.startswith("| `")]
    return {code for row in rows for code in re.findall(r"`([a-z0-9_]+)`", row)}


DOCUMENTED = documented_reasons()


def refused_properly(e: Rejected) -> None:
    assert e.reason in DOCUMENTED, f"undocumented reason {e.reason!r}"
    assert 400 <= e.status < 500, (e.reason, e.status)


def count(target: str) -> None:
    tried[target] = tried.get(target, 0) + 1


# -- inputs ----------------------------------------------------------------------------------------------------

FRAGMENTS = [
    b"<xml>",
    b"</xml>",
    b"<a>",
    b"</a>",
    b"<Encrypt>",
    b"</Encrypt>",
    b"<MsgId>1</MsgId>",
    b"<![CDATA[",
    b"]]>",
    b"<!DOCTYPE x [",
    b"<!ENTITY e 'v'>",
    b"<!ENTITY % p SYSTEM 'file:///etc/passwd'>",
    b"]>",
    b"&e;",
    b"&#0;",
    b"<?xml version='1.0' encoding='utf-16'?>",
    b"<?xml version='1.0' encoding='latin-1'?>",
    b"\x00",
    b"\xff\xfe",
    b'{"encrypt":',
    b'"',
    b"{",
    b"}",
    b"[",
    b"]",
    b"1e999",
    b"NaN",
    b"null",
    b"\\ud800",
    b"=",
    b"%",
    b"&",
]
xmlish = st.lists(st.sampled_from(FRAGMENTS) | st.binary(max_size=16), max_size=24).map(b"".join)
bodies = st.binary(max_size=600) | xmlish
texts = st.text(max_size=80) | st.sampled_from(
    ["", " ", "0" * 40, "A" * 64, "=", "==", "%ff", "\x00", "1" * 13]
)


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> Catalog:
    return Catalog(tmp_path_factory.mktemp("fuzz"), Timing())


@pytest.fixture(scope="module")
def table(catalog: Catalog) -> RouteTable:
    return RouteTable.from_config(parse_config({"routes": catalog.routes_config, "unmatched": "deny"}, ENV))


def inbound_of(req: Any) -> Inbound:
    parts = urlsplit(req.path_query)
    query: dict[str, str] = {}
    for k, v in parse_qsl(parts.query, keep_blank_values=True):
        query.setdefault(k, v)
    return Inbound(req.method, parts.path, query, {k.lower(): v for k, v in req.headers.items()}, req.body)


@st.composite
def mutated(draw: st.DrawFn, catalog: Catalog) -> tuple[str, Inbound]:
    """A correctly signed request of a random route, then 0-3 mutations of its body, query or headers."""
    route = draw(st.sampled_from(sorted(ROUTES)))
    inbound = inbound_of(catalog.request(route, draw(st.integers(1, 10**6))))
    method, query, headers, body = inbound.method, dict(inbound.query), dict(inbound.headers), inbound.body
    for _ in range(draw(st.integers(0, 3))):
        op = draw(
            st.sampled_from(["flip", "truncate", "append", "body", "query", "drop", "header", "method"])
        )
        if op == "flip" and body:
            i = draw(st.integers(0, len(body) - 1))
            body = body[:i] + bytes([body[i] ^ draw(st.integers(1, 255))]) + body[i + 1 :]
        elif op == "truncate":
            body = body[: draw(st.integers(0, len(body)))]
        elif op == "append":
            body += draw(bodies)
        elif op == "body":
            body = draw(bodies)
        elif op == "query":
            query[draw(st.sampled_from([*query, "encrypt_type", "x"]))] = draw(texts)
        elif op == "drop" and (query or headers):
            victim = draw(st.sampled_from(sorted({*query, *headers})))
            query.pop(victim, None)
            headers.pop(victim, None)
        elif op == "header":
            headers[draw(st.sampled_from([*headers, "content-type", "x-wxgate-verified"]))] = draw(texts)
        elif op == "method":
            method = draw(st.sampled_from(["GET", "PUT", "DELETE", "PATCH", "HEAD"]))
    return route, Inbound(method, inbound.path, query, headers, body)


# -- parsers and envelopes -------------------------------------------------------------------------------------


@FUZZ
@given(body=bodies, root=st.sampled_from(["xml", "root", None]))
def test_xml_parser(body: bytes, root: str | None) -> None:
    count("XML parser")
    try:
        fields = xmlmsg.parse(body, root=root)
    except Rejected as e:
        refused_properly(e)
        return
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in fields.items())
    assert len(fields) <= xmlmsg.MAX_FIELDS + 1


@FUZZ
@given(body=bodies | st.binary(max_size=64).map(lambda b: b"[" * 5000 + b), as_text=st.booleans())
def test_json_parser(body: bytes, as_text: bool) -> None:
    count("JSON parser")
    try:
        doc = payload.parse_object(body, numbers_as_text=as_text)
        flat = payload.flatten(doc)
    except Rejected as e:
        refused_properly(e)
        return
    assert all(isinstance(v, str) for v in flat.values())
    assert payload.describe("", body) in ("empty", "json", "html", "xml", "text")


@FUZZ
@given(
    text=texts | st.binary(min_size=0, max_size=96).map(lambda b: __import__("base64").b64encode(b).decode()),
    receive_id=st.sampled_from([APP_ID, "", "ww1"]),
)
def test_aes_cbc_envelope(text: str, receive_id: str) -> None:
    count("AES-CBC envelope (MP/WeCom)")
    keys = [wxcrypt.AesKey.decode("current", AES)]
    try:
        opened = wxcrypt.decrypt(keys, text, (receive_id,))
    except Rejected as e:
        refused_properly(e)
        return
    assert opened.receive_id == receive_id


@FUZZ
@given(data=st.binary(max_size=96))
def test_aes_cbc_envelope_round_trip_and_bit_flips(data: bytes) -> None:
    count("AES-CBC envelope (MP/WeCom)")
    key = wxcrypt.AesKey.decode("current", AES)
    text = wxcrypt.encrypt(key.key, data, APP_ID, b"r" * 16)
    assert wxcrypt.decrypt([key], text, (APP_ID,)).message == data
    raw = bytearray(__import__("base64").b64decode(text))
    raw[len(raw) // 2] ^= 0x5A
    try:
        wxcrypt.decrypt([key], __import__("base64").b64encode(bytes(raw)).decode(), (APP_ID,))
    except Rejected as e:
        refused_properly(e)


@FUZZ
@given(text=texts)
def test_pay_v2_refund_envelope(text: str) -> None:
    count("AES-ECB refund envelope (Pay v2)")
    try:
        wechat_pay_v2.decrypt_req_info(PAY_KEY, text)
    except Rejected as e:
        refused_properly(e)


@FUZZ
@given(
    resource=st.dictionaries(
        st.sampled_from(["algorithm", "ciphertext", "nonce", "associated_data", "x"]),
        texts | st.integers() | st.none() | st.just(wechat_pay_v3.ALGORITHM),
        max_size=5,
    )
)
def test_pay_v3_resource_envelope(resource: Mapping[str, Any]) -> None:
    count("AES-GCM resource (Pay v3)")
    try:
        wechat_pay_v3.decrypt_resource([V3_KEY.encode()], resource)
    except Rejected as e:
        refused_properly(e)


# -- verifiers -------------------------------------------------------------------------------------------------


@FUZZ
@given(data=st.data())
def test_every_verifier_only_verifies_or_refuses_with_a_documented_reason(
    data: st.DataObject, catalog: Catalog, table: RouteTable
) -> None:
    count("verifiers (6 protocols)")
    route, inbound = data.draw(mutated(catalog))
    runtime = table.match(ROUTES[route]["path"])
    assert runtime is not None
    try:
        verified = runtime.protocol.verify(inbound, time.time())
    except Rejected as e:
        refused_properly(e)
        return
    assert isinstance(verified, Verified)
    runtime.protocol.dedup_key(verified)  # never raises on what verified


@FUZZ
@given(data=st.data(), status=st.integers(200, 299), ctype=texts, body=bodies)
def test_every_reply_contract_normalizes_any_backend_answer(
    data: st.DataObject, status: int, ctype: str, body: bytes, catalog: Catalog, table: RouteTable
) -> None:
    count("reply contracts and sealing")
    route = data.draw(st.sampled_from(sorted(ROUTES)))
    runtime = table.match(ROUTES[route]["path"])
    assert runtime is not None
    verified = runtime.protocol.verify(inbound_of(catalog.request(route, 7)), time.time())
    runtime.protocol.is_backend_failure(status, ctype, body)
    reply = runtime.protocol.normalize(status, ctype, body, verified)
    sealed = runtime.protocol.seal(reply, verified)
    assert 200 <= sealed.status < 300 and sealed.kind in ("ack", "passive", "failure")


# -- the addon chain -------------------------------------------------------------------------------------------


class RecordingUpstream(UpstreamClient):
    def __init__(self, answer: UpstreamResult) -> None:
        super().__init__()
        self.answer = answer
        self.calls: list[dict[str, str]] = []

    async def send(
        self, method: str, url: str, headers: Mapping[str, str], body: bytes, timeout: float
    ) -> UpstreamResult:
        self.calls.append(dict(headers))
        return self.answer


def flow_of(
    method: str, path: str, query: Mapping[str, str], headers: Mapping[str, str], body: bytes
) -> http.HTTPFlow:
    f = tflow.tflow()
    target = path + ("?" + urlencode(query) if query else "")
    f.request = http.Request(
        "wxgate.test",
        80,
        method.encode(),
        b"http",
        b"",
        target.encode("utf-8", "surrogateescape"),
        b"HTTP/1.1",
        http.Headers(
            [
                (k.encode("utf-8", "surrogateescape"), v.encode("utf-8", "surrogateescape"))
                for k, v in headers.items()
            ]
        ),
        body,
        None,
        time.time(),
        time.time(),
    )
    f.client_conn.peername = ("203.0.113.9", 40000)
    return f


async def through_chain(
    table: RouteTable, f: http.HTTPFlow, answer: UpstreamResult
) -> tuple[Exchange, RecordingUpstream]:
    store = SqliteStore(":memory:")
    await store.open()
    tasks, up = BackgroundTasks(), RecordingUpstream(answer)
    settlement = StoreSettlement(store)
    chain = [
        MetricsAddon(Metrics(CollectorRegistry())),
        ExchangeStart(),
        Routing(table, "deny"),
        Admission(),
        Verify(store.remember),
        Envelope(),
        Dedup(store, settlement),
        Forward(up, settlement, tasks),
    ]
    try:
        for hook in ("requestheaders", "request", "response"):
            for addon in chain:
                fn = getattr(addon, hook, None)
                if fn is not None and not (hook == "response" and f.response is None):
                    result = fn(f)
                    if inspect.isawaitable(result):
                        await result
        await tasks.drain(2)
    finally:
        await store.close()
    ex = exchange(f)
    assert ex is not None
    return ex, up


ANSWERS = [
    UpstreamResult("2xx", 200, "application/xml", b"<xml><MsgType>text</MsgType></xml>"),
    UpstreamResult("5xx", 500, "text/html", b"<h1>500</h1>"),
    UpstreamResult("refused"),
]


@FUZZ
@given(
    data=st.data(),
    answer=st.sampled_from(ANSWERS),
    path=st.sampled_from([*(r["path"] for r in ROUTES.values()), "/x"]),
)
def test_the_addon_chain_answers_everything_and_forwards_only_what_it_verified(
    data: st.DataObject, answer: UpstreamResult, path: str, catalog: Catalog, table: RouteTable
) -> None:
    count("addon chain")
    _, inbound = data.draw(mutated(catalog))
    if data.draw(st.booleans()):
        path = inbound.path
    f = flow_of(inbound.method, path, inbound.query, inbound.headers, inbound.body)
    ex, up = asyncio.run(through_chain(table, f, answer))
    assert f.response is not None, "every request to wxgate is answered by wxgate"
    assert ex.outcome.reason not in INTERNAL, f"an addon hit an unexpected error: {ex.outcome.reason}"
    if ex.outcome.verdict == "rejected" and ex.outcome.reason != "store_unavailable":
        assert ex.outcome.reason in DOCUMENTED, ex.outcome.reason
        pay_v2_form = f.response.status_code == 200 and b"FAIL" in f.response.content
        assert 400 <= f.response.status_code < 500 or pay_v2_form, (ex.outcome.reason, f.response.status_code)
    if up.calls:
        assert ex.outcome.verdict == "verified"
        for headers in up.calls:
            assert headers["x-wxgate-verified"] == "1"
            spoofable = {k for k in headers if k.replace("_", "-").startswith("x-wxgate-")}
            assert spoofable <= {
                "x-wxgate-verified",
                "x-wxgate-protocol",
                "x-wxgate-route",
                "x-wxgate-dedup-key",
                "x-wxgate-attempt",
            }
            # the route of the path asked for (routes sharing a token accept each other's plain signature)
            assert headers["x-wxgate-route"] == next(n for n, r in ROUTES.items() if r["path"] == path)


@pytest.fixture(scope="module", autouse=True)
def report(figures: Figures) -> Iterator[None]:
    started = time.monotonic()
    yield
    if tried:
        figures.add(
            Row(
                scenario="fuzzing",
                run="suite",
                seconds=time.monotonic() - started,
                load=f"hypothesis, {EXAMPLES} examples per target",
                inputs=sum(tried.values()),
                notes="; ".join(f"{k}: {v:,}" for k, v in sorted(tried.items()))
                + "; no undocumented outcome.",
            )
        )


REASON_ARG = {"Rejected": 0, "reject": 2, "_b64": 1, "match_token": 3, "decrypt": 3}  # where the reason goes
ROOT = Path(__file__).resolve().parents[2]
SOURCES = [*ROOT.glob("proxy/**/*.py"), *ROOT.glob("addons/*.py")]


def reasons_in_code() -> set[str]:
    """String constants handed to the calls that refuse a request, or set as an outcome's reason."""
    import ast

    found: set[str] = set()
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text())):
            consts: list[ast.expr] = []
            if isinstance(node, ast.Call):
                name = (
                    node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
                )
                if name in REASON_ARG and len(node.args) > REASON_ARG[name]:
                    consts = [node.args[REASON_ARG[name]]]
            elif isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Attribute) and t.attr == "reason" for t in node.targets
            ):
                consts = [node.value]
            elif isinstance(node, ast.Return) and node.value is not None:  # ("reason", status)
                values = (
                    [node.value.body, node.value.orelse]
                    if isinstance(node.value, ast.IfExp)
                    else [node.value]
                )
                consts = [v.elts[0] for v in values if isinstance(v, ast.Tuple) and len(v.elts) == 2]
            found |= {
                c.value
                for c in consts
                if isinstance(c, ast.Constant) and isinstance(c.value, str) and CODE.fullmatch(c.value)
            }
    return found - {"url_verification"}  # the reason of an echo answered by wxgate, not a refusal


def test_every_reason_the_code_can_give_is_documented() -> None:
    code = reasons_in_code()
    assert {"bad_signature", "xml_dtd_forbidden", "headers_too_large", "wrong_app_id", "bad_base64"} <= code
    assert code - DOCUMENTED == set(), "add these to docs/operations.md#troubleshooting-signature-failures"
