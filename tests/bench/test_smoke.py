"""The benchmark harness runs end to end: a few seconds of one configuration, and a sane table.

Not a timing test: it checks that the harness starts the backend and wxgate, that every pre-signed request is
accepted (a corpus the verifier refused would show up as non-2xx answers), and that each column is filled.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed (.ci/install-system-deps)"),
]


def test_harness_produces_a_table(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    args = ["--only", "mp-sqlite", "--warmup", "300", "--closed", "2", "--open", "2", "--rate", "100"]
    proc = subprocess.run(
        [sys.executable, "bench/run.py", *args, "--soak", "2000", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]

    rows = [ln for ln in proc.stdout.splitlines() if ln.startswith("| wxgate")]
    assert len(rows) == 1
    assert "⚠" not in rows[0], rows[0]  # every signed request was verified and answered 2xx

    result = json.loads(out.read_text())["results"][0]
    assert result["id"] == "mp-sqlite"
    assert result["rps"] > 0
    assert result["closed"]["status_errors"] == 0
    assert result["open"]["completed"] == result["open"]["sent"] == 200
    assert set(result["open"]["status"]) == {"200"}
    assert result["served_after_warmup"] >= 2000
    assert 0 < result["rss_start_mib"] <= result["rss_end_mib"] + 50
    assert result["stats_end"]["flows"] == 0  # no flow outlives its request
    assert result["stats_end"]["spans_exported"] > 0  # the traced configuration really traced


def test_paired_rounds_and_duplicate_rounds_fill_their_figures(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    args = [
        "--only",
        "mitmdump,dup-mix",
        "--paired",
        "mitmdump,dup-mix",
        "--rounds",
        "2",
        "--round-seconds",
        "1",
    ]
    args += ["--warmup", "300", "--closed", "1", "--open", "1", "--rate", "100", "--soak", "0"]
    args += ["--dup-rounds", "2", "--dedup", "1"]
    proc = subprocess.run(
        [sys.executable, "bench/run.py", *args, "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Paired rounds (2 × 1 s each" in proc.stdout

    data = json.loads(out.read_text())
    dup = next(r for r in data["results"] if r["id"] == "dup-mix")
    assert len(dup["dup_ratios"]) == 2 and all(x > 0 for x in dup["dup_ratios"])
    assert all(d["status_errors"] == 0 for d in dup["duplicates"])  # repeats answered 2xx from the store
    paired = data["paired"]
    assert [len(paired["runs"][k]) for k in ("mitmdump", "dup-mix")] == [2, 2]
    assert paired["ratios"]["mitmdump"]["rps"] == [1.0, 1.0]
    assert all(r["rps"] > 0 and r["status_errors"] == 0 for r in paired["runs"]["dup-mix"])
    assert paired["ratios"]["dup-mix"]["rps_median"] > 0
