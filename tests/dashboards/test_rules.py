"""The Prometheus rules: promtool-valid, each alert tested firing and quiet, annotated and with a runbook.

The anomaly alerts are tested in their own file, anomaly_test.yaml: their baselines need a week of series, which
promtool can only evaluate in reasonable time at a coarser evaluation interval than the other alerts' tests use.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.dashboards.queries import ALERT_FORM, ALERTS, RECORDING, ROOT, RULES_DIR, rules

RULE_TESTS = ("alerts_test.yaml", "anomaly_test.yaml", "budget_test.yaml")


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("promtool") is None:
        pytest.fail("promtool is missing: run .ci/install-system-deps (Debian package prometheus)")
    return subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=60, cwd=RULES_DIR)


def test_promtool_check_rules() -> None:
    out = promtool("check", "rules", str(RECORDING), str(ALERTS))
    assert out.returncode == 0, out.stdout + out.stderr
    counts = re.findall(r"SUCCESS: (\d+) rules found", out.stdout)
    assert counts == [str(len(rules(RECORDING))), str(len(rules(ALERTS)))]


def test_promtool_test_rules_every_alert_fires_and_stays_quiet() -> None:
    out = promtool("test", "rules", *RULE_TESTS)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count("SUCCESS") == len(RULE_TESTS)
    text = "\n".join((RULES_DIR / name).read_text() for name in RULE_TESTS)
    tested = set(re.findall(r"alertname: (\w+)", text))
    alerts = {r["alert"] for r in rules(ALERTS)}
    assert tested == alerts
    # each alert is tested with an empty expectation (quiet) and a non-empty one (firing)
    for name in alerts:
        blocks = re.findall(
            rf"alertname: {name}\n    exp_alerts:(.*?)(?=\n  - eval_time|\n- name|\Z)", text, re.S
        )
        assert any(b.strip() == "[]" for b in blocks), f"{name}: no quiet case"
        assert any("exp_labels" in b for b in blocks), f"{name}: no firing case"


def test_each_anomaly_alert_is_tested_against_its_look_alikes() -> None:
    """Beside the route that fires (``<prefix>_mp``), the same test holds routes that must stay quiet: one
    without history (``_new``), one whose counters reset (``_reset``), one with too little traffic (``_small``)."""
    doc = yaml.safe_load((RULES_DIR / "anomaly_test.yaml").read_text())
    (group,) = doc["tests"]
    routes = set(re.findall(r'route="(\w+)"', " ".join(s["series"] for s in group["input_series"])))
    anomalies = {
        r["alert"]
        for g in yaml.safe_load(ALERTS.read_text())["groups"]
        for r in g["rules"]
        if g["name"] == "wxgate.anomaly.alerts"
    }
    firing = {t["alertname"]: t["exp_alerts"] for t in group["alert_rule_test"] if t["exp_alerts"]}
    assert set(firing) == anomalies
    for name, expected in firing.items():
        (prefix,) = {a["exp_labels"]["route"].split("_")[0] for a in expected}
        look_alikes = {f"{prefix}_{kind}" for kind in ("new", "reset", "small")}
        assert look_alikes <= routes, f"{name}: missing {look_alikes - routes}"
        assert all("instance" not in a["exp_labels"] for a in expected), f"{name}: must sum over instances"


def test_the_example_scrape_config_is_valid_and_loads_the_rules() -> None:
    out = promtool("check", "config", "scrape.example.yaml")
    assert out.returncode == 0, out.stdout + out.stderr


def test_alerts_are_few_symptom_based_annotated_and_have_a_runbook() -> None:
    alerts = rules(ALERTS)
    assert len(alerts) <= 12
    for a in alerts:
        assert ALERT_FORM.match(a["expr"].strip()), a["alert"]
        assert a["labels"]["severity"] in ("warning", "critical")
        ann = a["annotations"]
        assert ann["summary"] and len(ann["description"]) > 60, a["alert"]
        runbook = ROOT / ann["runbook_url"]
        assert runbook == ROOT / "docs" / "runbooks" / f"{a['alert']}.md"
        text = runbook.read_text()
        assert text.startswith(f"# {a['alert']}\n"), runbook
        for section in ("## Impact", "## Diagnose", "## Mitigate"):
            assert section in text, f"{runbook}: {section}"


def test_every_runbook_belongs_to_an_alert() -> None:
    alerts = {r["alert"] for r in rules(ALERTS)}
    assert {p.stem for p in (ROOT / "docs" / "runbooks").glob("*.md")} == alerts


def test_recording_rules_follow_the_level_metric_operations_convention() -> None:
    """level:metric:operations, the level naming the labels kept besides job (route-level series sum over
    instances, so that a baseline outlives the pods that recorded it)."""
    for r in rules(RECORDING):
        level, metric, ops = r["record"].split(":")
        assert level in ("instance_route", "route", "route_reason"), r["record"]
        assert metric.startswith("wxgate_") and ops, r["record"]
        kept = "by (job, " + level.replace("_", ", ")
        assert kept in r["expr"] or r["expr"].startswith(level + ":"), r["record"]


def test_rule_files_do_not_reference_paths_outside_the_directory() -> None:
    for path in RULES_DIR.glob("*.yaml"):
        assert "/" not in "".join(re.findall(r"^\s*- (\S+\.yaml)", path.read_text(), re.M)), path
    assert Path(RULES_DIR / "alerts_test.yaml").exists()
