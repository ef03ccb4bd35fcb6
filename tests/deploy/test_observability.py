"""Alert rules and dashboard: promtool checks and unit tests, and every expression names only listed metrics."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from tests.deploy.chart_tools import CHART, DEPLOY, find_tool, run
from tests.deploy.promql import TARGET_LABELS, metric_table, names_and_labels, series_names

RULES = DEPLOY / "prometheus" / "rules.yaml"
RULES_TEST = DEPLOY / "prometheus" / "rules_test.yaml"
DASHBOARD = CHART / "dashboards" / "circuit-serve.json"
# Grafana's variables, as a query would see them
GRAFANA_VARS = {"$__rate_interval": "5m", "$__interval": "1m", "${datasource}": "prom"}


def rule_exprs() -> dict[str, str]:
    doc = yaml.safe_load(RULES.read_text())
    return {r["alert"]: r["expr"] for g in doc["groups"] for r in g["rules"]}


def dashboard_exprs() -> dict[str, str]:
    """Panel title/refId -> expression, Grafana variables substituted."""
    dash = json.loads(DASHBOARD.read_text())
    out = {}
    for panel in dash["panels"]:
        for t in panel.get("targets", []):
            expr = t["expr"]
            for var, value in GRAFANA_VARS.items():
                expr = expr.replace(var, value)
            out[f"{panel['title']}/{t['refId']}"] = expr
    return out


def check_names(exprs: dict[str, str]) -> None:
    series = series_names(metric_table())
    for where, expr in exprs.items():
        names, labels = names_and_labels(expr)
        assert names, f"{where}: no metric in {expr!r}"
        unknown = names - set(series)
        assert not unknown, f"{where}: metrics not in the README's table: {unknown}"
        allowed = set().union(*(series[n] for n in names)) | TARGET_LABELS
        assert labels <= allowed, f"{where}: labels {labels - allowed} not on {names}"


def test_extractor():
    names, labels = names_and_labels(
        'histogram_quantile(0.99, sum by (namespace, le) (rate(vllm:time_to_first_token_seconds_bucket{a="x{y}"}[5m] offset 10m)))'
        " > 2 # slo\nand on (pod) group_left(model_name) up_total * 0"
    )
    assert names == {"vllm:time_to_first_token_seconds_bucket", "up_total"}
    assert labels == {"namespace", "le", "a", "pod", "model_name"}


def test_promtool_check_rules():
    done = run([find_tool("promtool"), "check", "rules", str(RULES)])
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 7 rules found" in done.stdout


def test_promtool_test_rules():
    done = run([find_tool("promtool"), "test", "rules", str(RULES_TEST)], cwd=RULES_TEST.parent)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_every_alert_has_a_unit_test():
    tests = yaml.safe_load(RULES_TEST.read_text())["tests"]
    firing = {case["alertname"] for t in tests for case in t["alert_rule_test"] if case["exp_alerts"]}
    quiet = {case["alertname"] for t in tests for case in t["alert_rule_test"] if not case["exp_alerts"]}
    assert firing == set(rule_exprs()) and quiet == set(rule_exprs())


def test_alerts_cover_the_issue():
    exprs = rule_exprs()
    assert set(exprs) == {
        "CircuitServeNotServing",
        "CircuitServeEngineRestarts",
        "CircuitServeTTFTAboveSLO",
        "CircuitServeAttributionBacklogGrowing",
        "CircuitServeGraphCacheErrors",
        "CircuitServeWatchedFeatureSpike",
        "CircuitServeAuthFailureBurst",
    }
    assert "> 2 # ttftP99SloSeconds" in exprs["CircuitServeTTFTAboveSLO"]  # the chart's marker


def test_rule_metrics_are_listed():
    check_names(rule_exprs())


def test_dashboard_expressions_parse(tmp_path):
    exprs = dashboard_exprs()
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [{"record": f"dashboard:expr_{i}", "expr": e} for i, e in enumerate(exprs.values())],
            }
        ]
    }
    path = tmp_path / "dashboard-rules.yaml"
    path.write_text(yaml.safe_dump(rules))
    done = run([find_tool("promtool"), "check", "rules", str(path)])
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in done.stdout


def test_dashboard_metrics_are_listed():
    check_names(dashboard_exprs())


def test_dashboard_variables_use_listed_metrics():
    series = series_names(metric_table())
    dash = json.loads(DASHBOARD.read_text())
    for var in dash["templating"]["list"]:
        if var["type"] != "query":
            continue
        m = re.fullmatch(r"label_values\((.+),\s*([A-Za-z_]+)\)", var["query"]["query"])
        assert m, var["query"]
        (name,), _ = names_and_labels(m.group(1))
        assert name in series and m.group(2) in series[name] | TARGET_LABELS


@pytest.mark.parametrize(
    "section, metrics",
    [
        (
            "generation",
            {
                "vllm:time_to_first_token_seconds_bucket",
                "vllm:inter_token_latency_seconds_bucket",
                "vllm:e2e_request_latency_seconds_bucket",
                "vllm:generation_tokens_total",
                "vllm:num_requests_running",
                "vllm:num_requests_waiting",
                "vllm:kv_cache_usage_perc",
            },
        ),
        (
            "attribution",
            {
                "circuit_attribution_queue_depth",
                "circuit_attribution_running",
                "circuit_attribution_duration_seconds_bucket",
                "circuit_graph_cache_hits_total",
                "circuit_graph_cache_misses_total",
                "circuit_attribution_computations_total",
            },
        ),
        ("monitoring", {"circuit_watched_feature_fired_total", "circuit_watched_feature_actions_total"}),
        ("rpc and auth", {"circuit_rpc_requests_total", "circuit_auth_failures_total"}),
    ],
)
def test_dashboard_panels(section, metrics):
    used = set().union(*(names_and_labels(e)[0] for e in dashboard_exprs().values()))
    assert metrics <= used, f"{section}: {metrics - used}"
    pct = [
        e for e in dashboard_exprs().values() if "histogram_quantile(0.99, sum by (le) (rate(vllm:time_to_first" in e
    ]
    assert pct, "TTFT p99"


def test_dashboard_is_valid_grafana_json():
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] == "circuit-serve"
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for p in dash["panels"]:
        if p["type"] != "row":
            assert p["datasource"]["uid"] == "${datasource}"
