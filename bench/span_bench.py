"""CPU per request of the request path's spans: :class:`proxy.observability.tracing.LeanSpan` against the SDK's
own ``Tracer.start_span``, side by side in one process.

Each iteration is what tracing adds to one forwarded request: the server span (eight attributes, a sender's
``traceparent`` kept as a link), a fast store call timed on it, the backend call's CLIENT span, and the
outcome's attributes at the end, exported through a ``BatchSpanProcessor`` whose exporter drops the batches
(protobuf encoding and the network are the export thread's, not the request's). The two paths alternate in
``--repeat`` rounds; the median of each is printed, with their ratio.

    .venv/bin/python bench/span_bench.py [-n 20000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from opentelemetry import trace  # noqa: E402
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult  # noqa: E402

from proxy.observability.outcome import Outcome  # noqa: E402
from proxy.observability.tracing import Tracing  # noqa: E402
from proxy.upstream.client import UpstreamResult  # noqa: E402

CALLER = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


class Drop(SpanExporter):
    def __init__(self) -> None:
        self.spans = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.spans += len(spans)
        return SpanExportResult.SUCCESS


def one_request(tracing: Tracing, outcome: Outcome) -> None:
    server = tracing.start_server(
        "POST",
        "/wechat/callback?signature=s&timestamp=1&nonce=n",
        {"user-agent": "Mozilla/5.0 MicroMessenger/8.0", "traceparent": CALLER},
        "10.0.0.7",
        ("0.0.0.0", 8080),
    )
    with trace.use_span(server):
        timer = tracing.store_timer()
        if timer is not None:
            timer.end("claim_signed", "redis", 0.00012)
    call = tracing.backend_call(server, "POST", "/wechat/callback", "http://127.0.0.1:9000")
    call.finish(UpstreamResult("2xx", 200))
    tracing.finish_server(server, outcome, "/wechat/callback", 200)


def per_request_us(tracing: Tracing, n: int) -> float:
    outcome = Outcome(
        route="mp", protocol="wechat-mp", verdict="verified", method="POST", dedup="new", attempt=1
    )
    outcome.dedup_key = "9f86d081884c7d65"
    outcome.reply_kind = "passive"
    started = time.process_time()
    for _ in range(n):
        one_request(tracing, outcome)
    return (time.process_time() - started) / n * 1e6


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-n", type=int, default=20000, help="requests per round (default 20000)")
    p.add_argument("--repeat", type=int, default=5, help="rounds of each path (default 5)")
    args = p.parse_args()
    exporter = Drop()
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(exporter))
    tracing = Tracing(provider, store_span_min=0.05)
    results: dict[str, list[float]] = {"LeanSpan": [], "SDK Tracer.start_span": []}
    per_request_us(tracing, 2000)  # warm-up
    for _ in range(args.repeat):
        for lean, label in ((True, "LeanSpan"), (False, "SDK Tracer.start_span")):
            tracing._lean = lean
            results[label].append(per_request_us(tracing, args.n))
    provider.shutdown()
    lean, sdk = (statistics.median(v) for v in results.values())
    print(f"spans per request: 2 (server, backend call); {exporter.spans:,} exported in all")
    print("| path | CPU µs per request (median) | rounds |")
    print("|---|---:|---|")
    for label, values in results.items():
        print(f"| {label} | {statistics.median(values):.1f} | {' '.join(f'{v:.1f}' for v in values)} |")
    print(f"\nLeanSpan costs {lean / sdk:.2f}x the SDK's path ({sdk - lean:.1f} µs less per request)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
