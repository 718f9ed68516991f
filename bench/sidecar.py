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
- ``--uvloop``: the event loop is uvloop's; ``--gc-threshold T0,T1,T2``: the collector's thresholds, set once
  serving (over what the sidecar sets); for trying both against the default in paired rounds.
- ``workers: N`` in the file (N > 1): this launcher is the supervisor of :mod:`proxy.workers`, each worker is
  this launcher again (same options), ``SIGUSR1`` is passed on and worker ``i`` writes ``--stats`` + ``.i``.

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
from proxy.config import Config, load_config
from proxy.cpus import resolve_workers
from proxy.observability import logs, otel_env
from proxy.worker_role import WorkerRole
from proxy.workers import Supervisor


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
    """Time spent in each generation's collections (``gc.callbacks``): pauses every flow in flight.

    ``seconds`` is the loop thread's CPU time in collections (what they cost, whatever else the host runs);
    ``longest`` and ``pauses`` are wall-clock time (what a request in flight waits: on a busy host that
    includes being descheduled mid-collection)."""

    PAUSE_MS = (1, 2, 5, 10, 20, 50)  # "pauses": collections at least this long (wall clock), per bound

    def __init__(self) -> None:
        self.seconds = [0.0, 0.0, 0.0]
        self.count = [0, 0, 0]
        self.longest = 0.0
        self.pauses = [0] * len(self.PAUSE_MS)
        self._started = 0.0
        self._cpu = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            self._cpu = time.thread_time()
            return
        took = time.perf_counter() - self._started
        gen = info["generation"]
        self.seconds[gen] += time.thread_time() - self._cpu
        self.count[gen] += 1
        self.longest = max(self.longest, took)
        for i, bound in enumerate(self.PAUSE_MS):
            if took * 1000 >= bound:
                self.pauses[i] += 1

    def snapshot(self) -> dict[str, object]:
        return {
            "seconds": [round(s, 4) for s in self.seconds],
            "count": self.count[:],
            "longest": self.longest,
            "pauses": dict(zip((str(b) for b in self.PAUSE_MS), self.pauses, strict=True)),
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
        "gc_threshold": gc.get_threshold(),
        "gc_objects": [len(gc.get_objects(g)) for g in range(3)],  # tracked, per generation, not frozen
        "gc_frozen": gc.get_freeze_count(),
        "threads": thread_cpu(),
    }
    tmp = path.with_name(path.name + ".tmp")  # one per worker: stats.json.0 and .1 must not share it
    tmp.write_text(json.dumps(stats))
    os.replace(tmp, path)


class BenchSupervisor(Supervisor):
    """``workers: N``: the workers are this launcher; ``SIGUSR1`` reaches each of them."""

    def __init__(self, config: Config, config_path: Path, count: int, argv: list[str]) -> None:
        super().__init__(config, config_path, count)
        self.argv = argv

    def worker_command(self) -> list[str]:
        return [sys.executable, str(Path(__file__).resolve()), *self.argv]

    async def run(self) -> int:
        def stats() -> None:
            for pid in self.pids():
                os.kill(pid, signal.SIGUSR1)

        asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, stats)
        return await super().run()


async def main(args: argparse.Namespace) -> int:
    config = load_config(args.config, os.environ)
    logs.setup(config.log_level)
    role = WorkerRole.from_environ(os.environ)
    if role is None and (count := resolve_workers(config.workers)) > 1:
        return await BenchSupervisor(config, Path(args.config), count, sys.argv[1:]).run()
    if role is not None and args.stats:
        args.stats = f"{args.stats}.{role.index}"
    exporter: CountingExporter | None = None
    if args.trace:  # None or 0: off
        exporter = CountingExporter()
        provider = in_process_provider(exporter, args.trace)
        # The composition root (proxy.reload.prepare) asks proxy.observability.otel_env.provider_from_env, read when it is
        # called, for the provider; hand it ours.
        otel_env.provider_from_env = lambda environ: provider  # type: ignore[assignment]
    gc.callbacks.append(GC_CLOCK)
    loop = asyncio.get_running_loop()
    if args.gc_threshold:
        thresholds = [int(x) for x in args.gc_threshold.split(",")]
        loop.call_later(2.0, lambda: gc.set_threshold(*thresholds))
    if args.stats:
        loop.add_signal_handler(signal.SIGUSR1, write_stats, Path(args.stats), exporter)
    logging.getLogger("wxgate").info(
        "benchmark launcher: tracing %s", f"{args.trace:.0%}" if args.trace else "off"
    )
    return await app.serve(config, None, role)


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
    p.add_argument("--uvloop", action="store_true", help="run on uvloop's event loop")
    p.add_argument("--gc-threshold", metavar="T0,T1,T2", help="the collector's thresholds once serving")
    p.add_argument("--switch-interval", type=float, help="sys.setswitchinterval (seconds) at start")
    args = p.parse_args()
    if args.switch_interval:
        sys.setswitchinterval(args.switch_interval)
    loop_factory = None
    if args.uvloop:
        import uvloop

        loop_factory = uvloop.new_event_loop

    def run_main() -> int:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            return runner.run(main(args))

    if not args.profile:
        return run_main()
    import cProfile

    profiler = cProfile.Profile()
    try:
        return profiler.runcall(run_main)
    finally:
        profiler.dump_stats(args.profile)


if __name__ == "__main__":
    sys.exit(run())
