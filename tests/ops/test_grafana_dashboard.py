"""The committed dashboard is what the generator produces, and its queries are valid PromQL."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import promql_parser

GRAFANA = Path(__file__).resolve().parents[2] / "ops" / "grafana"


def load_generator():
    spec = importlib.util.spec_from_file_location("fairfeed_dashboard", GRAFANA / "dashboard.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def dashboard_queries(dash: dict) -> tuple[list[str], list[str]]:
    """(panel target expressions, variable queries) of a dashboard."""
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    variables = [v["query"] for v in dash["templating"]["list"] if v["type"] == "query"]
    return exprs, variables


def substitute(expr: str, **values: str) -> str:
    """Grafana's variables and macros replaced by concrete values."""
    out = expr.replace("$__rate_interval", values.get("rate", "1m"))
    for name in ("instrument", "provider", "venue"):  # longest first: no prefix clashes here
        out = out.replace(f"${name}", values.get(name, ".*"))
    return out.replace("${datasource}", "prometheus")


def test_committed_dashboard_is_up_to_date() -> None:
    gen = load_generator()
    committed = (GRAFANA / "fairfeed.json").read_text()
    assert committed == gen.render(), "run: python ops/grafana/dashboard.py"


def test_dashboard_shape() -> None:
    dash = json.loads((GRAFANA / "fairfeed.json").read_text())
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)) and all(isinstance(i, int) for i in ids)
    assert dash["schemaVersion"] >= 39  # a Grafana 11 model
    names = [v["name"] for v in dash["templating"]["list"]]
    assert names == ["datasource", "provider", "venue", "instrument"]
    _exprs, variables = dashboard_queries(dash)
    assert "$provider" in variables[1] and "$venue" in variables[2]  # chained


def test_every_query_parses() -> None:
    dash = json.loads((GRAFANA / "fairfeed.json").read_text())
    exprs, variables = dashboard_queries(dash)
    assert len(exprs) >= 12
    for expr in exprs:
        promql_parser.parse(substitute(expr))
    for q in variables:
        inner = q[len("label_values(") : q.rindex(",")]
        promql_parser.parse(substitute(inner))
