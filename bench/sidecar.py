"""``wxgate run`` for the benchmark: the same composition root, plus two things only a benchmark wants.

- ``--trace RATIO``: tracing on with an in-process exporter. The production provider setup is used (sampler,
  resource, ``BatchSpanProcessor`` with its default queue and batch sizes); only the exporter differs: it counts
  the spans and drops them, so the cost measured is making, ending and batching spans, not protobuf encoding or
  the network. ``RATIO`` < 1 samples that share of traces (``parentbased_traceidratio``). The provider reaches
  the composition root the way the ``OTEL_*`` variables would.
- ``SIGUSR1`` writes ``--stats`` (JSON): live ``HTTPFlow`` and ``Exchange`` objects (after a full collection),
  asyncio tasks, RSS, spans exported so far, and time spent in garbage collection per generation. The harness reads it after warm-up and after the soak ("no growth in live
  flows").

- ``--profile FILE``: cProfile over the whole run, written at exit (for finding hot spots, not for timing).

    python bench/sidecar.py -c wxgate.yaml --stats stats.json [--trace 1.0] [--profile out.prof]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from proxy import app
from proxy.config import load_config
from proxy.observability import logs, otel_env


class CountingExporter(SpanExporter):
    """Receives every exported batch (on the processor's thread) and keeps only the count."""

    def __init__(self) -> None:
        self.spans = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.spans += len(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None


def in_process_provider(exporter: CountingExporter, ratio: float = 1.0) -> TracerProvider:
    environ: Mapping[str, str] = {}
    if ratio < 1.0:
        environ = {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": str(ratio)}
    provider = TracerProvider(
        sampler=otel_env.sampler_from_env(environ),
        resource=otel_env.resource_from_env(environ),
        shutdown_on_exit=False,
    )
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


class GcClock:
    """Time spent in each generation's collections (``gc.callbacks``): pauses every flow in flight."""

    def __init__(self) -> None:
        self.seconds = [0.0, 0.0, 0.0]
        self.count = [0, 0, 0]
        self.longest = 0.0
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        took = time.perf_counter() - self._started
        gen = info["generation"]
        self.seconds[gen] += took
        self.count[gen] += 1
        self.longest = max(self.longest, took)

    def snapshot(self) -> dict[str, object]:
        return {
            "seconds": [round(s, 4) for s in self.seconds],
            "count": self.count[:],
            "longest": self.longest,
        }


GC_CLOCK = GcClock()


def thread_cpu() -> dict[str, float]:
    """CPU seconds per thread name (``/proc/self/task``): the loop, the SQLite worker, the span processor."""
    names = {t.native_id: t.name for t in threading.enumerate()}
    out: dict[str, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for task in Path("/proc/self/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        name = names.get(int(task.name), "other")
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return out


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def write_stats(path: Path, exporter: CountingExporter | None) -> None:
    from mitmproxy.http import HTTPFlow

    from proxy.pipeline.exchange import Exchange

    collections = GC_CLOCK.snapshot()
    GC_CLOCK.longest = 0.0  # the longest pause is per interval between two reports
    gc.callbacks.remove(GC_CLOCK)  # our own full collection below is not the proxy's
    gc.collect()  # garbage cycles are not live: count what survives a full collection
    gc.callbacks.append(GC_CLOCK)
    flows = exchanges = 0
    for obj in gc.get_objects():
        if isinstance(obj, HTTPFlow):
            flows += 1
        elif isinstance(obj, Exchange):
            exchanges += 1
    stats = {
        "flows": flows,
        "exchanges": exchanges,
        "tasks": len(asyncio.all_tasks()),
        "rss_kib": rss_kib(),
        "spans_exported": exporter.spans if exporter else 0,
        "gc": collections,
        "gc_objects": [len(gc.get_objects(g)) for g in range(3)],  # tracked, per generation, not frozen
        "gc_frozen": gc.get_freeze_count(),
        "threads": thread_cpu(),
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(stats))
    os.replace(tmp, path)


async def main(args: argparse.Namespace) -> int:
    config = load_config(args.config, os.environ)
    logs.setup(config.log_level)
    exporter: CountingExporter | None = None
    if args.trace:  # None or 0: off
        exporter = CountingExporter()
        provider = in_process_provider(exporter, args.trace)
        # The composition root (proxy.reload.prepare) asks proxy.observability.otel_env.provider_from_env, read when it is
        # called, for the provider; hand it ours.
        otel_env.provider_from_env = lambda environ: provider  # type: ignore[assignment]
    gc.callbacks.append(GC_CLOCK)
    loop = asyncio.get_running_loop()
    if args.stats:
        loop.add_signal_handler(signal.SIGUSR1, write_stats, Path(args.stats), exporter)
    logging.getLogger("wxgate").info(
        "benchmark launcher: tracing %s", f"{args.trace:.0%}" if args.trace else "off"
    )
    return await app.serve(config)


def run() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-c", "--config", required=True)
    p.add_argument("--stats", help="file written on SIGUSR1")
    p.add_argument(
        "--trace",
        type=float,
        metavar="RATIO",
        help="tracing on, in-process exporter; share of traces sampled",
    )
    p.add_argument("--profile", help="write cProfile stats here at exit")
    args = p.parse_args()
    if not args.profile:
        return asyncio.run(main(args))
    import cProfile

    profiler = cProfile.Profile()
    try:
        return profiler.runcall(asyncio.run, main(args))
    finally:
        profiler.dump_stats(args.profile)


if __name__ == "__main__":
    sys.exit(run())
