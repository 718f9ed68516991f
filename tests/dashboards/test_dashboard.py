"""The Grafana dashboard, linted with grafana/dashboard-linter's rules, and checked against what wxgate exports."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from proxy.config.schema import ROUTE_TAGS
from proxy.observability.metrics import Metrics
from tests.dashboards.queries import (
    RECORDING,
    ROOT,
    Query,
    dashboard,
    panel_queries,
    panels,
    rule_queries,
    rules,
    scan,
    substitute,
    variable_selectors,
    variables,
)

# Grafana's unit ids (packages/grafana-data/src/valueFormats/categories.ts) that suit wxgate's series.
UNITS = {
    "none",
    "short",
    "percent",
    "percentunit",
    "s",
    "ms",
    "bytes",
    "decbytes",
    "reqps",
    "ops",
    "cps",
    "dtdurations",
}
UNIT_PANELS = {"stat", "singlestat", "graph", "table", "timeseries", "gauge"}
DS = "$datasource"


def visible_panels() -> list[dict[str, Any]]:
    return [p for p in panels() if p["type"] != "row"]


def test_fixed_uid_title_and_rows() -> None:
    d = dashboard()
    assert d["uid"] == "wxgate-overview"
    rows = [p["title"] for p in panels() if p["type"] == "row"]
    assert rows == [
        "Overview",
        "Anomaly signals",
        "Inbound requests (RED)",
        "Backend calls (RED)",
        "Verification",
        "Deduplication",
        "Normalization and deadlines",
        "Outbox",
        "Store",
        "Saturation",
    ]


def test_template_datasource_rule() -> None:
    (ds,) = [v for v in variables() if v["type"] == "datasource"]
    assert (ds["name"], ds["label"], ds["query"]) == ("datasource", "Data Source", "prometheus")


@pytest.mark.parametrize("name", ["job", "instance"])
def test_template_job_and_instance_rules(name: str) -> None:
    (v,) = [v for v in variables() if v["name"] == name]
    assert v["label"] == name and v["type"] == "query"
    assert v["datasource"]["uid"] == DS
    assert v["query"]["query"].startswith("label_values(")
    assert v["multi"] is True and v["allValue"] == ".+"


def test_template_variables_chain_job_then_instance_then_protocol_then_route() -> None:
    by_name = {v["name"]: v["query"]["query"] for v in variables() if v["type"] == "query"}
    assert list(by_name) == ["job", "instance", "protocol", "route"]
    assert 'job=~"$job"' in by_name["instance"]
    assert 'job=~"$job"' in by_name["protocol"] and 'instance=~"$instance"' in by_name["protocol"]
    assert 'job=~"$job"' in by_name["route"] and 'instance=~"$instance"' in by_name["route"]
    assert 'protocol=~"$protocol"' in by_name["route"]


@pytest.mark.parametrize("protocol", sorted(ROUTE_TAGS))
def test_the_protocol_variable_lists_every_configured_protocol(protocol: str) -> None:
    """The variable reads its values from a series that exists, at zero, for every configured route: a
    protocol shows up in the list as soon as a route uses it, before its first request."""
    (query,) = [v["query"]["query"] for v in variables() if v["name"] == "protocol"]
    series = re.fullmatch(r"label_values\((\w+)\{.*\},\s*protocol\)", query)
    assert series is not None, query
    metrics = Metrics(CollectorRegistry())
    metrics.init_routes([("r", protocol)])
    assert metrics.registry.get_sample_value(series.group(1), {"route": "r", "protocol": protocol}) == 0.0


def test_panel_datasource_rule() -> None:
    for p in visible_panels():
        assert p["datasource"]["uid"] == DS, p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == DS, p["title"]


def test_panel_title_description_rule() -> None:
    for p in visible_panels():
        assert p["title"].strip(), p
        assert len(p.get("description", "").strip()) > 20, f"panel {p['title']!r} needs a description"


def test_panel_units_rule() -> None:
    for p in visible_panels():
        if p["type"] in UNIT_PANELS:
            assert p["fieldConfig"]["defaults"].get("unit") in UNITS, f"panel {p['title']!r} needs a unit"
            for o in p["fieldConfig"]["overrides"]:
                for prop in o["properties"]:
                    if prop["id"] == "unit":
                        assert prop["value"] in UNITS


def test_panels_do_not_overlap() -> None:
    cells: set[tuple[int, int]] = set()
    for p in panels():
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24, p["title"]
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & mine, f"panel {p['title']!r} overlaps another"
        cells |= mine


def test_target_rate_interval_rule() -> None:
    for q in panel_queries():
        _, ranges = scan(q.expr)
        assert all(r == "$__rate_interval" for r in ranges), f"{q.where}: {q.expr}"


def test_target_job_and_instance_rules() -> None:
    for q in panel_queries():
        selectors, _ = scan(q.expr)
        assert selectors, q.where
        for s in selectors:
            assert 'job=~"$job"' in s.matchers, f"{q.where}: {s.metric} has no job matcher"
            assert 'instance=~"$instance"' in s.matchers, f"{q.where}: {s.metric} has no instance matcher"


def test_per_route_panels_follow_the_route_variable() -> None:
    route_labelled_names = route_labelled()
    assert "wxgate_requests_total" in route_labelled_names
    for q in panel_queries():
        for s in scan(q.expr)[0]:
            has_route = s.metric.startswith("instance_route:") or s.metric in route_labelled_names
            assert ('route=~"$route"' in s.matchers) == has_route, f"{q.where}: {s.metric}"


def test_target_promql_rule_and_template_label_promql_rule(tmp_path: Path) -> None:
    """Every expression parses: promtool checks them as recording rules (it has no parse-only command)."""
    if shutil.which("promtool") is None:
        pytest.fail("promtool is missing: run .ci/install-system-deps (Debian package prometheus)")
    exprs = [substitute(q.expr) for q in panel_queries() + variable_selectors()]
    doc = {
        "groups": [
            {"name": "lint", "rules": [{"record": f"lint:q{i}", "expr": e} for i, e in enumerate(exprs)]}
        ]
    }
    path = tmp_path / "lint.yaml"
    path.write_text(yaml.safe_dump(doc))
    out = subprocess.run(
        ["promtool", "check", "rules", str(path)], capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0, out.stdout + out.stderr


def exported_series() -> set[str]:
    """Every sample name wxgate can export, from a fresh registry (families: all series, used or not)."""
    metrics = Metrics(CollectorRegistry())
    metrics.init_routes([("mp", "wechat-mp")])
    names = set()
    for fam in metrics.registry.collect():
        suffixes = {
            "counter": ("_total",),
            "histogram": ("_bucket", "_count", "_sum"),
            "info": ("_info",),
        }.get(fam.type, ("",))
        names |= {fam.name + s for s in suffixes}
    return names


def route_labelled() -> set[str]:
    """Sample names of the metrics that carry a ``route`` label."""
    from prometheus_client.metrics import MetricWrapperBase

    m = Metrics(CollectorRegistry())
    wrappers = [w for w in vars(m).values() if isinstance(w, MetricWrapperBase) and "route" in w._labelnames]
    suffixes = ("", "_total", "_bucket", "_count", "_sum")
    return {w._name + s for w in wrappers for s in suffixes}


def named_series(queries: list[Query]) -> set[str]:
    return {s.metric for q in queries for s in scan(q.expr)[0]}


def test_every_series_the_dashboard_and_rules_name_is_exported_or_recorded() -> None:
    recorded = {r["record"] for r in rules(RECORDING)}
    named = named_series(panel_queries() + rule_queries() + variable_selectors())
    unknown = named - exported_series() - recorded - {"up"}
    assert not unknown, f"named but never exported: {sorted(unknown)}"
    assert recorded <= named, "a recording rule nobody reads"


def test_the_exemplar_toggle_is_on_latency_panels_only() -> None:
    for p in visible_panels():
        for t in p["targets"]:
            if t.get("exemplar"):
                assert "_duration_seconds_bucket" in t["expr"], p["title"]


def test_provisioning_points_at_the_dashboard() -> None:
    ds = yaml.safe_load((ROOT / "dashboards/provisioning/datasources/wxgate.yaml").read_text())
    assert [d["type"] for d in ds["datasources"]] == ["prometheus"]
    providers = yaml.safe_load((ROOT / "dashboards/provisioning/dashboards/wxgate.yaml").read_text())[
        "providers"
    ]
    assert providers[0]["type"] == "file" and providers[0]["options"]["path"].endswith("/wxgate")
    assert re.fullmatch(r"[a-z0-9-]{1,40}", dashboard()["uid"])


@pytest.mark.parametrize(
    ("expr", "selectors", "ranges"),
    [
        (
            'sum by (route, le) (rate(foo_bucket{job=~"$job"}[5m])) / bar',
            [("foo_bucket", 'job=~"$job"'), ("bar", "")],
            ["5m"],
        ),
        (
            'histogram_quantile(0.9, x{a="}"} offset 1m) or on (b) y[1h:1m]',
            [("x", 'a="}"'), ("y", "")],
            ["1h"],
        ),
    ],
)
def test_the_scanner_the_lint_rules_rely_on(
    expr: str, selectors: list[tuple[str, str]], ranges: list[str]
) -> None:
    found, found_ranges = scan(expr)
    assert [(s.metric, s.matchers) for s in found] == selectors
    assert found_ranges == ranges
