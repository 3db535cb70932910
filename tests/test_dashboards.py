"""Grafana dashboards and Prometheus examples, checked against a real Prometheus.

Debian's `prometheus` scrapes a real SafeGate node (on the central feed, with subscribers from
a URL), the real publisher and a real `safegate probe --serve`, with the jobs of
deploy/prometheus/isp.yml and regulator.yml. Then every target of every panel, with the
dashboard variables filled in as Grafana would, must parse AND return data; and the panels
that tell a user something specific (what was blocked, for which tier; which serial each
gateway runs) must show exactly what the test did.
"""

from __future__ import annotations

import math
import shutil
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.support import dashboards as dash
from tests.support.monitoring import ALERTS, EXAMPLES, PrometheusServer, Stack, send_traffic
from tests.support.procs import REPO_ROOT

pytestmark = pytest.mark.integration

# What Grafana would put in for its built-in variables (a 30 s rate window: the whole run, so
# both rounds of traffic are in it).
BUILTINS = {"__rate_interval": "30s", "__interval": "1s", "__range": "5m",
            "__range_s": "300", "datasource": "safegate-prometheus"}
PROM_EXAMPLES = ("school.yml", "isp.yml", "regulator.yml")
DASHBOARDS = {p.stem: p for p in dash.dashboard_files()}


# ---------------------------------------------------------------- static checks


def test_three_dashboards_are_well_formed_grafana_json() -> None:
    assert set(DASHBOARDS) == {"safegate-school", "safegate-isp", "safegate-regulator"}
    uids = set()
    for name, path in DASHBOARDS.items():
        doc = dash.load(path)
        assert doc["schemaVersion"] >= 38, name
        assert doc["uid"] == name and doc["uid"] not in uids
        uids.add(doc["uid"])
        ds_vars = [v for v in doc["templating"]["list"] if v["type"] == "datasource"]
        assert [(v["name"], v["query"]) for v in ds_vars] == [("datasource", "prometheus")]
        ids = [p["id"] for p in dash.panels(doc)]
        assert len(ids) == len(set(ids)), f"{name}: duplicate panel ids"
        cells: set[tuple[int, int]] = set()
        for panel in dash.panels(doc):
            where = f"{name}: panel {panel['title']!r}"
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, where
            assert panel["targets"], where
            assert all(t["datasource"] == panel["datasource"] for t in panel["targets"]), where
            g = panel["gridPos"]
            assert g["x"] + g["w"] <= 24, where
            mine = {(x, y) for x in range(g["x"], g["x"] + g["w"])
                    for y in range(g["y"], g["y"] + g["h"])}
            assert not mine & cells, f"{where} overlaps another panel"
            cells |= mine
        assert dash.variables(doc), f"{name}: no gateway/node variable"


def test_no_query_groups_or_filters_by_a_client_address() -> None:
    # Privacy: nothing in SafeGate's metrics identifies a client; no panel may pretend to.
    for path in DASHBOARDS.values():
        for t in dash.targets(dash.load(path)):
            assert not any(w in t.expr for w in ("client", "src_ip", "source_ip")), t


def test_grafana_provisioning_points_at_the_dashboards() -> None:
    prov = REPO_ROOT / "grafana" / "provisioning"
    ds = yaml.safe_load((prov / "datasources" / "safegate.yaml").read_text())
    (source,) = ds["datasources"]
    assert source["type"] == "prometheus" and source["isDefault"] is True
    providers = yaml.safe_load((prov / "dashboards" / "safegate.yaml").read_text())["providers"]
    (provider,) = providers
    assert provider["type"] == "file"
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards/safegate"


@pytest.mark.parametrize("example", PROM_EXAMPLES)
def test_prometheus_example_passes_promtool_check_config(example: str) -> None:
    tool = shutil.which("promtool")
    if tool is None:
        pytest.fail("promtool is not installed (Debian package 'prometheus')")
    r = subprocess.run([tool, "check", "config", example], capture_output=True, text=True,
                       cwd=EXAMPLES, timeout=60, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS: 1 rule files found" in r.stdout
    assert f"SUCCESS: {len(ALERTS)} rules found" in r.stdout  # alerts.yml, every rule loaded
    doc = yaml.safe_load((EXAMPLES / example).read_text())
    assert doc["rule_files"] == ["alerts.yml"]
    jobs = {j["job_name"] for j in doc["scrape_configs"]}
    # alerts.yml's SafeGateDnsDown watches up{job="safegate"}: the gateways' job name.
    assert "safegate" in jobs
    if example == "regulator.yml":
        assert {"safegate-publisher", "safegate-probe"} <= jobs


def test_isp_example_targets_file_is_valid_file_sd() -> None:
    groups = yaml.safe_load((EXAMPLES / "targets" / "safegate-nodes.yml").read_text())
    assert groups and all(set(g) == {"targets", "labels"} and g["labels"]["node"]
                          for g in groups)
    assert len({g["labels"]["node"] for g in groups}) == len(groups)


# ---------------------------------------------------------------- against a real Prometheus


def _values(result: list[dict[str, Any]]) -> dict[str, float]:
    """{label set as text: value} of an instant vector (target labels left out)."""
    return {",".join(f"{k}={v}" for k, v in sorted(s["metric"].items())
                     if k not in ("__name__", "instance", "job")): float(s["value"][1])
            for s in result}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One node, the publisher, a probe and Prometheus, with traffic scraped twice over."""
    s = Stack(tmp_path_factory.mktemp("monitoring"), nodes=1, probe_interval=1.0).start()
    try:
        prom = s.prometheus
        assert prom is not None
        prom.wait_for("up", lambda r: len(r) == 3 and all(x["value"][1] == "1" for x in r),
                      20, "node, publisher and probe scraped")
        prom.wait_for('safegate_publisher_gateway_applied_serial{gateway="node-1"}',
                      lambda r: bool(r) and r[0]["value"][1] == "1", 20,
                      "node-1 applied and acked serial 1")
        prom.wait_for('safegate_probe_entries{result="blocked"}',
                      lambda r: bool(r) and r[0]["value"][1] == "1", 20,
                      "the independent probe found the feed entry blocked")
        # Counters are born at their first increment and rate() needs two samples, so send
        # traffic once to create every series, let it be scraped, then send it again. The
        # first upstream goes down before that: failover, and its errors, are seen too.
        s.upstream_outage()
        send_traffic(s.gateways)
        s.post_report("node-1")
        # A second order while Prometheus watches: its issue -> verified latency lands in
        # the histogram between two scrapes (the first was verified before any scrape).
        s.publish_entry("BCA-2026-0002", "drugs.test")
        time.sleep(2.5)
        send_traffic(s.gateways)
        s.post_report("node-1")
        prom.wait_for('safegate_publisher_gateway_applied_serial{gateway="node-1"}',
                      lambda r: bool(r) and r[0]["value"][1] == "2", 20,
                      "node-1 applied and acked serial 2")
        time.sleep(2.5)
        yield s
    finally:
        s.stop()


def _prometheus(stack: Stack) -> PrometheusServer:
    assert stack.prometheus is not None
    return stack.prometheus


def variable_values(prom: PrometheusServer, doc: dict[str, Any]) -> dict[str, str]:
    """Each variable's first value, as Grafana picks it on opening the dashboard."""
    values = dict(BUILTINS)
    for var in dash.variables(doc):
        listed = prom.label_values(var.label, var.match)
        assert listed, f"variable ${var.name}: label_values({var.match}, {var.label}) is empty"
        values[var.name] = listed[0]
    return values


def test_variables_list_the_running_node_and_gateway(stack: Stack) -> None:
    prom = _prometheus(stack)
    for path in DASHBOARDS.values():
        for var in dash.variables(dash.load(path)):
            assert prom.label_values(var.label, var.match) == ["node-1"], var


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_every_panel_query_parses_and_returns_data(stack: Stack, name: str) -> None:
    prom = _prometheus(stack)
    doc = dash.load(DASHBOARDS[name])
    values = variable_values(prom, doc)
    # With "All" selected too: the allValue regex must work as well as a single value.
    all_values = dict(values, **{v.name: v.all_value for v in dash.variables(doc)
                                 if v.all_value is not None})
    failures = []
    checked = 0
    for target in dash.targets(doc):
        for vals in (values, all_values):
            expr = dash.substitute(target.expr, vals)
            answer = prom.query(expr)
            checked += 1
            if answer.get("status") != "success":
                failures.append(f"{target.panel} [{target.ref}]: {answer.get('error')}\n  {expr}")
            elif not answer["data"]["result"]:
                failures.append(f"{target.panel} [{target.ref}]: no data\n  {expr}")
            elif all(math.isnan(float(s["value"][1])) for s in answer["data"]["result"]):
                # Grafana draws NaN as nothing: a 0/0 ratio is "No data" to the user too.
                failures.append(f"{target.panel} [{target.ref}]: only NaN\n  {expr}")
    assert not failures, f"{len(failures)} of {checked} queries failed:\n" + "\n".join(failures)
    assert checked >= 2 * 15


def test_every_metric_a_dashboard_reads_is_exported(stack: Stack) -> None:
    # `or vector(0)` keeps quiet panels from showing "No data"; it would also hide a misspelt
    # metric name, so every name must be one Prometheus has actually scraped.
    prom = _prometheus(stack)
    names = set(prom.label_values("__name__", '{job=~"safegate.*"}'))
    used = {m for p in DASHBOARDS.values() for t in dash.targets(dash.load(p))
            for m in dash.metric_names(t.expr)}
    assert "safegate_dns_queries_total" in used and "up" in used
    assert used - names == set()


def _panel_query(name: str, title: str, ref: str = "A") -> str:
    doc = dash.load(DASHBOARDS[name])
    (target,) = [t for t in dash.targets(doc) if t.panel == title and t.ref == ref]
    return target.expr


def _show(stack: Stack, name: str, title: str, ref: str = "A") -> dict[str, float]:
    prom = _prometheus(stack)
    doc = dash.load(DASHBOARDS[name])
    answer = prom.query(dash.substitute(_panel_query(name, title, ref),
                                        variable_values(prom, doc)))
    assert answer["status"] == "success", answer
    return _values(answer["data"]["result"])


def test_school_panels_show_what_the_children_were_kept_from(stack: Stack) -> None:
    by_tier = _show(stack, "safegate-school", "Blocked by category and tier")
    # TRAFFIC: the primary-school room hit adult, gambling and social names and the feed's
    # order (csam); the subscriber (tier teens) hit an adult name; nothing else was blocked.
    # The gateway's self-probes of feed entries (protocol="probe", from every network, staff
    # included) are not children's traffic: the dashboards leave them out.
    assert set(by_tier) == {"category=adult,tier=tieu-hoc", "category=gambling,tier=tieu-hoc",
                            "category=social,tier=tieu-hoc", "category=csam,tier=tieu-hoc",
                            "category=adult,tier=teens"}
    assert all(v > 0 for v in by_tier.values())
    actions = _show(stack, "safegate-school", "Queries by action")
    assert {"action=allowed", "action=blocked", "action=refused"} <= set(actions)
    assert _show(stack, "safegate-school", "Ready") == {"": 1.0}
    assert _show(stack, "safegate-school", "Overdue mandatory entries") == {"": 0.0}
    assert _show(stack, "safegate-school", "Feed serial") == {"feed=central": 2.0}
    probes = _show(stack, "safegate-school", "Enforcement: self-probe results")
    assert set(probes) == {"result=blocked", "result=not_blocked", "result=error"}
    # Both upstreams are listed; the second answered everything. (The stopped first one's
    # errors were born with its first failures, then it was benched for 30 s: rate() cannot
    # see that first burst, as the gateway does not pre-create its error series.)
    errors = _show(stack, "safegate-school", "Upstream error ratio")
    assert stack.unbound is not None and stack.first_upstream is not None
    assert set(errors) == {f"upstream=127.0.0.1:{u.port}"
                           for u in (stack.unbound, stack.first_upstream)}
    assert errors[f"upstream=127.0.0.1:{stack.unbound.port}"] == 0


def test_isp_panels_show_each_node(stack: Stack) -> None:
    qps = _show(stack, "safegate-isp", "QPS per node")
    assert list(qps) == ["node=node-1"] and qps["node=node-1"] > 0
    assert _show(stack, "safegate-isp", "Nodes up") == {"": 1.0}
    assert _show(stack, "safegate-isp", "Nodes behind the feed") == {"": 0.0}
    subs = _show(stack, "safegate-isp", "Subscribers updates")
    assert set(subs) == {f"node=node-1,result={r}"
                         for r in ("updated", "unchanged", "rejected", "error")}
    p95 = _show(stack, "safegate-isp", "Latency percentiles", "B")
    assert 0 < p95[""] < 2.0


def test_regulator_panels_show_serials_overdue_probes_and_reports(stack: Stack) -> None:
    assert _show(stack, "safegate-regulator", "Gateways by applied serial") == {"serial=2": 1.0}
    assert _show(stack, "safegate-regulator", "Gateways lagging") == {"": 0.0}
    assert _show(stack, "safegate-regulator", "Overdue entries per gateway") == {
        "gateway=node-1": 0.0}
    probe = _show(stack, "safegate-regulator", "Independent probe results")
    assert probe == {"resolver=node-1,result=allowed": 0.0, "resolver=node-1,result=blocked": 2.0,
                     "resolver=node-1,result=error": 0.0}
    reports = _show(stack, "safegate-regulator", "Reports received")
    assert reports[""] > 0
    # The second order was verified within seconds of being issued (at most a few s here).
    latency = _show(stack, "safegate-regulator", "Enforcement latency p50 / p95", "B")
    assert 0 < latency[""] <= 10
    buckets = _show(stack, "safegate-regulator", "Enforcement latency distribution")
    assert buckets["le=+Inf"] >= 1
    # The configured province, with no school behind it yet: zeros, not "No data".
    for title in ("School gateways per province", "Gateways behind, per province",
                  "Overdue entries per province", "Enforcement latency p95 per province"):
        assert _show(stack, "safegate-regulator", title) == {"province=ha-noi": 0.0}, title


def test_alert_rules_load_and_evaluate_in_prometheus(stack: Stack) -> None:
    doc = _prometheus(stack).api("rules")
    rules = [r for g in doc["data"]["groups"] for r in g["rules"]]
    assert len(rules) == len(ALERTS)
    assert all(r["health"] == "ok" for r in rules), rules
    # A healthy stack: nothing firing.
    assert [r["name"] for r in rules if r["state"] == "firing"] == []
