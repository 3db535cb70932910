"""Read grafana/dashboards/*.json the way Grafana does: panels, targets and variables.

Shared by tests/test_dashboards.py (every query must return data from a real Prometheus) and
bench/render_dashboards.py (the README pictures), so both see the same queries.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.procs import REPO_ROOT

DASHBOARD_DIR = REPO_ROOT / "grafana" / "dashboards"
_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")
_LABEL_VALUES = re.compile(r"^label_values\((?P<match>.+),\s*(?P<label>\w+)\)$")
_METRIC = re.compile(r"\b(safegate_[a-z0-9_]+|up)\b(?!\s*\()")


@dataclass(frozen=True)
class Target:
    panel: str
    panel_type: str
    ref: str
    expr: str
    legend: str
    instant: bool
    format: str         # time_series, table, or heatmap (Grafana de-accumulates buckets)


@dataclass(frozen=True)
class Variable:
    name: str
    label: str          # the label whose values the variable lists
    match: str          # the series selector of label_values(MATCH, LABEL)
    all_value: str | None
    multi: bool


def dashboard_files() -> list[Path]:
    return sorted(DASHBOARD_DIR.glob("*.json"))


def load(path: Path) -> dict[str, Any]:
    doc = json.loads(path.read_text())
    assert isinstance(doc, dict), f"{path}: not a JSON object"
    return doc


def panels(doc: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every panel, including those nested in collapsed rows."""
    out: list[dict[str, Any]] = []
    for panel in doc.get("panels", []):
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def targets(doc: Mapping[str, Any]) -> list[Target]:
    return [Target(p["title"], p["type"], t["refId"], t["expr"], t.get("legendFormat", ""),
                   bool(t.get("instant")), t.get("format", "time_series"))
            for p in panels(doc) for t in p.get("targets", [])]


def variables(doc: Mapping[str, Any]) -> list[Variable]:
    """Query variables (label_values only: what Grafana's Prometheus datasource runs)."""
    out = []
    for var in doc.get("templating", {}).get("list", []):
        if var.get("type") != "query":
            continue
        query = var["query"] if isinstance(var["query"], str) else var["query"]["query"]
        m = _LABEL_VALUES.match(query.strip())
        if m is None:
            raise ValueError(f"variable {var['name']}: unsupported query {query!r}")
        out.append(Variable(var["name"], m["label"], m["match"].strip(),
                            var.get("allValue") if var.get("includeAll") else None,
                            bool(var.get("multi"))))
    return out


def substitute(expr: str, values: Mapping[str, str]) -> str:
    """Replace $name / ${name} as Grafana does; an unknown variable is an error."""
    def one(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        if name not in values:
            raise KeyError(f"unknown dashboard variable ${name} in {expr!r}")
        return values[name]
    return _VARIABLE.sub(one, expr)


def metric_names(expr: str) -> set[str]:
    """Metric names a query reads (SafeGate's, and `up`), label names and functions excluded."""
    without_labels = re.sub(r"\{[^}]*\}", "", expr)
    without_strings = re.sub(r'"[^"]*"', "", without_labels)
    return set(_METRIC.findall(without_strings))


def legend(fmt: str, labels: Mapping[str, str]) -> str:
    """Grafana's legendFormat: {{label}} replaced by the series' value."""
    if not fmt or fmt == "__auto":
        return ", ".join(f"{k}={v}" for k, v in sorted(labels.items()) if k != "__name__") \
            or "value"
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt)
