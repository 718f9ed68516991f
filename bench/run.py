"""``make bench``: the direct backend, bare ``mitmdump --mode reverse`` and wxgate in several configurations,
each driven with the same load in one run, and one table.

Per configuration, with the system under test alone on CPU 1 and everything else (wrk, the open-loop tool, the
backend, redis-server, this script) on CPU 0:

1. warm-up: ``--warmup`` requests (wrk, 32 keep-alive connections); RSS (and live flows) after it;
2. closed loop: wrk, 32 keep-alive connections, ``--closed`` seconds: req/s, latency p50/p99/max, CPU seconds
   of the system under test per 1,000 requests;
3. (duplicate-heavy mix only) first deliveries alone, then exact repeats of them alone, ``--dedup`` s each;
4. soak: more requests until ``--soak`` (the MP full-chain configurations; ``--soak-short`` for the others)
   have been served since the warm-up; RSS and live flows again;
5. open loop: ``--rate`` req/s for ``--open`` seconds (``bench/openloop.py``), latency from the scheduled
   send time: p50/p99/max.

Every request to a verified route is distinct and freshly signed (``bench/corpus.py``), built right before
its phase. Results go to stdout (a Markdown table) and ``bench/out/results.json``.

    python bench/run.py                       # everything (about 8 minutes on 2 vCPUs)
    python bench/run.py --only mp-redis,mitmdump --soak 0 --soak-short 0
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402

from bench import charts, corpus  # noqa: E402
from tests.support.redis_servers import RedisServer, free_port  # noqa: E402

PY = sys.executable
VENV_BIN = Path(sys.executable).parent
LUA = ROOT / "bench" / "load.lua"
OUT = ROOT / "bench" / "out"
CONNS = 32
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Scenario:
    id: str
    label: str
    kind: str  # direct | mitmdump | wxgate
    traffic: str  # a corpus.build scenario
    store: str = "sqlite"  # sqlite | redis
    trace: float = 1.0  # share of requests traced (parent-based ratio sampler); 0: tracing off
    verified: bool = True  # requests must be fresh (a reused one is a replay or a duplicate)
    soak: bool = False  # run to --soak requests for the last RSS (else --soak-short)
    default: bool = True  # part of a plain `make bench`; the others only with --only
    # `workers: N`: N processes under the supervisor, on every CPU (1: alone on the last CPU)
    workers: int = 1
    launcher: tuple[str, ...] = ()  # more options for bench/sidecar.py (--uvloop, --gc-threshold)
    environ: tuple[tuple[str, str], ...] = ()  # more environment for wxgate


SCENARIOS = (
    Scenario("direct", "direct backend (no proxy)", "direct", "mp", verified=False),
    Scenario("mitmdump", "bare `mitmdump --mode reverse -q`", "mitmdump", "mp", verified=False),
    Scenario(
        "passthrough",
        "wxgate, unmatched path (passthrough)",
        "wxgate",
        "passthrough",
        trace=0.0,
        verified=False,
    ),
    Scenario("mp-sqlite", "wxgate MP plaintext full chain, sqlite", "wxgate", "mp", soak=True),
    Scenario("mp-redis", "wxgate MP plaintext full chain, Redis", "wxgate", "mp", "redis", soak=True),
    Scenario("mp-redis-10pct", "wxgate MP full chain, Redis, 10% of traces", "wxgate", "mp", "redis", 0.1),
    Scenario("mp-redis-w2", "wxgate MP full chain, Redis, `workers: 2`", "wxgate", "mp", "redis", workers=2),
    Scenario("mp-safe", "wxgate MP safe mode, decrypt for backend", "wxgate", "mp_safe"),
    Scenario("pay-v3", "wxgate Pay v3 (RSA verify + GCM decrypt)", "wxgate", "pay_v3"),
    Scenario("dup-mix", "wxgate duplicate-heavy mix (every message 4x)", "wxgate", "dup"),
    # For explaining the cost: the same chain without tracing.
    Scenario(
        "mp-sqlite-notrace",
        "wxgate MP full chain, sqlite, tracing off",
        "wxgate",
        "mp",
        trace=0.0,
        default=False,
    ),
    Scenario(
        "mp-redis-notrace",
        "wxgate MP full chain, Redis, tracing off",
        "wxgate",
        "mp",
        "redis",
        0.0,
        default=False,
    ),
    # For explaining the cost of store spans: a span for every store call, as before WXGATE_STORE_SPAN_MIN_MS.
    Scenario(
        "mp-redis-allstore",
        "wxgate MP full chain, Redis, a span for every store call",
        "wxgate",
        "mp",
        "redis",
        default=False,
        environ=(("WXGATE_STORE_SPAN_MIN_MS", "0"),),
    ),
    # For trying the event loop and the collector's thresholds (paired against mp-redis).
    Scenario(
        "mp-sqlite-si05",
        "wxgate MP full chain, sqlite, GIL switch interval 0.5 ms",
        "wxgate",
        "mp",
        default=False,
        launcher=("--switch-interval", "0.0005"),
    ),
    Scenario(
        "mp-sqlite-si5",
        "wxgate MP full chain, sqlite, GIL switch interval 5 ms",
        "wxgate",
        "mp",
        default=False,
        launcher=("--switch-interval", "0.005"),
    ),
    Scenario(
        "mp-redis-uvloop",
        "wxgate MP full chain, Redis, on uvloop",
        "wxgate",
        "mp",
        "redis",
        default=False,
        launcher=("--uvloop",),
    ),
    Scenario(
        "mp-redis-gc700",
        "wxgate MP full chain, Redis, Python's default GC thresholds",
        "wxgate",
        "mp",
        "redis",
        default=False,
        launcher=("--gc-threshold", "700,10,10"),
    ),
    Scenario(
        "passthrough-w2",
        "wxgate, unmatched path, `workers: 2`",
        "wxgate",
        "passthrough",
        trace=0.0,
        verified=False,
        default=False,
        workers=2,
    ),
)


# -- processes -------------------------------------------------------------------------------------------------


class Proc:
    """One subprocess this script started; stopped by its PID, never by name."""

    live: ClassVar[set[Proc]] = set()

    def __init__(self, args: list[str], log: Path, cpus: set[int] | None, env: dict[str, str] | None = None):
        self.log = log
        with log.open("ab") as f:
            self.p = subprocess.Popen(
                args,
                stdout=f,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
                preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,  # noqa: PLW1509
            )
        Proc.live.add(self)

    @property
    def pid(self) -> int:
        return self.p.pid

    def stop(self, timeout: float = 15.0) -> None:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(5)
        Proc.live.discard(self)

    def check(self) -> None:
        if self.p.poll() is not None:
            tail = self.log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{self.p.args[:3]} exited with {self.p.returncode}:\n{tail}")


def stop_all() -> None:
    for p in list(Proc.live):
        with contextlib.suppress(Exception):
            p.stop(5)


def tree(pid: int) -> list[int]:
    """``pid`` and its descendants (a `workers: N` supervisor and its workers)."""
    out = [pid]
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError):
            for child in task.read_text().split():
                out += tree(int(child))
    return out


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` and its descendants, every thread (a finished child's time is not counted)."""
    total = 0
    for p in tree(pid):
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total / CLK_TCK


def rss_mib(pid: int) -> float:
    """RSS of ``pid`` and its descendants."""
    total = 0
    for p in tree(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total / 1024


def busy_jiffies() -> int:
    parts = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return sum(parts) - parts[3] - parts[4]  # everything but idle and iowait


def wait_until(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if check():
                return
        time.sleep(0.05)
    raise TimeoutError(f"{what} not ready within {timeout}s")


def http_get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


def tcp_open(port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


# -- load ------------------------------------------------------------------------------------------------------


def wrk(port: int, corpus_file: Path, duration: float, quota: int = 0) -> dict[str, Any]:
    """One wrk run; with ``quota`` it is interrupted once that many responses arrived (``duration`` caps it)."""
    marker = corpus_file.with_suffix(".done")
    with contextlib.suppress(FileNotFoundError):
        (marker.parent / (marker.name + ".0")).unlink()
    args = [
        "wrk",
        "-t1",
        f"-c{CONNS}",
        f"-d{max(1, round(duration))}s",
        "--timeout",
        "10s",
        "-s",
        str(LUA),
        f"http://127.0.0.1:{port}",
        "--",
        str(corpus_file),
        "1",
    ]
    if quota:
        args += [str(quota), str(marker)]
    started = time.monotonic()
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if quota:
        done = marker.parent / (marker.name + ".0")
        while p.poll() is None and not done.exists():
            time.sleep(0.02)
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=duration + 30)
    line = next((ln for ln in out.splitlines() if ln.startswith("{")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no result: {out}\n{err}")
    result: dict[str, Any] = json.loads(line)
    result["wall"] = time.monotonic() - started
    return result


def open_loop(
    port: int, corpus_file: Path, rate: float, duration: float, slow_ms: float = 0.0
) -> dict[str, Any]:
    out = subprocess.run(
        [
            PY,
            str(ROOT / "bench" / "openloop.py"),
            "--port",
            str(port),
            "--corpus",
            str(corpus_file),
            "--rate",
            str(rate),
            "--duration",
            str(duration),
            "--conns",
            str(CONNS),
            "--slow-ms",
            str(slow_ms),
        ],
        capture_output=True,
        text=True,
        timeout=duration + 60,
        check=True,
    ).stdout
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


# -- the run ---------------------------------------------------------------------------------------------------


@dataclass
class Env:
    args: argparse.Namespace
    tmp: Path
    sut_cpus: set[int] | None
    all_cpus: set[int]
    pay_key: corpus.PayKey
    seq: corpus.Sequencer = field(default_factory=corpus.Sequencer)
    backend_port: int = 0
    wxgate_env: dict[str, str] = field(default_factory=dict)
    cert: Path | None = None
    helper_pids: set[int] = field(default_factory=set)  # the backend and redis-server: load-side CPU

    def load_cpu(self) -> tuple[float, float]:
        """CPU seconds so far of (the load tools this script waited for: wrk, the open-loop tool; the backend and
        redis-server)."""
        ru = resource.getrusage(resource.RUSAGE_CHILDREN)
        return ru.ru_utime + ru.ru_stime, sum(cpu_seconds(p) for p in self.helper_pids)

    def corpus_file(self, sc: Scenario, phase: str, count: int) -> tuple[Path, list[bytes]]:
        reqs = corpus.build(sc.traffic, count, self.seq, self.pay_key)
        path = self.tmp / f"{sc.id}-{phase}.req"
        corpus.write(path, reqs)
        return path, reqs

    def fixed_corpus(self, sc: Scenario, phase: str, count: int) -> Path:
        """Traffic that may repeat (nothing verifies it): a fixed-size corpus, wrapped around by wrk."""
        return self.corpus_file(sc, phase, min(count, 20_000))[0]


def wxgate_config(env: Env, sc: Scenario, port: int, admin: int, redis_url: str | None) -> Path:
    store = redis_url if sc.store == "redis" else f"sqlite:///{env.tmp}/{sc.id}-state.db"
    cfg: dict[str, Any] = {
        "workers": sc.workers,
        "listen": f"127.0.0.1:{port}",
        "admin": f"127.0.0.1:{admin}",
        "upstream": f"http://127.0.0.1:{env.backend_port}",
        "store": store,
        "log_level": "info",
        "routes": [
            {"name": "mp", "path": corpus.MP_PATH, "protocol": "wechat-mp", "token": "${BENCH_TOKEN}"},
            {
                "name": "mp_safe",
                "path": corpus.MP_SAFE_PATH,
                "protocol": "wechat-mp",
                "token": "${BENCH_TOKEN}",
                "app_id": corpus.APP_ID,
                "encoding_aes_key": "${BENCH_AES_KEY}",
                "decrypt_for_backend": True,
            },
            {
                "name": "pay",
                "path": corpus.PAY_PATH,
                "protocol": "wechat-pay-v3",
                "apiv3_key": "${BENCH_APIV3_KEY}",
                "mch_id": corpus.MCH_ID,
                "app_id": corpus.APP_ID,
                "platform_certificates": [str(env.cert)],
                "decrypt_for_backend": True,
            },
        ],
    }
    path = env.tmp / f"{sc.id}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@contextlib.contextmanager
def system_under_test(env: Env, sc: Scenario) -> Iterator[tuple[int, Proc, Path | None]]:
    port = free_port()
    redis: RedisServer | None = None
    redis_pid = 0
    stats: Path | None = None
    log = env.tmp / f"{sc.id}.log"
    # N workers: every CPU this script started with, shared with the load tools (set explicitly: a child would
    # inherit this script's own pinning to the load CPU)
    cpus = env.sut_cpus if sc.workers == 1 or env.sut_cpus is None else env.all_cpus
    if sc.kind == "direct":
        proc = Proc([PY, "bench/backend.py", "--port", str(port)], log, env.sut_cpus)
        wait_until(lambda: tcp_open(port), 15, "direct backend")
    elif sc.kind == "mitmdump":
        args = [
            str(VENV_BIN / "mitmdump"),
            "-q",
            "--listen-host",
            "127.0.0.1",
            "--listen-port",
            str(port),
            "--mode",
            f"reverse:http://127.0.0.1:{env.backend_port}",
        ]
        proc = Proc(args, log, env.sut_cpus, {"HOME": str(env.tmp)})
        wait_until(lambda: (proc.check(), tcp_open(port))[1], 30, "mitmdump")
    else:
        redis_url = None
        if sc.store == "redis":
            redis = RedisServer(data_dir=env.tmp / f"redis-{sc.id}").start()
            redis_url = redis.url
            assert redis.proc is not None
            redis_pid = redis.proc.pid
            env.helper_pids.add(redis_pid)
        admin = free_port()
        cfg = wxgate_config(env, sc, port, admin, redis_url)
        stats = env.tmp / f"{sc.id}-stats.json"
        args = [PY, "bench/sidecar.py", "-c", str(cfg), "--stats", str(stats)] + (
            ["--trace", str(sc.trace)] if sc.trace else []
        )
        if env.args.profile:
            args += ["--profile", str(OUT / f"{sc.id}.prof")]
        args += sc.launcher
        proc = Proc(args, log, cpus, env.wxgate_env | dict(sc.environ))
        wait_until(
            lambda: (proc.check(), http_get(f"http://127.0.0.1:{admin}/readyz") == 200)[1], 30, "wxgate"
        )
    try:
        yield port, proc, stats
    finally:
        proc.stop()
        if redis is not None:
            env.helper_pids.discard(redis_pid)
            redis.stop()


def sut_stats(proc: Proc, stats: Path | None, workers: int = 1) -> dict[str, Any]:
    """The launcher's figures (``bench/sidecar.py``); with N workers, each one's, added up (GC: the longest
    pause of any)."""
    if stats is None:
        return {}
    files = [stats] if workers == 1 else [stats.with_name(f"{stats.name}.{i}") for i in range(workers)]
    for f in files:
        with contextlib.suppress(FileNotFoundError):
            f.unlink()
    os.kill(proc.pid, signal.SIGUSR1)
    wait_until(lambda: all(f.exists() for f in files), 30, "stats file")
    parts = [json.loads(f.read_text()) for f in files]
    if workers == 1:
        return dict(parts[0])
    return merge_stats(parts)


def merge_stats(parts: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"workers": parts}
    for key in ("flows", "exchanges", "tasks", "rss_kib", "spans_exported", "gc_frozen"):
        out[key] = sum(p[key] for p in parts)
    threads: dict[str, float] = {}
    for p in parts:
        for name, secs in p["threads"].items():
            threads[name] = threads.get(name, 0.0) + secs
    out["threads"] = threads
    out["gc"] = {
        "seconds": [sum(p["gc"]["seconds"][g] for p in parts) for g in range(3)],
        "count": [sum(p["gc"]["count"][g] for p in parts) for g in range(3)],
        "longest": max(p["gc"]["longest"] for p in parts),
        "pauses": {k: sum(p["gc"]["pauses"][k] for p in parts) for k in parts[0]["gc"]["pauses"]},
    }
    out["gc_threshold"] = parts[0].get("gc_threshold")
    return out


def measure(env: Env, sc: Scenario) -> dict[str, Any]:
    a = env.args
    res: dict[str, Any] = {"id": sc.id, "label": sc.label}
    with system_under_test(env, sc) as (port, proc, stats):
        fresh = sc.verified

        def phase_corpus(phase: str, count: int) -> Path:
            if fresh:
                return env.corpus_file(sc, phase, count)[0]
            return env.fixed_corpus(sc, phase, count)

        # 1. warm-up
        t0 = time.monotonic()
        warm = wrk(port, phase_corpus("warmup", a.warmup + 100), 60, quota=a.warmup)
        rate_guess = max(200.0, warm["requests"] / max(time.monotonic() - t0 - 0.1, 0.1))
        time.sleep(0.5)
        res["rss_start_mib"] = rss_mib(proc.pid)
        res["stats_start"] = sut_stats(proc, stats, sc.workers)
        # 2. closed loop
        closed_file = phase_corpus("closed", int(rate_guess * a.closed * 1.8) + 2000)
        cpu0, busy0, w0, load0 = cpu_seconds(proc.pid), busy_jiffies(), time.monotonic(), env.load_cpu()
        closed = wrk(port, closed_file, a.closed)
        cpu1, busy1, w1, load1 = cpu_seconds(proc.pid), busy_jiffies(), time.monotonic(), env.load_cpu()
        res["load_cores"] = [(b - a) / (w1 - w0) for a, b in zip(load0, load1, strict=True)]
        res["closed"] = closed
        res["stats_closed"] = sut_stats(proc, stats, sc.workers)
        res["rps"] = closed["requests"] / (closed["duration_us"] / 1e6)
        res["cpu_per_1k"] = (cpu1 - cpu0) / max(closed["requests"], 1) * 1000
        res["sut_cpu_util"] = (cpu1 - cpu0) / (w1 - w0)
        res["machine_busy"] = (busy1 - busy0) / CLK_TCK / (w1 - w0)  # all processes, in cores
        served = closed["requests"]
        # 3. duplicates vs first deliveries, in alternating rounds (a noisy spell then hits both sides alike):
        # each round sends new messages, then exact repeats of the ones that were answered
        if sc.traffic == "dup":
            rounds = []
            for i in range(a.dup_rounds):
                first_file, firsts = env.corpus_file(
                    Scenario(sc.id, sc.label, sc.kind, "mp"),
                    f"first{i}",
                    int(rate_guess * a.dedup * 1.2) + 2000,
                )
                first = wrk(port, first_file, a.dedup)
                sent = firsts[
                    1 : max(2, first["requests"] - 2 * CONNS)
                ]  # wrk's first request() is only a probe
                dup_file = env.tmp / f"{sc.id}-dups{i}.req"
                corpus.write(dup_file, sent)
                dups = wrk(port, dup_file, a.dedup)
                rounds.append((first, dups))
                served += first["requests"] + dups["requests"]
            ratios = [
                (d["requests"] / d["duration_us"]) / (f["requests"] / f["duration_us"]) for f, d in rounds
            ]
            res["first_deliveries"] = [f for f, _ in rounds]
            res["duplicates"] = [d for _, d in rounds]
            res["dup_ratios"] = ratios
            res["dup_ratio"] = statistics.median(ratios)
        # 4. soak, then the second RSS reading: steady load only (an open loop above capacity queues thousands
        # of requests, and the allocator keeps that high-water mark; it says nothing about growth)
        remaining = (a.soak if sc.soak else a.soak_short) - served
        if remaining > 0:
            soak_file = phase_corpus("soak", remaining + 200)
            soak = wrk(port, soak_file, remaining / (res["rps"] * 0.5) + 10, quota=remaining)
            res["soak"] = soak
            served += soak["requests"]
        time.sleep(1.0)
        res["served_after_warmup"] = served
        res["rss_end_mib"] = rss_mib(proc.pid)
        res["stats_end"] = sut_stats(proc, stats, sc.workers)
        # 5. open loop
        open_file = phase_corpus("open", int(a.rate * a.open) + 500)
        res["open"] = open_loop(port, open_file, a.rate, a.open, a.slow_ms)
        res["rss_after_open_mib"] = rss_mib(proc.pid)
        res["stats_open"] = sut_stats(proc, stats, sc.workers)
    return res


def paired(env: Env, chosen: list[Scenario], rounds: int, seconds: float) -> dict[str, Any]:
    """Every configuration running at once (idle ones cost nothing), loaded in turn for ``seconds``, ``rounds``
    times, the order rotated each round: each round's ratio to ``mitmdump`` compares two measurements seconds
    apart, so a noisy spell on a shared host moves both. Returns per-round figures and the median ratios."""
    out: dict[str, Any] = {"rounds": rounds, "seconds": seconds, "runs": {sc.id: [] for sc in chosen}}
    with contextlib.ExitStack() as stack:
        suts = {sc.id: stack.enter_context(system_under_test(env, sc)) for sc in chosen}
        guess: dict[str, float] = {}
        for sc in chosen:  # warm-up
            port = suts[sc.id][0]
            t0 = time.monotonic()
            warm = wrk(port, env.corpus_file(sc, "paired-warmup", 1100)[0], 30, quota=1000)
            guess[sc.id] = max(200.0, warm["requests"] / max(time.monotonic() - t0 - 0.1, 0.1))
        for i in range(rounds):
            for sc in chosen[i % len(chosen) :] + chosen[: i % len(chosen)]:
                port, proc, _ = suts[sc.id]
                count = int(guess[sc.id] * seconds * 2) + 2000
                file = (
                    env.corpus_file(sc, f"paired{i}", count)[0]
                    if sc.verified
                    else env.fixed_corpus(sc, "paired", count)
                )
                cpu0, load0, w0 = cpu_seconds(proc.pid), env.load_cpu(), time.monotonic()
                run = wrk(port, file, seconds)
                cpu1, load1, w1 = cpu_seconds(proc.pid), env.load_cpu(), time.monotonic()
                out["runs"][sc.id].append(
                    {
                        "rps": run["requests"] / (run["duration_us"] / 1e6),
                        "cpu_per_1k": (cpu1 - cpu0) / max(run["requests"], 1) * 1000,
                        "sut_cores": (cpu1 - cpu0) / (w1 - w0),
                        "load_cores": [(b - a) / (w1 - w0) for a, b in zip(load0, load1, strict=True)],
                        "status_errors": run["status_errors"],
                    }
                )
    # N workers against the same configuration with one, round by round.
    out["vs_one_worker"] = {}
    for sc in chosen:
        one = next((o for o in chosen if o.workers == 1 and sc.id == f"{o.id}-w{sc.workers}"), None)
        if sc.workers > 1 and one is not None:
            ratios = [
                r["rps"] / b["rps"] for r, b in zip(out["runs"][sc.id], out["runs"][one.id], strict=True)
            ]
            out["vs_one_worker"][sc.id] = {
                "of": one.id,
                "rps": ratios,
                "rps_median": statistics.median(ratios),
            }
    base = out["runs"].get("mitmdump")
    out["ratios"] = {}
    if base:
        for sc_id, runs in out["runs"].items():
            by_rps = [r["rps"] / b["rps"] for r, b in zip(runs, base, strict=True)]
            by_cpu = [b["cpu_per_1k"] / r["cpu_per_1k"] for r, b in zip(runs, base, strict=True)]
            out["ratios"][sc_id] = {
                "rps": by_rps,
                "cpu": by_cpu,
                "rps_median": statistics.median(by_rps),
                "cpu_median": statistics.median(by_cpu),
            }
    return out


def paired_table(p: dict[str, Any], labels: dict[str, str]) -> str:
    rows = [
        f"Paired rounds ({p['rounds']} × {p['seconds']:.0f} s each, every configuration running, loaded in turn):",
        "",
        "| configuration | req/s, round by round | × mitmdump, round by round | × mitmdump (median) "
        "| CPU ms / req (median) | × mitmdump by CPU (median) | cores: SUT / wrk / backend + Redis (median) |",
        "|---|---|---|---:|---:|---:|---|",
    ]
    for sc_id, runs in p["runs"].items():
        r = p["ratios"].get(sc_id, {})
        flag = " ⚠ non-2xx" if any(x["status_errors"] for x in runs) else ""
        cores = " / ".join(
            f"{statistics.median(v):.2f}"
            for v in (
                [x["sut_cores"] for x in runs],
                [x["load_cores"][0] for x in runs],
                [x["load_cores"][1] for x in runs],
            )
        )
        rows.append(
            f"| {labels.get(sc_id, sc_id)}{flag} | {' '.join(f'{x["rps"]:,.0f}' for x in runs)} | "
            f"{' '.join(f'{x:.2f}' for x in r.get('rps', []))} | {r.get('rps_median', 0):.2f} | "
            f"{statistics.median(x['cpu_per_1k'] for x in runs):.3f} | {r.get('cpu_median', 0):.2f} | {cores} |"
        )
    for sc_id, v in p.get("vs_one_worker", {}).items():
        rows.append("")
        rows.append(
            f"{labels.get(sc_id, sc_id)} against {labels.get(v['of'], v['of'])}, round by round: "
            f"{' '.join(f'{x:.2f}' for x in v['rps'])}; median **{v['rps_median']:.2f}×**"
        )
    return "\n".join(rows)


# -- output ----------------------------------------------------------------------------------------------------


def fmt_ms(us: float) -> str:
    return f"{us / 1000:.1f}" if us >= 10_000 else f"{us / 1000:.2f}"


def table(results: list[dict[str, Any]]) -> str:
    base = next((r for r in results if r["id"] == "mitmdump"), None)
    head = (
        "| configuration | req/s | × mitmdump | closed p50 / p99 / max (ms) | open 500/s p50 / p99 / max (ms) "
        "| CPU s / 1k req | × mitmdump by CPU | RSS start → end (MiB) | requests for RSS |\n"
        "|---|---:|---:|---|---|---:|---:|---|---:|"
    )
    rows = [head]
    for r in results:
        c, o = r["closed"], r["open"]
        ratio = f"{r['rps'] / base['rps']:.2f}" if base else "–"
        # The same ratio from CPU per request: on a shared machine, time-sharing moves req/s; this much less.
        cpu_ratio = f"{base['cpu_per_1k'] / r['cpu_per_1k']:.2f}" if base and r["cpu_per_1k"] else "–"
        flags = []
        if c["status_errors"] or c["connect_errors"] or c["read_errors"] or c["timeouts"]:
            flags.append(f"{c['status_errors']} non-2xx, {c['timeouts']} timeouts")
        if o["errors"] or set(o["status"]) - {"200", "204"}:
            flags.append(f"open loop: {o['errors']} errors, status {o['status']}")
        if r["id"] not in ("direct", "mitmdump", "passthrough") and c.get("wrapped"):
            flags.append("corpus wrapped")
        label = r["label"] + (f" ⚠ {'; '.join(flags)}" if flags else "")
        rows.append(
            f"| {label} | {r['rps']:,.0f} | {ratio} | {fmt_ms(c['p50_us'])} / {fmt_ms(c['p99_us'])} / "
            f"{fmt_ms(c['max_us'])} | {o['p50_ms']:.2f} / {o['p99_ms']:.2f} / {o['max_ms']:.1f} | "
            f"{r['cpu_per_1k']:.3f} | {cpu_ratio} | {r['rss_start_mib']:.0f} → {r['rss_end_mib']:.0f} "
            f"({r['rss_end_mib'] - r['rss_start_mib']:+.1f}) | {r['served_after_warmup']:,} |"
        )
    return "\n".join(rows)


def details(results: list[dict[str, Any]]) -> str:
    lines = []
    for r in results:
        s0, s1 = r.get("stats_start") or {}, r.get("stats_end") or {}
        if s1:
            spans = s1.get("spans_exported", 0) - s0.get("spans_exported", 0)
            lines.append(
                f"- {r['id']}: live flows {s0.get('flows')} → {s1.get('flows')}, exchanges "
                f"{s0.get('exchanges')} → {s1.get('exchanges')}, asyncio tasks {s0.get('tasks')} → "
                f"{s1.get('tasks')}, spans exported after warm-up {spans:,}; SUT CPU "
                f"{r['sut_cpu_util']:.2f} cores, machine {r['machine_busy']:.2f} cores in the closed loop"
            )
        t0, t1 = (s0.get("threads") or {}), ((r.get("stats_closed") or {}).get("threads") or {})
        if t1:
            n = max(r["closed"]["requests"], 1)
            per = {k: (v - t0.get(k, 0.0)) / n * 1e6 for k, v in t1.items() if v - t0.get(k, 0.0) > 0}
            lines.append(
                f"- {r['id']}: CPU per request by thread in the closed loop: "
                + ", ".join(f"{k} {v:.0f} µs" for k, v in sorted(per.items(), key=lambda kv: -kv[1]))
            )
        for phase, before, after in (
            ("closed loop", s0, r.get("stats_closed")),
            ("open loop", s1, r.get("stats_open")),
        ):
            g0, g1 = (before or {}).get("gc"), (after or {}).get("gc")
            if g0 and g1:
                lines.append(f"- {r['id']}: GC in the {phase}: {gc_summary(g0, g1)}")
        if "dup_ratio" in r:
            rates = [
                (f["requests"] / f["duration_us"] * 1e6, d["requests"] / d["duration_us"] * 1e6)
                for f, d in zip(r["first_deliveries"], r["duplicates"], strict=True)
            ]
            lines.append(
                f"- {r['id']}: first deliveries alone / duplicates alone (answered from the store), req/s, "
                f"round by round: {', '.join(f'{a:,.0f} / {b:,.0f}' for a, b in rates)}; ratio "
                f"{' '.join(f'{x:.2f}' for x in r['dup_ratios'])}, median **{r['dup_ratio']:.2f}×**"
            )
    return "\n".join(lines)


def other_load(seconds: float = 2.0) -> float:
    """Cores busy on this machine over ``seconds`` before the run starts (nothing of ours is running yet)."""
    before = busy_jiffies()
    time.sleep(seconds)
    return (busy_jiffies() - before) / CLK_TCK / seconds


def gc_summary(g0: dict[str, Any], g1: dict[str, Any]) -> str:
    secs = [b - a for a, b in zip(g0["seconds"], g1["seconds"], strict=True)]
    counts = [b - a for a, b in zip(g0["count"], g1["count"], strict=True)]
    per_gen = ", ".join(f"gen{i} {n}× {t:.2f} s" for i, (n, t) in enumerate(zip(counts, secs, strict=True)))
    pauses = ", ".join(
        f"≥ {k} ms: {g1['pauses'][k] - g0['pauses'].get(k, 0)}"
        for k in g1.get("pauses", {})
        if k in ("1", "5", "10")
    )
    return f"{sum(secs):.2f} s of CPU ({per_gen}), longest pause {g1['longest'] * 1000:.1f} ms" + (
        f"; pauses {pauses}" if pauses else ""
    )


def machine() -> dict[str, str]:
    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        platform.processor(),
    )
    wrk_version = subprocess.run(["wrk", "-v"], check=False, capture_output=True, text=True).stdout.split(
        "\n"
    )[0]
    from importlib.metadata import version

    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, check=False, capture_output=True, text=True
    )
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no", "proxy", "addons"],
        cwd=ROOT,
        check=False,
        capture_output=True,
        text=True,
    )
    return {
        "commit": head.stdout.strip() + (" (proxy/ or addons/ modified)" if dirty.stdout.strip() else ""),
        "cpu": f"{os.cpu_count()} × {cpu}",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "mitmproxy": version("mitmproxy"),
        "wrk": wrk_version.strip(),
        "loadavg_before": Path("/proc/loadavg").read_text().split(" ")[0],
    }


def main() -> int:
    p = argparse.ArgumentParser(description="wxgate benchmark (docs/benchmarks.md)")
    p.add_argument("--only", help="comma-separated scenario ids: " + ",".join(s.id for s in SCENARIOS))
    p.add_argument("--warmup", type=int, default=3000, help="warm-up requests (default 3000)")
    p.add_argument("--closed", type=float, default=8.0, help="closed-loop seconds (default 8)")
    p.add_argument("--rate", type=float, default=500.0, help="open-loop requests per second (default 500)")
    p.add_argument("--open", type=float, default=8.0, help="open-loop seconds (default 8)")
    p.add_argument(
        "--slow-ms", type=float, default=0.0, help="open loop: list when each answer slower than this was due"
    )
    p.add_argument(
        "--dedup", type=float, default=2.0, help="seconds for firsts-only and duplicates-only, per round"
    )
    p.add_argument("--dup-rounds", type=int, default=4, help="rounds of firsts-only then duplicates-only")
    p.add_argument(
        "--paired",
        default="mitmdump,mp-redis,mp-redis-w2,mp-redis-10pct",
        help="configurations also measured in alternating rounds (ratios robust to a noisy host; '' for none)",
    )
    p.add_argument("--rounds", type=int, default=7, help="paired rounds (default 7)")
    p.add_argument("--round-seconds", type=float, default=3.0, help="seconds per configuration per round")
    p.add_argument("--soak", type=int, default=100_000, help="requests after warm-up before the last RSS")
    p.add_argument(
        "--soak-short", type=int, default=0, help="the same for the other configurations (default 0)"
    )
    p.add_argument("--json", type=Path, default=OUT / "results.json")
    p.add_argument(
        "--charts", type=Path, help="directory for the PNG charts (default: beside --json; needs matplotlib)"
    )
    p.add_argument(
        "--profile", action="store_true", help="cProfile each wxgate into bench/out/<id>.prof (slower)"
    )
    args = p.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is not installed: run .ci/install-system-deps (or apt-get install wrk)", file=sys.stderr)
        return 2
    chosen = [s for s in SCENARIOS if (s.id in args.only.split(",") if args.only else s.default)]
    cpus = sorted(os.sched_getaffinity(0))
    sut_cpus = None
    if len(cpus) >= 2:
        sut_cpus = {cpus[-1]}
        os.sched_setaffinity(0, set(cpus[:-1]))  # this script and every helper it starts: the other CPU(s)
    info = machine()
    info["other_load_before"] = f"{other_load():.2f} cores"
    if float(info["other_load_before"].split()[0]) > 0.25:
        print(
            f"warning: other processes use {info['other_load_before']} of this machine; the numbers will be "
            "lower and noisier than on a quiet one (see 'machine' in the details)",
            file=sys.stderr,
        )
    info["pinning"] = (
        f"system under test on CPU {cpus[-1]}, load and helpers on {cpus[:-1]}" if sut_cpus else "none"
    )
    started = time.monotonic()
    results: list[dict[str, Any]] = []
    paired_result: dict[str, Any] | None = None
    with tempfile.TemporaryDirectory(prefix="wxgate-bench-") as tmpdir:
        tmp = Path(tmpdir)
        key = corpus.PayKey.generate()
        env = Env(args, tmp, sut_cpus, set(cpus), key)
        env.cert = tmp / "platform-cert.pem"
        env.cert.write_bytes(key.certificate(time.time()))
        env.wxgate_env = {
            "BENCH_TOKEN": corpus.TOKEN,
            "BENCH_AES_KEY": corpus.AES_KEY,
            "BENCH_APIV3_KEY": corpus.APIV3_KEY,
        }
        env.backend_port = free_port()
        try:
            backend = Proc(
                [PY, "bench/backend.py", "--port", str(env.backend_port)], tmp / "backend.log", None
            )
            env.helper_pids.add(backend.pid)
            wait_until(lambda: tcp_open(env.backend_port), 15, "backend")
            for sc in chosen:
                t = time.monotonic()
                print(
                    f"[{time.monotonic() - started:5.0f}s] {sc.id}: {sc.label} …", file=sys.stderr, flush=True
                )
                results.append(measure(env, sc))
                r = results[-1]
                print(
                    f"         {r['rps']:,.0f} req/s, open p99 {r['open']['p99_ms']:.2f} ms, "
                    f"RSS {r['rss_start_mib']:.0f}→{r['rss_end_mib']:.0f} MiB ({time.monotonic() - t:.0f}s)",
                    file=sys.stderr,
                    flush=True,
                )
            pair = [sc for sc in chosen if sc.id in args.paired.split(",")] if args.paired else []
            if len(pair) >= 2 and args.rounds > 0:
                print(f"[{time.monotonic() - started:5.0f}s] paired rounds: {args.paired} …", file=sys.stderr)
                paired_result = paired(env, pair, args.rounds, args.round_seconds)
        finally:
            stop_all()
    info["loadavg_after"] = Path("/proc/loadavg").read_text().split(" ")[0]
    info["wall_seconds"] = f"{time.monotonic() - started:.0f}"
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps(
            {
                "machine": info,
                "args": {k: str(v) for k, v in vars(args).items()},
                "results": results,
                "paired": paired_result,
            },
            indent=2,
        )
    )
    print("\n" + "\n".join(f"- {k}: {v}" for k, v in info.items()) + "\n")
    print(table(results))
    print()
    print(details(results))
    if paired_result is not None:
        print()
        print(paired_table(paired_result, {sc.id: sc.label for sc in SCENARIOS}))
    if charts.available():
        data = json.loads(args.json.read_text())
        for path in charts.draw(data, args.charts or args.json.parent):
            print(f"chart: {path}", file=sys.stderr)
    else:
        print("matplotlib is not installed: no charts (pip install -e '.[bench]')", file=sys.stderr)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    finally:
        stop_all()
