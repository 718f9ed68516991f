"""The metric reference table of docs/observability.md, generated from the registry wxgate builds.

python -m tests.docs.metric_reference    # prints the table to paste between the markers
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase

from proxy.observability.metrics import Metrics

BEGIN = "<!-- metric-reference:begin (python -m tests.docs.metric_reference) -->"
END = "<!-- metric-reference:end -->"
SUFFIX = {"counter": "_total", "info": "_info"}


def rows() -> list[tuple[str, str, str, str]]:
    """(name as queried, type, labels, help) for every metric family, sorted by name."""
    registry = CollectorRegistry()
    Metrics(registry).init_routes([("mp", "wechat-mp")])
    out: dict[str, tuple[str, str, str, str]] = {}
    for collector in list(registry._collector_to_names):  # type: ignore[attr-defined]
        declared = (
            collector._labelnames  # label names even before a child exists
            if isinstance(collector, MetricWrapperBase)
            else None
        )
        for fam in collector.collect():
            labels = declared
            if labels is None:
                labels = sorted({k for s in fam.samples for k in s.labels})
            if fam.type == "info":
                labels = sorted({k for s in fam.samples for k in s.labels})
            shown = [lbl for lbl in labels if lbl != "le"]
            name = fam.name + SUFFIX.get(fam.type, "")
            out[name] = (name, fam.type, ", ".join(shown), " ".join(fam.documentation.split()))
    return [out[k] for k in sorted(out)]


def table() -> str:
    lines = ["| metric | type | labels | description |", "|---|---|---|---|"]
    for name, kind, labels, doc in rows():
        lines.append(f"| `{name}` | {kind} | {labels} | {doc.replace('|', '/')} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table())
