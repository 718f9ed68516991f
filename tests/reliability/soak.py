"""``make soak``: the reliability suite, then chaos, fuzzing and rejections for a configurable time.

    python -m tests.reliability.soak [--seconds N] [--no-suite] [--doc PATH] [--seed N]
    SOAK_SECONDS=N make soak        # default 300

1. The bounded suite (``tests/reliability``) runs first, its figures kept (``--no-suite`` skips it).
2. For ``N`` seconds: chaos cycles with random timelines (every third on a Redis Cluster) — the storm while a
   store fault (Redis SIGKILL or SIGSTOP, or a cluster master SIGKILL), a replica SIGKILL and backend
   flapping or slowness overlap at random — then hypothesis with a larger budget and sustained rejections (about 70/15/15 % of
   the time). Each cycle asserts what the design promises: nothing acknowledged lost, no duplicate outside a
   fault that allows one, every answer in the protocol's form, before the sender's timeout unless the store
   hung, the outbox drained, no dead letter.
3. docs/reliability.md is rendered from the figures of this run (also when a check failed, which the exit
   status and the notes say). Every process is started on free loopback ports and stopped by its PID.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from tests.reliability import scenarios
from tests.reliability.figures import DOC, Row, load, render, run_meta, save
from tests.reliability.scenarios import Fault

ROOT = Path(__file__).resolve().parents[2]
SAVED = ROOT / ".pytest_cache" / "wxgate-soak" / "figures.json"
STORM_SECONDS = 30.0
RATE = 40.0


def timeline(rng: random.Random, cluster: bool) -> list[Fault]:
    """A store fault, a replica kill and backend flapping or slowness, at random overlapping times."""
    store = ["cluster" if cluster else rng.choice(["redis", "hang"])]
    backend = [rng.choice(["flap", "slow"])]  # both set the backend's mode: never at the same time
    spans = {
        "flap": (6, 14),
        "slow": (2, 4),
        "replica": (1, 4),
        "redis": (2, 6),
        "hang": (2, 4),
        "cluster": (4, 8),
    }
    faults: list[Fault] = []
    for kind in [*store, "replica", *backend]:
        lo, hi = spans[kind]
        duration = round(rng.uniform(lo, hi), 1)
        at = round(rng.uniform(1.0, max(1.5, STORM_SECONDS - duration - 4)), 1)
        faults.append((at, kind, duration))
    return sorted(faults)


def problems(out: scenarios.Outcome, faults: list[Fault]) -> list[str]:
    fig, found = out.figures, []
    if fig["lost"]:
        found.append(f"lost {fig['lost']} acknowledged notifications: {fig['lost_ids']}")
    if fig["duplicates_unexplained"]:
        found.append(f"{fig['duplicates_unexplained']} duplicates outside any fault that allows them")
    if fig["replies"].get("invalid"):
        found.append(f"{fig['replies']['invalid']} answers outside the protocol's forms")
    if fig["replies"].get("late", 0) > fig["deliveries"] // 200:
        found.append(f"{fig['replies']['late']} answers after the sender's timeout")
    if fig["outbox_depth"] or fig["dead_letters"]:
        found.append(f"outbox not drained: depth {fig['outbox_depth']}, dead letters {fig['dead_letters']}")
    if out.cut_on_live:
        found.append(f"{out.cut_on_live} connections cut on a live replica")
    return found


def chaos_cycles(budget: float, rng: random.Random, tmp: Path) -> tuple[Row, list[str]]:
    started, n = time.monotonic(), 0
    totals: Counter[str] = Counter()
    kinds: Counter[str] = Counter()
    worst, failures, drains = 0.0, [], []
    while time.monotonic() - started < budget or n == 0:
        n += 1
        cluster = n % 3 == 0
        faults = timeline(rng, cluster)
        cycle_dir = tmp / f"cycle-{n}"
        cycle_dir.mkdir()
        print(f"soak: chaos cycle {n} ({'cluster' if cluster else 'redis'}): {faults}", flush=True)
        try:
            out = scenarios.chaos(
                cycle_dir,
                faults,
                count=int(STORM_SECONDS * RATE),
                rate=RATE,
                seed=rng.randrange(10**9),
                cluster=cluster,
            )
        except Exception as e:  # the harness itself failed: say so, keep soaking
            failures.append(f"cycle {n}: {type(e).__name__}: {e}")
            print(f"soak: cycle {n} raised {e!r}", flush=True)
            continue
        fig = out.figures
        for key in (
            "notifications",
            "deliveries",
            "acknowledged",
            "delivered",
            "duplicates",
            "lost",
            "unacknowledged",
        ):
            totals[key] += fig[key]
        totals["by_design"] += fig["duplicates"] - fig["duplicates_unexplained"]
        for key in ("late", "failure", "cut"):
            totals[key] += fig["replies"].get(key, 0)
        kinds.update(k for _, k, _ in faults)
        worst = max(worst, fig["worst_latency"])
        drains.append(fig["drain_seconds"])
        failures += [f"cycle {n}: {p}" for p in problems(out, faults)]
        print(f"soak: cycle {n}: {out.row.notes}", flush=True)
    names = {
        "flap": "backend flapping",
        "slow": "backend slow",
        "replica": "replica SIGKILL",
        "redis": "redis-server SIGKILL",
        "hang": "redis-server hung (SIGSTOP)",
        "cluster": "cluster master SIGKILL",
    }
    notes = (
        f"{n} cycles with random overlapping timelines; {totals['failure']:,} retry-me answers, {totals['cut']:,} "
        f"deliveries cut by kill -9, {totals['unacknowledged']:,} `ack`-route notifications never acknowledged "
        f"(all deliveries while the store refused the outbox write), {totals['late']:,} answers after the sender's "
        f"timeout; slowest drain {max(drains, default=0.0)} s."
    )
    row = Row(
        scenario="chaos, random timelines",
        run="soak",
        seconds=time.monotonic() - started,
        load=f"{totals['notifications']:,} notifications at {RATE:g}/s, {totals['deliveries']:,} deliveries",
        faults=[f"{c}× {names[k]}" for k, c in kinds.most_common()],
        acknowledged=totals["acknowledged"],
        delivered=totals["delivered"],
        duplicates=totals["duplicates"],
        duplicates_by_design=totals["by_design"],
        lost=totals["lost"],
        worst_reply=worst,
        notes=notes + (" FAILED: " + "; ".join(failures) if failures else ""),
    )
    return row, failures


def pytest_rows(args: list[str], env: dict[str, str], tmp: Path, name: str) -> tuple[list[Row], int]:
    figures = tmp / f"{name}.json"
    run_env = {**os.environ, **env, "WXGATE_RELIABILITY_FIGURES": str(figures)}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--durations=5", *args]
    print(f"soak: {' '.join(cmd[2:])} {env}", flush=True)
    rc = subprocess.run(cmd, cwd=ROOT, env=run_env, check=False).returncode
    return (load(figures) if figures.exists() else []), rc


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.reliability.soak", description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=float(os.environ.get("SOAK_SECONDS", "300")))
    p.add_argument("--no-suite", action="store_true", help="skip the bounded suite")
    p.add_argument("--doc", type=Path, default=DOC)
    p.add_argument("--seed", type=int, default=int(time.time()))
    args = p.parse_args(argv)
    rng = random.Random(args.seed)
    rows: list[Row] = []
    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="wxgate-soak-") as t:
        tmp = Path(t)
        if not args.no_suite:
            suite, rc = pytest_rows(["tests/reliability"], {}, tmp, "suite")
            rows += suite
            failures += [f"the bounded suite failed (pytest exit {rc})"] if rc else []
        chaos_row, chaos_failures = chaos_cycles(args.seconds * 0.7, rng, tmp)
        rows.append(chaos_row)
        failures += chaos_failures
        soak_env = {
            "WXGATE_RELIABILITY_RUN": "soak",
            "WXGATE_FUZZ_EXAMPLES": str(max(300, int(args.seconds * 0.15 * 45))),
            "WXGATE_REJECTIONS": str(max(20_000, int(args.seconds * 0.15 * 700) // 1000 * 1000)),
        }
        tests = [
            "tests/reliability/test_fuzz.py",
            "tests/reliability/test_resources.py::test_memory_stays_bounded_under_sustained_rejections",
        ]
        more, rc = pytest_rows(tests, soak_env, tmp, "soak")
        rows += more
        failures += [f"soak fuzzing/rejections failed (pytest exit {rc})"] if rc else []
    command = f"SOAK_SECONDS={args.seconds:g} make soak (seed {args.seed})"
    meta: dict[str, Any] = run_meta(command)
    # kept beside pytest's cache, so the document can be rendered again from this run
    SAVED.parent.mkdir(parents=True, exist_ok=True)
    save(rows, SAVED)
    SAVED.with_suffix(".meta.json").write_text(json.dumps(meta))
    args.doc.write_text(render(rows, meta))
    print(f"soak: wrote {args.doc}", flush=True)
    for f in failures:
        print(f"soak: FAILED: {f}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
