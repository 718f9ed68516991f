"""Every PromQL expression the dashboard and the Prometheus rules hold, with Grafana's variables substituted.

Shared by the lint tests (syntax, matchers, exported names) and the integration test that runs each one
against a real Prometheus scraping a real wxgate.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "dashboards" / "wxgate.json"
RULES_DIR = ROOT / "dashboards" / "prometheus"
RECORDING = RULES_DIR / "recording.yaml"
ALERTS = RULES_DIR / "alerts.yaml"
# An alert is "<signal> <comparison> <number>": the signal must return data, the comparison decides firing.
ALERT_FORM = re.compile(r"^(?P<signal>.+?)\s*(?P<op>==|!=|>=|<=|>|<)\s*(?P<threshold>[0-9.e+-]+)$", re.S)


@dataclass(frozen=True)
class Query:
    where: str  # panel title / rule name, for failure messages
    expr: str


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def panels() -> Iterator[dict[str, Any]]:
    for p in dashboard()["panels"]:
        yield p
        yield from p.get("panels", [])


def panel_queries() -> list[Query]:
    return [
        Query(f"panel {p['title']!r} target {t['refId']}", t["expr"])
        for p in panels()
        for t in p.get("targets", [])
    ]


def variables() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = dashboard()["templating"]["list"]
    return out


def variable_selectors() -> list[Query]:
    """The series selector inside each ``label_values(selector, label)`` variable query."""
    out = []
    for v in variables():
        if v["type"] != "query":
            continue
        m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", v["query"]["query"])
        assert m, f"variable {v['name']}: expected label_values(selector, label)"
        out.append(Query(f"variable {v['name']}", m.group(1)))
    return out


def rules(path: Path) -> list[dict[str, Any]]:
    doc = yaml.safe_load(path.read_text())
    return [r for g in doc["groups"] for r in g["rules"]]


def alert_signal(expr: str) -> str:
    m = ALERT_FORM.match(expr.strip())
    assert m, f"alert expression is not '<signal> <comparison> <number>': {expr!r}"
    return m.group("signal")


def rule_queries() -> list[Query]:
    out = [Query(f"recording {r['record']}", r["expr"]) for r in rules(RECORDING)]
    out += [Query(f"recorded series {r['record']}", r["record"]) for r in rules(RECORDING)]
    out += [Query(f"alert {r['alert']}", alert_signal(r["expr"])) for r in rules(ALERTS)]
    return out


# An offset modifier: "the same hour a day/week ago" has no data in a Prometheus that started minutes ago.
_OFFSET = re.compile(r"\s+offset\s+-?(?:[0-9]+(?:ms|[smhdwy]))+\b")


def live(expr: str) -> str:
    """``expr`` as a Prometheus with minutes of history can answer it: offsets dropped, and every recorded series
    whose rule reads history (a baseline) replaced by its rule's expression, offsets dropped too. What is left
    still names every series, label and join of the original."""
    for r in rules(RECORDING):
        if _OFFSET.search(r["expr"]):
            name, body = re.escape(r["record"]), "(" + r["expr"].replace("\\", "\\\\") + ")"
            expr = re.sub(rf"(?<![\w:]){name}(?![\w:])", body, expr)
    return _OFFSET.sub("", expr)


def substitute(
    expr: str,
    job: str = ".+",
    instance: str = ".+",
    route: str = ".+",
    rate: str = "5m",
    protocol: str = ".+",
) -> str:
    """What Grafana sends with every variable at "All" (allValue ``.+``) or the values given."""
    for name, value in (
        ("$__rate_interval", rate),
        ("$instance", instance),
        ("$protocol", protocol),
        ("$route", route),
        ("$job", job),
    ):
        expr = expr.replace("${" + name[1:] + "}", value).replace(name, value)
    return expr


# -- a small PromQL scanner: enough to find vector selectors and range durations ------------------------------

_KEYWORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
}
_GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}
_TOKEN = re.compile(
    r'(?P<str>"(?:[^"\\]|\\.)*")|(?P<range>\[[^\]]*\])|(?P<braces>\{(?:[^}"]|"(?:[^"\\]|\\.)*")*\})'
    r"|(?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)"
    r"|(?P<dur>(?:[0-9]+(?:ms|[smhdwy]))+\b)|(?P<num>[0-9]+(?:\.[0-9]+)?(?:e[+-]?[0-9]+)?)|(?P<other>\S)"
)


@dataclass(frozen=True)
class Selector:
    metric: str
    matchers: str  # the text inside { }, "" when there were none


def scan(expr: str) -> tuple[list[Selector], list[str]]:
    """(vector selectors, range durations) of a PromQL expression."""
    tokens = [(m.lastgroup, m.group()) for m in _TOKEN.finditer(expr)]
    selectors: list[Selector] = []
    ranges: list[str] = []
    i = 0
    while i < len(tokens):
        kind, text = tokens[i]
        nxt = tokens[i + 1] if i + 1 < len(tokens) else (None, "")
        if kind == "range":
            ranges.append(text[1:-1].split(":")[0])
        elif kind == "ident" and text in _GROUPING and nxt[1] == "(":
            while tokens[i][1] != ")":  # skip the label list
                i += 1
        elif kind == "ident" and (nxt[1] == "(" or nxt[1] in ("by", "without") or text in _KEYWORDS):
            pass  # a function, an aggregation ("sum by (…) (…)") or a keyword
        elif kind == "ident":
            selectors.append(Selector(text, nxt[1][1:-1] if nxt[0] == "braces" else ""))
        elif kind == "braces":
            prev = tokens[i - 1] if i else (None, "")
            if prev[0] != "ident":
                selectors.append(Selector("", text[1:-1]))
        i += 1
    return selectors, ranges
