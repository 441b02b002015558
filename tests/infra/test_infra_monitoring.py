"""Grafana dashboard and Prometheus config: structure, PromQL parsed by a real PromQL parser, metric
names limited to what lineguard exports, and promtool (the Prometheus project's own checker)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml
from infra_common import INFRA, LINEGUARD_METRICS, require_tool

DASHBOARD = INFRA / "grafana" / "lineguard-overview.json"
PROMETHEUS = INFRA / "prometheus" / "prometheus.yml"
# Grafana's built-in and dashboard variables, replaced by representative values before parsing.
GRAFANA_VARS = {"$__rate_interval": "1m", "$__range": "6h", "$__interval": "30s", "$instance": ".*"}
HISTOGRAMS = {"lineguard_inference_latency_seconds", "lineguard_plc_write_latency_seconds"}


def dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def exprs() -> list[tuple[str, str]]:
    return [(p["title"], t["expr"]) for p in dashboard()["panels"] for t in p["targets"]]


def concrete(expr: str) -> str:
    for var, val in GRAFANA_VARS.items():
        expr = expr.replace(var, val)
    assert "$" not in expr, f"unknown Grafana variable left in {expr}"
    return expr


def selectors(expr: str) -> list[str]:
    names: list[str] = []

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            assert node.name, "selector without a metric name"
            names.append(node.name)

    promql_parser.walk(promql_parser.parse(concrete(expr)), visit)
    return names


def base_metric(series: str) -> str:
    """Histogram series lineguard_x_bucket/_sum/_count belong to metric lineguard_x."""
    return re.sub(r"_(bucket|sum|count)$", "", series)


def test_dashboard_structure() -> None:
    d = dashboard()
    assert d["uid"] and d["title"] and d["schemaVersion"] >= 36
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    var_names = {v["name"] for v in d["templating"]["list"]}
    assert {"datasource", "instance"} <= var_names
    for p in d["panels"]:
        assert p["type"] in {"timeseries", "stat"}, p["title"]
        assert set(p["gridPos"]) == {"x", "y", "w", "h"} and p["gridPos"]["x"] + p["gridPos"]["w"] <= 24
        assert p["datasource"]["uid"] == "${datasource}", f"{p['title']}: hard-coded datasource"
        assert p["targets"], p["title"]
        refids = [t["refId"] for t in p["targets"]]
        assert len(refids) == len(set(refids))
        assert p["fieldConfig"]["defaults"]["unit"], f"{p['title']}: no unit"


@pytest.mark.parametrize(("title", "expr"), exprs(), ids=[f"{t}:{i}" for i, (t, _) in enumerate(exprs())])
def test_every_expr_parses_and_uses_only_lineguard_metrics(title: str, expr: str) -> None:
    names = selectors(expr)
    assert names, f"{title}: no metric selector in {expr}"
    for series in names:
        assert base_metric(series) in LINEGUARD_METRICS, f"{title}: unknown metric {series}"
        if series.endswith("_bucket"):
            assert base_metric(series) in HISTOGRAMS
            assert "histogram_quantile" in expr and re.search(r"by \(le\b", expr), f"{title}: bucket without le"
    assert 'instance=~"$instance"' in expr, f"{title}: ignores the instance selector"


def test_all_requested_views_are_present() -> None:
    used = {base_metric(s) for _, e in exprs() for s in selectors(e)}
    assert used == set(LINEGUARD_METRICS)
    all_exprs = " ".join(e for _, e in exprs())
    for q in ("0.5", "0.99"):
        for h in HISTOGRAMS:
            assert f"histogram_quantile({q}, sum by (le, instance) (rate({h}_bucket" in all_exprs


def test_parser_rejects_bad_promql() -> None:
    with pytest.raises(Exception):  # noqa: B017 - the binding raises a plain ValueError/RuntimeError
        promql_parser.parse("sum(rate(lineguard_frames_total[5m])")


def test_exprs_pass_promtool(tmp_path: Path) -> None:
    promtool = require_tool("promtool", "apt-get install prometheus")
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"lineguard:dashboard_{i}", "expr": concrete(e)} for i, (_, e) in enumerate(exprs())
                ],
            }
        ]
    }
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump(rules))
    res = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr


def test_prometheus_config_passes_promtool(tmp_path: Path) -> None:
    promtool = require_tool("promtool", "apt-get install prometheus")
    cfg = yaml.safe_load(PROMETHEUS.read_text())
    res = subprocess.run([promtool, "check", "config", str(PROMETHEUS)], capture_output=True, text=True, timeout=60)
    out = res.stdout + res.stderr
    if res.returncode != 0 and "field kubernetes_sd_configs not found" in out:
        # Debian's prometheus is built without Kubernetes discovery: check everything else with it.
        cfg["scrape_configs"] = [j for j in cfg["scrape_configs"] if "kubernetes_sd_configs" not in j]
        path = tmp_path / "prometheus.yml"
        path.write_text(yaml.safe_dump(cfg))
        res = subprocess.run([promtool, "check", "config", str(path)], capture_output=True, text=True, timeout=60)
        out = res.stdout + res.stderr
    assert res.returncode == 0, out


def test_prometheus_jobs_target_lineguard_metrics_endpoint() -> None:
    cfg = yaml.safe_load(PROMETHEUS.read_text())
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    assert {"lineguard-edge", "lineguard-plant-compose", "lineguard-kubernetes-pods"} <= set(jobs)
    for static in jobs["lineguard-edge"]["static_configs"]:
        assert all(t.endswith(":8080") for t in static["targets"])
    k8s = jobs["lineguard-kubernetes-pods"]["relabel_configs"]
    keep = k8s[0]
    assert keep["action"] == "keep" and keep["source_labels"] == [
        "__meta_kubernetes_pod_annotation_prometheus_io_scrape"
    ]
    # The address rewrite must turn "10.0.0.7:9999" + port annotation "8080" into 10.0.0.7:8080.
    rewrite = next(r for r in k8s if r.get("target_label") == "__address__")
    m = re.fullmatch(rewrite["regex"], "10.0.0.7:9999;8080")
    assert m and rewrite["replacement"].replace("$1", m.group(1)).replace("$2", m.group(2)) == "10.0.0.7:8080"


def test_grafana_provisioning_files() -> None:
    ds = yaml.safe_load((INFRA / "grafana/provisioning/datasources/lineguard.yaml").read_text())
    assert ds["datasources"][0]["type"] == "prometheus"
    dash = yaml.safe_load((INFRA / "grafana/provisioning/dashboards/lineguard.yaml").read_text())
    assert dash["providers"][0]["type"] == "file"
