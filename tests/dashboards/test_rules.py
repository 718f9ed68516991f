"""The Prometheus rules: promtool-valid, each alert tested firing and quiet, annotated and with a runbook."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.dashboards.queries import ALERT_FORM, ALERTS, RECORDING, ROOT, RULES_DIR, rules


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("promtool") is None:
        pytest.fail("promtool is missing: run .ci/install-system-deps (Debian package prometheus)")
    return subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=60, cwd=RULES_DIR)


def test_promtool_check_rules() -> None:
    out = promtool("check", "rules", str(RECORDING), str(ALERTS))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS: 7 rules found" in out.stdout


def test_promtool_test_rules_every_alert_fires_and_stays_quiet() -> None:
    out = promtool("test", "rules", "alerts_test.yaml")
    assert out.returncode == 0, out.stdout + out.stderr
    tested = set(re.findall(r"alertname: (\w+)", (RULES_DIR / "alerts_test.yaml").read_text()))
    alerts = {r["alert"] for r in rules(ALERTS)}
    assert tested == alerts
    # each alert is tested with an empty expectation (quiet) and a non-empty one (firing)
    text = (RULES_DIR / "alerts_test.yaml").read_text()
    for name in alerts:
        blocks = re.findall(
            rf"alertname: {name}\n    exp_alerts:(.*?)(?=\n  - eval_time|\n- name|\Z)", text, re.S
        )
        assert any(b.strip() == "[]" for b in blocks), f"{name}: no quiet case"
        assert any("exp_labels" in b for b in blocks), f"{name}: no firing case"


def test_the_example_scrape_config_is_valid_and_loads_the_rules() -> None:
    out = promtool("check", "config", "scrape.example.yaml")
    assert out.returncode == 0, out.stdout + out.stderr


def test_alerts_are_few_symptom_based_annotated_and_have_a_runbook() -> None:
    alerts = rules(ALERTS)
    assert len(alerts) <= 8
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
    for r in rules(RECORDING):
        level, metric, ops = r["record"].split(":")
        assert level == "instance_route" and metric.startswith("wxgate_") and ops, r["record"]
        assert "by (job, instance, route" in r["expr"] or r["expr"].startswith("instance_route:"), r["record"]


def test_rule_files_do_not_reference_paths_outside_the_directory() -> None:
    for path in RULES_DIR.glob("*.yaml"):
        assert "/" not in "".join(re.findall(r"^\s*- (\S+\.yaml)", path.read_text(), re.M)), path
    assert Path(RULES_DIR / "alerts_test.yaml").exists()
