"""The metric table of the chart's README and a name/label extractor for PromQL expressions.

table = metric_table()                         # {"vllm:num_requests_waiting": ("gauge", {"model_name", "engine"}), ...}
names, labels = names_and_labels('sum by (pod) (rate(x_total{a="1"}[5m]))')   # {"x_total"}, {"pod", "a"}
"""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "server" / "deploy" / "helm" / "circuit-serve" / "README.md"

# Labels Prometheus adds to every series it scrapes through the ServiceMonitor (not exported by the server).
TARGET_LABELS = {"namespace", "pod", "job", "service", "instance", "container", "endpoint"}

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
    "inf",
    "nan",
    "atan2",
}
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_SELECTOR = re.compile(r"\{([^{}]*)\}")
_MATCHER = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^()]*)\)")
_RANGE = re.compile(r"\[[^\]]*\]")
_IDENT = re.compile(r"(?<![A-Za-z0-9_:.])([A-Za-z_:][A-Za-z0-9_:]*)(?![A-Za-z0-9_:])(?!\s*\()")


def metric_table() -> dict[str, tuple[str, set[str]]]:
    """metric -> (type, labels) from the table between the README's metrics markers."""
    text = README.read_text()
    block = text.split("<!-- metrics:begin -->", 1)[1].split("<!-- metrics:end -->", 1)[0]
    table: dict[str, tuple[str, set[str]]] = {}
    for line in block.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].startswith("`"):
            labels = {c.strip(" `") for c in cells[2].split(",") if c.strip(" `")}
            table[cells[0].strip("`")] = (cells[1], labels)
    return table


def series_names(table: dict[str, tuple[str, set[str]]]) -> dict[str, set[str]]:
    """Every series name a scrape holds (histograms as _bucket/_sum/_count) -> the labels it may carry."""
    out: dict[str, set[str]] = {}
    for name, (kind, labels) in table.items():
        if kind == "histogram":
            out[f"{name}_bucket"] = labels | {"le"}
            out[f"{name}_sum"] = set(labels)
            out[f"{name}_count"] = set(labels)
        else:
            out[name] = set(labels)
    return out


def names_and_labels(expr: str) -> tuple[set[str], set[str]]:
    """Metric names and label names an expression refers to (strings, comments and ranges ignored)."""
    e = _STRING.sub('""', expr)
    e = re.sub(r"#[^\n]*", "", e)
    labels: set[str] = set()
    for body in _SELECTOR.findall(e):
        labels |= set(_MATCHER.findall(body))
    e = _SELECTOR.sub(" ", e)
    for body in _GROUPING.findall(e):
        labels |= {x.strip() for x in body.split(",") if x.strip()}
    e = _GROUPING.sub(" ", e)
    e = _RANGE.sub(" ", e)
    names = {m for m in _IDENT.findall(e) if m not in _KEYWORDS}
    return names, labels
