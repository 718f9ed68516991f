"""Observability end to end: a real Prometheus scrapes a real wxgate (traces exported over OTLP/HTTP to a local
receiver) while traffic of every outcome flows; then every dashboard and rule expression must return data,
exemplars must name exported traces, the backend must have received the client span's traceparent, and no
secret may appear in the logs, the metrics or the spans.
"""

from __future__ import annotations

import http.client as http_client
import json
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from proxy.config import parse_config
from proxy.protocols import xmlmsg
from proxy.tools import sender, traffic
from tests.dashboards.queries import (
    ALERTS,
    RECORDING,
    live,
    panel_queries,
    rule_queries,
    substitute,
    variable_selectors,
)
from tests.support.otlp import OtlpReceiver, Span
from tests.support.procs import Backend, Sidecar, http, wait_until
from tests.support.prometheus import Prometheus
from tests.support.redis_servers import free_port

pytestmark = pytest.mark.integration

# Known secrets: none of them may show up in a log line, a metric or a span.
MP_TOKEN = "tok-S3cr3t-9f2c41"
MP_AES = "S3cr3tAesKey0123456789abcdefghijklmnopqrstu"  # 43 characters
PAY_KEY = "S3cr3tApiV3Key0123456789abcdefgh"  # 32 characters
CONTENT = "content-S3cr3t-77-你好"
OPENID = "oS3cr3tUser000000000000001"
ENV = {"MP_TOKEN": MP_TOKEN, "MP_AES": MP_AES, "PAY_KEY": PAY_KEY}
PUB_KEY_ID = "PUB_KEY_ID_0114232134912410000000000000"
FAST_OUTBOX = {"backoff_base": "0.1s", "backoff_max": "0.2s"}
JOB = "wxgate"


def mp(name: str, path: str, **over: Any) -> dict[str, Any]:
    return {"name": name, "path": path, "protocol": "wechat-mp", "token": "${MP_TOKEN}", **over}


@dataclass
class Run:
    sidecar: Sidecar
    backend: Backend
    prometheus: Prometheus
    otlp: OtlpReceiver
    requests: int = 0  # HTTP requests sent to the sidecar
    secrets: list[str] = field(default_factory=list)


def routes_config(tmp: Path) -> dict[str, Any]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (tmp / "pay-signing.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    (tmp / "pay-public.pem").write_bytes(traffic.public_key_pem(key))
    down = f"http://127.0.0.1:{free_port()}"
    return {
        "routes": [
            mp("mp", "/wechat/callback", deadline="0.5s", outbox=FAST_OUTBOX),
            mp(
                "mpsafe",
                "/wechat/safe",
                app_id="wx1234567890abcdef",
                encoding_aes_key="${MP_AES}",
                decrypt_for_backend=True,
            ),
            mp("mpfail", "/wechat/fail", on_backend_failure="fail", deadline="0.5s", backend_timeout="1s"),
            mp(
                "mpdown",
                "/wechat/down",
                upstream=down,
                backend_timeout="1s",
                outbox={"max_attempts": 1, **FAST_OUTBOX},
            ),
            {
                "name": "pay",
                "path": "/pay/v3",
                "protocol": "wechat-pay-v3",
                "apiv3_key": "${PAY_KEY}",
                "mch_id": "1900000109",
                "public_keys": [{"id": PUB_KEY_ID, "file": str(tmp / "pay-public.pem")}],
            },
        ]
    }


class Traffic:
    """Requests of every outcome, built with the route configuration the sidecar runs."""

    def __init__(self, run: Run, config: dict[str, Any], tmp: Path) -> None:
        self.run = run
        self.routes = {r.name: r for r in parse_config(config, ENV).routes}
        self.signing_key = tmp / "pay-signing.pem"
        self.n = 1000

    def build(self, route: str, **opts: Any) -> sender.Request:
        self.n += 1
        defaults: dict[str, Any] = {"content": CONTENT, "user": OPENID, "message_id": str(self.n)}
        if route == "pay":
            defaults["signing_key"] = self.signing_key
        req = sender.build(self.routes[route], sender.SendOptions(**{**defaults, **opts}))
        self._remember_secrets(req)
        return req

    def _remember_secrets(self, req: sender.Request) -> None:
        query = dict(p.split("=", 1) for p in req.path_query.partition("?")[2].split("&") if "=" in p)
        self.run.secrets += [query[k] for k in ("signature", "msg_signature") if k in query]
        self.run.secrets += [v for k, v in req.headers.items() if k == "wechatpay-signature"]
        body = req.body.decode("utf-8", "replace")
        if "<Encrypt>" in body:
            self.run.secrets.append(xmlmsg.parse(req.body)["Encrypt"])
        if '"ciphertext"' in body:
            self.run.secrets.append(json.loads(body)["resource"]["ciphertext"])

    def send(self, req: sender.Request) -> tuple[int, bytes]:
        self.run.requests += 1
        status, body, _ = http(req.method, self.run.sidecar.url + req.path_query, req.body, req.headers)
        return status, body

    def keep_alive(self, *reqs: sender.Request) -> None:
        """Several requests on one connection: each must still be a trace of its own."""
        conn = http_client.HTTPConnection("127.0.0.1", self.run.sidecar.port, timeout=10)
        try:
            for req in reqs:
                self.run.requests += 1
                conn.request(req.method, req.path_query, req.body, req.headers)
                resp = conn.getresponse()
                assert resp.status == 200 and resp.getheader("connection", "").lower() != "close"
                resp.read()
        finally:
            conn.close()

    def mode(self, mode: str) -> None:
        self.run.backend.set_mode(mode)

    def every_outcome(self) -> None:
        s = self.send
        self.mode("passive")
        assert s(self.build("mp", kind="verify"))[0] == 200  # URL verification, answered by wxgate
        first = self.build("mp")
        assert s(first)[0] == 200  # verified, forwarded, passive reply
        assert s(first)[0] == 200  # the same delivery again: replayed from the dedup record
        good = self.build("mp")
        forged = sender.Request(
            good.method, good.path_query.replace("signature=", "signature=0"), good.headers, good.body
        )
        assert s(forged)[0] == 403  # rejected: bad signature
        assert s(self.build("mpsafe"))[0] == 200  # safe mode: decrypted for the backend, reply sealed
        assert s(self.build("pay"))[0] in (200, 204)  # Pay v3: RSA-verified, resource decrypted
        assert s(self.build("pay", probe=True))[0] >= 400  # WeChat Pay's signature probe: refused
        oversized = self.build("mp", content="x" * (300 * 1024))
        assert s(oversized)[0] == 413
        self.run.requests += 1
        assert http("POST", self.run.sidecar.url + "/not/a/route", b"hello")[0] == 200  # passthrough
        self.keep_alive(self.build("mpsafe", content="first"), self.build("mpsafe", content="second"))
        self.mode("json")
        assert s(self.build("mp")) == (200, b"success")  # normalized
        self.mode("fail")
        assert s(self.build("mpfail"))[0] == 502  # failure passed on (policy fail)
        self.mode("slow:1.5")
        slow = self.build("mp")
        retry = threading.Thread(target=lambda: (time.sleep(0.1), s(slow)))  # a retry while in flight
        retry.start()
        assert s(slow) == (200, b"success")  # deadline (0.5 s) fires: ack, outbox keeps it
        retry.join(5)
        assert s(self.build("mpfail"))[0] == 502  # deadline under fail; the call then times out (1 s)
        assert s(self.build("mpdown")) == (200, b"success")  # refused: acked, outbox, then a dead letter
        time.sleep(1.6)  # let the slow calls end before the backend changes mode
        self.mode("passive")


@pytest.fixture(scope="module")
def run(tmp_module: Path, backend: Backend) -> Iterator[Run]:
    otlp = OtlpReceiver()
    otlp.start()
    config = {"upstream": backend.url, **routes_config(tmp_module)}
    env = {
        **ENV,
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": otlp.endpoint,
        "OTEL_EXPORTER_OTLP_HEADERS": "x-tenant=wxgate-it",
        "OTEL_BSP_SCHEDULE_DELAY": "200",
        "OTEL_SERVICE_NAME": "wxgate-it",
    }
    sidecar = Sidecar(tmp_module, config, env=env, name="observed")
    prometheus = Prometheus(tmp_module, {JOB: [f"127.0.0.1:{sidecar.admin_port}"]}, [RECORDING, ALERTS])
    r = Run(sidecar, backend, prometheus, otlp)
    try:
        sidecar.start()
        prometheus.start()
        prometheus.wait_for_scrapes(JOB, 2)  # a baseline before the traffic, so rates see it
        http("POST", backend.url + "/_demo/reset")
        Traffic(r, config, tmp_module).every_outcome()
        wait_until(lambda: sidecar.metric("wxgate_outbox_dead_letters") >= 1, 12, "the dead letter gauge")
        prometheus.wait_for_scrapes(JOB, 3)
        yield r
    finally:
        prometheus.stop()
        sidecar.stop()
        otlp.stop()


def failures(prom: Prometheus, exprs: list[tuple[str, str]]) -> list[str]:
    bad = []
    for where, expr in exprs:
        try:
            if not prom.query(expr):
                bad.append(f"{where}: no data for {expr}")
        except AssertionError as e:
            bad.append(f"{where}: {e}")
    return bad


def test_every_dashboard_and_rule_expression_returns_data(run: Run) -> None:
    queries = panel_queries() + rule_queries() + variable_selectors()
    exprs = [(q.where, substitute(live(q.expr), job=JOB, rate="30s")) for q in queries]
    assert failures(run.prometheus, exprs) == []


def test_panels_return_data_for_one_selected_route_and_instance(run: Run) -> None:
    instance = f"127.0.0.1:{run.sidecar.admin_port}"
    exprs = [(q.where, substitute(live(q.expr), JOB, instance, "mp", "30s")) for q in panel_queries()]
    assert failures(run.prometheus, exprs) == []


def test_the_dashboard_variables_resolve_to_the_running_sidecar(run: Run) -> None:
    assert run.prometheus.api("label/job/values", **{"match[]": "wxgate_build_info"}) == [JOB]
    routes = run.prometheus.api("label/route/values", **{"match[]": "wxgate_request_duration_seconds_count"})
    assert set(routes) == {"mp", "mpsafe", "mpfail", "mpdown", "pay", "unmatched"}


def sample(run: Run, expr: str) -> float:
    result = run.prometheus.query(expr)
    return sum(float(r["value"][1]) for r in result)


def test_every_outcome_was_counted(run: Run) -> None:
    j = f'job="{JOB}"'
    assert sample(run, f'wxgate_verifications_total{{{j}, result="ok", reason="url_verification"}}') == 1
    assert sample(run, f'wxgate_verifications_total{{{j}, result="probe", reason="signature_probe"}}') == 1
    assert sample(run, f'wxgate_verifications_total{{{j}, result="rejected"}}') >= 1
    assert sample(run, f'wxgate_dedup_total{{{j}, result="duplicate_done"}}') >= 1
    assert sample(run, f'wxgate_dedup_total{{{j}, result="duplicate_inflight"}}') >= 1
    assert sample(run, f'wxgate_replies_normalized_total{{{j}, route="mp", reason="json"}}') == 1
    assert sample(run, f'wxgate_deadline_fired_total{{{j}, policy="ack"}}') >= 1
    assert sample(run, f'wxgate_deadline_fired_total{{{j}, policy="fail"}}') == 1
    for result in ("2xx", "5xx", "timeout", "refused"):
        assert sample(run, f'wxgate_upstream_requests_total{{{j}, result="{result}"}}') >= 1, result
    assert sample(run, f'wxgate_requests_total{{{j}, code="502"}}') == 2
    assert sample(run, f'wxgate_requests_total{{{j}, code="413"}}') == 1
    assert sample(run, f'wxgate_outbox_enqueued_total{{{j}, route="mpdown"}}') == 1
    assert sample(run, f'wxgate_outbox_dead_lettered_total{{{j}, route="mpdown"}}') == 1
    assert sample(run, f"wxgate_outbox_dead_letters{{{j}}}") == 1
    assert sample(run, f'wxgate_store_operation_duration_seconds_count{{{j}, operation="claim_signed"}}') >= 5
    assert sample(run, f"process_resident_memory_bytes{{{j}}}") > 10e6
    assert run.prometheus.query(f'wxgate_build_info{{{j}, version!=""}}')


def test_exemplars_name_traces_that_were_exported(run: Run) -> None:
    now = time.time()
    data = run.prometheus.api(
        "query_exemplars",
        query=f'wxgate_request_duration_seconds_bucket{{job="{JOB}"}}',
        start=str(now - 300),
        end=str(now),
    )
    trace_ids = {e["labels"]["trace_id"] for series in data for e in series["exemplars"]}
    assert trace_ids, "no exemplars stored: the scrape must be OpenMetrics"
    exported = {s.trace_id for s in run.otlp.snapshot()}
    assert trace_ids <= exported
    upstream = run.prometheus.api(
        "query_exemplars",
        query=f'wxgate_upstream_duration_seconds_bucket{{job="{JOB}"}}',
        start=str(now - 300),
        end=str(now),
    )
    assert {e["labels"]["trace_id"] for s in upstream for e in s["exemplars"]} <= exported


def test_promtool_check_metrics_on_the_live_exposition(run: Run) -> None:
    _, text, headers = http("GET", run.sidecar.admin_url + "/metrics")
    assert headers["content-type"].startswith("text/plain")
    out = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, timeout=30)
    assert out.returncode == 0, (out.stdout + out.stderr).decode()
    _, om, headers = http(
        "GET",
        run.sidecar.admin_url + "/metrics",
        headers={"Accept": "application/openmetrics-text; version=1.0.0"},
    )
    assert headers["content-type"].startswith("application/openmetrics-text")
    assert b"# {span_id=" in om and om.rstrip().endswith(b"# EOF")


def spans_when(run: Run, predicate: Any, what: str) -> list[Span]:
    found: list[Span] = []

    def ready() -> bool:
        found[:] = [s for s in run.otlp.snapshot() if predicate(s)]
        return bool(found)

    wait_until(ready, 10, what)
    return found


def test_a_forwarded_request_is_one_exported_trace(run: Run) -> None:
    servers = spans_when(
        run,
        lambda s: (
            s.kind == OtlpReceiver.SERVER
            and s.attributes.get("wxgate.route") == "mp"
            and s.attributes.get("wxgate.upstream.result") == "2xx"
        ),
        "a forwarded mp request's server span",
    )
    server = servers[0]
    assert server.name == "POST /wechat/callback" and server.parent_span_id == ""
    assert server.resource["service.name"] == "wxgate-it"
    assert server.attributes["http.route"] == "/wechat/callback"
    assert server.attributes["http.response.status_code"] == 200
    assert (
        server.attributes["wxgate.verdict"] == "verified"
        and server.attributes["wxgate.dedup.result"] == "new"
    )
    children = [s for s in run.otlp.snapshot() if s.parent_span_id == server.span_id]
    assert "POST /wechat/callback" in {c.name for c in children}
    assert all(c.trace_id == server.trace_id for c in children)
    # The replay check and the claim (one call), then the completion: timed on the server span; a store call
    # gets a span of its own only when it took 50 ms or more (WXGATE_STORE_SPAN_MIN_MS) or failed.
    assert server.attributes["wxgate.store.calls"] >= 2 and server.attributes["wxgate.store.ms"] > 0
    for store_span in (c for c in children if c.name.startswith("store ")):
        assert store_span.end_ns - store_span.start_ns >= 50_000_000 or store_span.status == 2
    assert any(h.get("x-tenant") == "wxgate-it" for h in run.otlp.headers)  # OTEL_EXPORTER_OTLP_HEADERS


def test_requests_sharing_a_connection_are_separate_traces(run: Run) -> None:
    safe = [
        s
        for s in run.otlp.snapshot()
        if s.kind == OtlpReceiver.SERVER and s.attributes.get("wxgate.route") == "mpsafe"
    ]
    assert len(safe) == 3
    assert all(s.parent_span_id == "" for s in safe)
    assert len({s.trace_id for s in safe}) == 3


def test_span_status_follows_semconv(run: Run) -> None:
    spans = run.otlp.snapshot()
    rejected = [
        s
        for s in spans
        if s.kind == OtlpReceiver.SERVER and s.attributes.get("http.response.status_code") == 403
    ]
    failed = [
        s
        for s in spans
        if s.kind == OtlpReceiver.SERVER and s.attributes.get("http.response.status_code") == 502
    ]
    assert rejected and all(s.status == 0 for s in rejected)  # 4xx on a server span: UNSET
    assert len(failed) == 2 and all(s.status == 2 and s.attributes["error.type"] == "502" for s in failed)
    timeout = spans_when(
        run,
        lambda s: s.kind == OtlpReceiver.CLIENT and s.attributes.get("wxgate.upstream.result") == "timeout",
        "the timed-out backend call",
    )[0]
    assert timeout.status == 2 and timeout.attributes["error.type"] == "timeout"


def test_retries_of_one_notification_share_the_dedup_key(run: Run) -> None:
    servers = [
        s for s in run.otlp.snapshot() if s.kind == OtlpReceiver.SERVER and "wxgate.dedup.key" in s.attributes
    ]
    by_key: dict[str, set[str]] = {}
    for s in servers:
        by_key.setdefault(s.attributes["wxgate.dedup.key"], set()).add(s.attributes["wxgate.dedup.result"])
    assert {"new", "duplicate_done"} in by_key.values()
    assert any({"new", "duplicate_inflight"} <= results for results in by_key.values())


def test_a_redelivery_is_a_trace_linked_to_the_request_that_queued_it(run: Run) -> None:
    (redelivery,) = spans_when(run, lambda s: s.name == "redeliver mpdown", "the mpdown redelivery span")
    (queued,) = [
        s
        for s in run.otlp.snapshot()
        if s.kind == OtlpReceiver.SERVER and s.attributes.get("wxgate.route") == "mpdown"
    ]
    assert queued.attributes["wxgate.outbox"] == "queued"
    assert [trace_id for trace_id, _ in redelivery.links] == [queued.trace_id]
    assert redelivery.attributes["wxgate.redelivery.result"] == "dead"
    call = next(
        s
        for s in run.otlp.snapshot()
        if s.parent_span_id == redelivery.span_id
        and s.kind == OtlpReceiver.CLIENT
        and s.name.startswith("POST")
    )
    assert call.attributes["http.request.resend_count"] >= 1 and call.attributes["error.type"] == "refused"


def test_the_backend_receives_the_client_spans_traceparent(run: Run) -> None:
    parents = [r["headers"]["traceparent"] for r in run.backend.requests() if "traceparent" in r["headers"]]
    assert parents
    clients = {(s.trace_id, s.span_id): s for s in run.otlp.snapshot() if s.kind == OtlpReceiver.CLIENT}
    for tp in parents:
        version, trace_id, span_id, flags = tp.split("-")
        assert version == "00" and int(flags, 16) & 1
        client = clients.get((trace_id, span_id))
        assert client is not None, f"no exported client span for {tp}"
        assert client.name.startswith("POST /")


def access_lines(run: Run) -> list[dict[str, Any]]:
    return [line for line in run.sidecar.log_lines() if line.get("logger") == "wxgate.access"]


def test_one_json_log_line_per_request_with_its_trace(run: Run) -> None:
    lines = access_lines(run)
    assert len(lines) == run.requests
    exported = {(s.trace_id, s.span_id) for s in run.otlp.snapshot() if s.kind == OtlpReceiver.SERVER}
    assert all((line["trace_id"], line["span_id"]) in exported for line in lines)
    mp_forwarded = [
        line for line in lines if line.get("upstream") == "2xx" and line["route"].startswith("mp")
    ]
    assert mp_forwarded and all(len(line["user"]) == 16 and line["user"] != OPENID for line in mp_forwarded)


def test_no_secret_is_logged_exported_or_exposed(run: Run) -> None:
    _, metrics_text, _ = http(
        "GET",
        run.sidecar.admin_url + "/metrics",
        headers={"Accept": "application/openmetrics-text; version=1.0.0"},
    )
    places = {
        "wxgate log": run.sidecar.logs().encode(),
        "/metrics": metrics_text,
        "spans": b"".join(run.otlp.bodies),
    }
    secrets = [MP_TOKEN, MP_AES, PAY_KEY, CONTENT, "你好", OPENID, *run.secrets]
    assert len(run.secrets) >= 8  # signatures and ciphertexts of the requests sent
    leaks = [
        f"{where} holds {secret[:12]}…"
        for where, data in places.items()
        for secret in secrets
        if secret.encode() in data
    ]
    assert leaks == []
