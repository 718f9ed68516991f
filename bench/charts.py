"""The benchmark's charts (PNG, matplotlib): what ``docs/benchmarks.md`` shows beside its tables.

- ``bench-openloop-latency.png``: the open-loop latency distribution of each configuration (latency by
  percentile, the percentile axis in "nines" so the tail gets the room it deserves, both axes logarithmic);
- ``bench-paired-rounds.png``: req/s of each configuration in each paired round (the rounds are seconds apart,
  so a line that moves with the others is the host, a gap between lines is the configuration).

    python bench/charts.py bench/out/results.json docs/
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

OPENLOOP = "bench-openloop-latency.png"
PAIRED = "bench-paired-rounds.png"


def available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _nines(q: float) -> float:
    return -math.log10(max(1.0 - q / 100.0, 1e-4))


def draw(data: dict[str, Any], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    commit = data.get("machine", {}).get("commit", "")
    results = [r for r in data.get("results", []) if r.get("open", {}).get("curve")]
    if results:
        fig, ax = plt.subplots(figsize=(12, 6), dpi=100)
        for r in results:
            o = r["open"]
            xs = [_nines(q) for q, _ in o["curve"]]
            ys = [max(ms, 0.01) for _, ms in o["curve"]]
            # above capacity: requests failed, or the answers came in well below the offered rate
            overloaded = o["errors"] or o.get("achieved_rps", o["rate"]) < 0.95 * o["rate"]
            label = f"{r['id']} (p99 {o['p99_ms']:.1f} ms)" + (" overloaded" if overloaded else "")
            ax.plot(xs, ys, marker=".", linestyle=":" if overloaded else "-", label=label)
        ticks = [0, 50, 90, 99, 99.9, 99.99]
        ax.set_xticks([_nines(q) for q in ticks], [f"p{q:g}" for q in ticks])
        ax.set_yscale("log")
        ax.set_ylabel("latency from the scheduled send time (ms)")
        ax.set_xlabel("percentile")
        rate = results[0]["open"].get("rate", 0)
        ax.set_title(f"Open loop, {rate:.0f} requests/s: latency by percentile ({commit})")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        fig.tight_layout()
        path = out / OPENLOOP
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    paired = data.get("paired") or {}
    if paired.get("runs"):
        fig, ax = plt.subplots(figsize=(12, 5), dpi=100)
        for sc_id, runs in paired["runs"].items():
            xs = list(range(1, len(runs) + 1))
            ax.plot(xs, [x["rps"] for x in runs], marker="o", label=sc_id)
        ax.set_xlabel("round")
        ax.set_ylabel("requests/s")
        ax.set_ylim(bottom=0)
        ax.set_xticks(range(1, paired["rounds"] + 1))
        ax.set_title(f"Paired rounds ({paired['rounds']} × {paired['seconds']:.0f} s each), req/s ({commit})")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        fig.tight_layout()
        path = out / PAIRED
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written


if __name__ == "__main__":
    for p in draw(json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2])):
        print(p)
