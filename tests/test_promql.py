"""The dashboard's and the alert rules' PromQL, checked against a real Prometheus.

A tiny aiohttp app serves `router.metrics.Metrics().render()` after every metric has been
touched once with representative labels; a real Prometheus scrapes it. Then every query
of deploy/grafana/dashboards/router.json and every rule of deploy/prometheus/alerts.yml is
run through /api/v1/query: it must parse and evaluate, the metrics and labels it names must
exist, and a dashboard query must return data carrying the labels its legend shows. A
metric or label renamed in router/metrics.py fails here. promtool checks and unit-tests the
rules (deploy/prometheus/alerts_test.yml).
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase

from router.metrics import Metrics
from tests.fixtures_prometheus import (
    ALERT_RULES,
    Prometheus,
    PrometheusError,
    serve_app_in_thread,
    start_prometheus,
)

REPO = Path(__file__).resolve().parent.parent
DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "router.json"
PROMETHEUS_DIR = REPO / "deploy" / "prometheus"

# Grafana's built-in interval variables, as a query over a short test window sees them.
BUILTIN_VARIABLES = {
    "__rate_interval": "1m",
    "__interval": "1m",
    "__range": "1h",
    "__range_s": "3600",
}
# Labels Prometheus itself adds, and the histogram bucket label.
IMPLICIT_LABELS = {"__name__", "instance", "job", "le"}

# Label values to touch every metric with; each listed value is used at least once, so a
# query that filters on it (status_class="5xx", limit="budget", ...) finds data.
REPRESENTATIVE = {
    "status_class": ["2xx", "4xx", "5xx"],
    "stream": ["false", "true"],
    "result": ["ok", "error"],
    "limit": ["rpm", "tpm", "concurrent", "daily_usd", "monthly_usd"],
    "outcome": ["ok", "timeout"],
    "kind": ["prompt", "completion", "cached"],
    "scope": ["key", "model", "target"],
    "provider": ["cogito", "nebius"],
    "model": ["kimi-k2"],
    "key": ["team-a"],
    "endpoint": ["chat"],
    "reason": ["http_503"],
    "target": ["cogito/kimi-k2"],
    "op": ["incr"],
    "from_provider": ["cogito"],
    "to_provider": ["nebius", "none"],
    "side": ["first", "hedge"],
}


# --------------------------------------------------------------------------- the expressions


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def dashboard_variables(dash: dict[str, Any]) -> dict[str, str]:
    """Template variable -> the value a test substitutes (its "All" value)."""
    values = dict(BUILTIN_VARIABLES)
    for var in dash.get("templating", {}).get("list", []):
        if var["type"] == "datasource":
            continue
        values[var["name"]] = var.get("allValue") or ".*"
    return values


def substitute(expr: str, variables: dict[str, str]) -> str:
    def repl(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        if name not in variables:
            raise KeyError(f"undefined dashboard variable ${name} in {expr!r}")
        return variables[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", repl, expr)


def dashboard_queries() -> list[tuple[str, str, str]]:
    """(id, expr with variables substituted, legendFormat) for every panel target."""
    dash = dashboard()
    variables = dashboard_variables(dash)
    out = []
    for panel in dash["panels"]:
        for target in panel.get("targets", []):
            pid = f"panel:{panel['title']}:{target['refId']}"
            out.append((pid, substitute(target["expr"], variables), target.get("legendFormat", "")))
    return out


def variable_queries() -> list[tuple[str, str, str]]:
    """(variable name, metric, label) for every label_values() template variable."""
    out = []
    for var in dashboard().get("templating", {}).get("list", []):
        if var["type"] != "query":
            continue
        query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        m = re.fullmatch(r"\s*label_values\(\s*(\w+)\s*,\s*(\w+)\s*\)\s*", query)
        assert m, f"variable {var['name']}: unsupported query {query!r}"
        out.append((var["name"], m.group(1), m.group(2)))
    return out


def alert_rules() -> list[tuple[str, str]]:
    rules = yaml.safe_load(ALERT_RULES.read_text())
    out = []
    for group in rules["groups"]:
        for rule in group["rules"]:
            name = rule.get("alert") or rule.get("record")
            out.append((f"rule:{group['name']}:{name}", rule["expr"]))
    return out


ALL_EXPRESSIONS = [(i, e) for i, e, _ in dashboard_queries()] + alert_rules()

METRIC_NAME = re.compile(r"\b(router_[A-Za-z0-9_]+)\b")
GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
MATCHER = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)\s*\"")
LEGEND_LABEL = re.compile(r"\{\{\s*(\w+)\s*\}\}")


def metric_names_in(expr: str) -> set[str]:
    return set(METRIC_NAME.findall(expr))


def label_names_in(expr: str) -> set[str]:
    labels = set(MATCHER.findall(expr))
    for group in GROUPING.findall(expr):
        labels.update(x.strip() for x in group.split(",") if x.strip())
    return labels


# --------------------------------------------------------------------------- the fixtures


def touch_every_metric(metrics: Metrics) -> set[str]:
    """Increment / set / observe every metric once per representative label value."""
    touched = set()
    for metric in vars(metrics).values():
        if not isinstance(metric, MetricWrapperBase):
            continue
        labelnames: tuple[str, ...] = metric._labelnames
        # one combination per listed value of each label, the others at their first value
        combos = [{name: REPRESENTATIVE.get(name, ["x"])[0] for name in labelnames}]
        for name in labelnames:
            for value in REPRESENTATIVE.get(name, ["x"])[1:]:
                combos.append({**combos[0], name: value})
        for labels in combos:
            child = metric.labels(**labels) if labelnames else metric
            if isinstance(metric, Counter):
                child.inc(0.25)
            elif isinstance(metric, Gauge):
                child.set(2 if metric._name == "router_circuit_state" else 1)
            elif isinstance(metric, Histogram):
                child.observe(0.2)
            else:  # a new metric type in router/metrics.py: teach this test about it
                raise TypeError(f"don't know how to touch {metric!r}")
        touched.add(metric._name)
    return touched


@pytest.fixture(scope="module")
def metrics_target() -> Iterator[tuple[str, Metrics]]:
    metrics = Metrics()
    touch_every_metric(metrics)

    async def handle(_request: web.Request) -> web.Response:
        return web.Response(body=metrics.render(), content_type="text/plain", charset="utf-8")

    app = web.Application()
    app.router.add_get("/metrics", handle)
    with serve_app_in_thread(app) as address:
        yield address, metrics


@pytest.fixture(scope="module")
def prom(
    prometheus_binary: str, tmp_path_factory: pytest.TempPathFactory, metrics_target: tuple[str, Metrics]
) -> Iterator[Prometheus]:
    address, _ = metrics_target
    with start_prometheus(tmp_path_factory.mktemp("prometheus"), binary=prometheus_binary) as p:
        p.set_targets([address], job="router")
        p.wait_for_targets_up()
        # enough samples for rate()/increase() over the substituted 1m windows
        p.wait_for("count_over_time(router_requests_in_flight[1m]) >= 4")
        yield p


@pytest.fixture(scope="module")
def label_names_of(prom: Prometheus) -> dict[str, set[str]]:
    """Metric name -> every label name its series carry in Prometheus."""
    out: dict[str, set[str]] = {}
    for expr in [e for _, e in ALL_EXPRESSIONS] + [m for _, m, _ in variable_queries()]:
        for name in metric_names_in(expr):
            if name not in out:
                out[name] = {label for series in prom.series(name) for label in series}
    return out


# --------------------------------------------------------------------------- PromQL against Prometheus


def test_every_metric_was_touched(metrics_target: tuple[str, Metrics]) -> None:
    """Every family in router/metrics.py renders at least one sample (so Prometheus sees it)."""
    _, metrics = metrics_target
    empty = [f.name for f in metrics.registry.collect() if not f.samples]
    assert not empty, f"metrics with no samples after touching: {empty}"


@pytest.mark.parametrize(("where", "expr"), ALL_EXPRESSIONS, ids=[i for i, _ in ALL_EXPRESSIONS])
def test_expression_evaluates(prom: Prometheus, where: str, expr: str) -> None:
    try:
        prom.query(expr)
    except PrometheusError as e:
        pytest.fail(f"{where}: {e}", pytrace=False)


@pytest.mark.parametrize(
    ("where", "expr", "legend"), dashboard_queries(), ids=[i for i, _, _ in dashboard_queries()]
)
def test_dashboard_query_returns_data_with_legend_labels(
    prom: Prometheus, where: str, expr: str, legend: str
) -> None:
    result = prom.query(expr)
    assert result, f"{where}: no data for {expr!r}"
    wanted = set(LEGEND_LABEL.findall(legend))
    for sample in result:
        missing = wanted - sample["metric"].keys()
        assert not missing, f"{where}: legend {legend!r} uses {missing} absent from {sample['metric']}"


def test_referenced_metric_names_exist(prom: Prometheus) -> None:
    known = prom.metric_names()
    referenced: dict[str, set[str]] = {}
    for where, expr in ALL_EXPRESSIONS:
        for name in metric_names_in(expr):
            referenced.setdefault(name, set()).add(where)
    for var, metric, _label in variable_queries():
        referenced.setdefault(metric, set()).add(f"variable:{var}")
    assert referenced, "no router_* metric referenced at all"
    missing = {name: sorted(where) for name, where in referenced.items() if name not in known}
    assert not missing, f"metrics referenced but not exported by router/metrics.py: {missing}"


@pytest.mark.parametrize(("where", "expr"), ALL_EXPRESSIONS, ids=[i for i, _ in ALL_EXPRESSIONS])
def test_referenced_label_names_exist(label_names_of: dict[str, set[str]], where: str, expr: str) -> None:
    available = set(IMPLICIT_LABELS)
    for name in metric_names_in(expr):
        available |= label_names_of.get(name, set())
    unknown = label_names_in(expr) - available
    assert not unknown, f"{where}: labels {unknown} are on none of {sorted(metric_names_in(expr))}"


def test_variable_labels_exist(label_names_of: dict[str, set[str]]) -> None:
    for var, metric, label in variable_queries():
        assert label in label_names_of.get(metric, set()), f"variable {var}: {metric} has no label {label}"


def test_dashboard_shows_every_metric(metrics_target: tuple[str, Metrics]) -> None:
    """Each metric family router/metrics.py exports is on at least one dashboard panel."""
    _, metrics = metrics_target
    on_dashboard: set[str] = set()
    for _, expr, _ in dashboard_queries():
        on_dashboard |= metric_names_in(expr)
    missing = []
    for family in metrics.registry.collect():
        names = {s.name for s in family.samples if not s.name.endswith("_created")}
        if not names & on_dashboard:
            missing.append(family.name)
    assert not missing, f"add a panel to deploy/grafana/dashboards/router.json for: {missing}"


def test_resume_and_hedge_panels_name_existing_metrics() -> None:
    """The resume/hedge row shows resumes by provider pair, hedges started and won, and their
    cost, each from a metric router/metrics.py defines (no Prometheus needed for this one)."""
    defined = {m._name + ("_total" if isinstance(m, Counter) else "")
               for m in vars(Metrics(registry=None)).values() if isinstance(m, MetricWrapperBase)}
    named = {name for pid, expr, _ in dashboard_queries() if pid.startswith(("panel:Resumes", "panel:Hedge"))
             for name in metric_names_in(expr)}
    assert {"router_resumes_total", "router_hedges_started_total", "router_hedges_won_total",
            "router_hedge_wasted_prompt_tokens_total"} <= named
    assert named <= defined, f"unknown metrics on the dashboard: {named - defined}"


def test_alert_rules_load_and_evaluate(prom: Prometheus) -> None:
    """Prometheus loads alerts.yml and evaluates every rule without error on real series."""
    expected = {name.split(":")[-1] for name, _ in alert_rules()}
    prom.load_rules(ALERT_RULES)
    deadline = time.monotonic() + 30
    while True:
        rules = [r for g in prom.rules() for r in g["rules"]]
        evaluated = [r for r in rules if not r.get("lastEvaluation", "0001").startswith("0001")]
        if rules and len(evaluated) == len(rules):
            break
        assert time.monotonic() < deadline, f"rules never all evaluated: {rules}"
        time.sleep(0.25)
    assert {r["name"] for r in rules} == expected
    bad = {r["name"]: r.get("lastError") for r in rules if r["health"] != "ok"}
    assert not bad, f"rules failing in Prometheus: {bad}"


def test_budget_alert_matches_the_proxys_budget_limits() -> None:
    """RouterBudgetRejections filters on the `limit` values the proxy uses for budgets."""
    limits = pytest.importorskip("router.limits")
    expr = dict(alert_rules())["rule:router.spend:RouterBudgetRejections"]
    matchers = set(re.findall(r'limit=~"([^"]+)"', expr))
    assert len(matchers) == 1, expr
    budget = re.compile(matchers.pop())
    for kind in limits.BUDGET_KINDS:
        assert budget.fullmatch(kind), f"{kind!r} is a budget limit the alert misses"
    for kind in (limits.RPM, limits.TPM, limits.CONCURRENT):
        assert not budget.fullmatch(kind), f"{kind!r} is a rate limit, not a budget"


def test_circuit_alert_means_open() -> None:
    from router.metrics import CIRCUIT_STATES

    expr = dict(alert_rules())["rule:router.availability:RouterCircuitOpen"]
    assert expr.strip().endswith(f"== {CIRCUIT_STATES['open']}")


async def test_prometheus_fixture_sees_spend_from_an_app_on_the_test_loop(
    prometheus: Prometheus, aiohttp_server: Any
) -> None:
    """The fixture as the end-to-end spend test uses it: a server on the test's own event
    loop, targets set once its port is known, a wait for an exact total of spend."""
    metrics = Metrics()

    async def handle(_request: web.Request) -> web.Response:
        return web.Response(body=metrics.render(), content_type="text/plain", charset="utf-8")

    app = web.Application()
    app.router.add_get("/metrics", handle)
    server = await aiohttp_server(app)
    await prometheus.set_targets_async([f"127.0.0.1:{server.port}"])
    await prometheus.wait_for_targets_up_async()

    charges = [("team-a", "kimi-k2", "cogito", 0.000123), ("team-a", "kimi-k2", "nebius", 0.1),
               ("team-b", "llama", "nebius", 0.2), ("team-a", "kimi-k2", "cogito", 1.5e-6)]
    for key, model, provider, usd in charges:
        metrics.spend.labels(key, model, provider).inc(usd)
    expected = sum(usd for *_, usd in charges)
    await prometheus.wait_for_value_async("sum(router_spend_usd_total)", expected)
    by_key = {r["metric"]["key"]: float(r["value"][1])
              for r in await prometheus.query_async("sum by (key) (router_spend_usd_total)")}
    assert by_key == pytest.approx({"team-a": 0.000123 + 0.1 + 1.5e-6, "team-b": 0.2})

    metrics.spend.labels("team-b", "llama", "nebius").inc(0.05)
    await prometheus.wait_for_value_async("sum(router_spend_usd_total)", expected + 0.05)
    with pytest.raises(AssertionError, match="never equalled"):
        await prometheus.wait_for_value_async("sum(router_spend_usd_total)", 42.0, timeout=1.5)


# --------------------------------------------------------------------------- promtool


def _promtool(binary: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [binary, *args], cwd=PROMETHEUS_DIR, capture_output=True, text=True, timeout=120
    )


def test_promtool_check_rules(promtool_binary: str) -> None:
    r = _promtool(promtool_binary, "check", "rules", "alerts.yml")
    assert r.returncode == 0, r.stdout + r.stderr


def test_promtool_test_rules(promtool_binary: str) -> None:
    r = _promtool(promtool_binary, "test", "rules", "alerts_test.yml")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout


def test_promtool_test_covers_every_alert() -> None:
    """alerts_test.yml has a firing case and a not-firing case for each alert."""
    tests = yaml.safe_load((PROMETHEUS_DIR / "alerts_test.yml").read_text())
    fires: set[str] = set()
    quiet: set[str] = set()
    for case in tests["tests"]:
        for check in case.get("alert_rule_test", []):
            (fires if check.get("exp_alerts") else quiet).add(check["alertname"])
    alerts = {name.split(":")[-1] for name, _ in alert_rules()}
    assert alerts - fires == set(), f"no firing test for {alerts - fires}"
    assert alerts - quiet == set(), f"no not-firing test for {alerts - quiet}"


def test_promtool_check_compose_prometheus_config(promtool_binary: str) -> None:
    r = _promtool(promtool_binary, "check", "config", "--syntax-only", "prometheus.yml")
    assert r.returncode == 0, r.stdout + r.stderr
