"""docs/observability.md stays true: its metric table is the registry's, and it names what the code honours."""

from __future__ import annotations

import re

from tests.dashboards.queries import ALERTS, ROOT, rules
from tests.docs.metric_reference import BEGIN, END, rows, table

DOC = ROOT / "docs" / "observability.md"


def test_the_metric_reference_is_the_registry() -> None:
    text = DOC.read_text()
    documented = text.split(BEGIN, 1)[1].split(END, 1)[0].strip()
    assert documented == table(), (
        "docs/observability.md is stale: paste `python -m tests.docs.metric_reference`"
    )


def test_the_reference_lists_every_wxgate_metric_with_its_help() -> None:
    names = [name for name, _, _, _ in rows()]
    assert "wxgate_requests_total" in names and "wxgate_request_duration_seconds" in names
    assert all(doc for _, _, _, doc in rows())


def test_every_otel_variable_the_code_reads_is_documented() -> None:
    code = (ROOT / "proxy" / "observability" / "otel_env.py").read_text()
    read = set(re.findall(r'"(OTEL_[A-Z_]+[A-Z])"', code))
    read |= {f"OTEL_EXPORTER_OTLP_{s}" for s in re.findall(r'_signal\(environ, "([A-Z_]+)"\)', code)}
    assert "OTEL_EXPORTER_OTLP_HEADERS" in read and "OTEL_TRACES_EXPORTER" in read
    text = DOC.read_text()
    missing = {v for v in read if v not in text and v.replace("OTEL_EXPORTER_OTLP_", "…_") not in text}
    assert missing == set()


def test_every_alert_and_its_runbook_are_listed() -> None:
    text = DOC.read_text()
    for a in rules(ALERTS):
        assert f"[{a['alert']}](runbooks/{a['alert']}.md)" in text


def test_span_names_match_the_code() -> None:
    code = (ROOT / "proxy" / "observability" / "tracing.py").read_text()
    assert 'f"store {operation}"' in code and 'f"redeliver {route}"' in code
    text = DOC.read_text()
    assert "`store {operation}`" in text and "`redeliver {route}`" in text
