"""Reports end to end with real processes: block page -> POST /report -> gateway SQLite ->
outbox -> publisher /v1/reports; CSRF, rate limit, metrics, CLI, and an outage with a restart.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.support import unbound as ub
from tests.support.procs import REPO_ROOT, SafeGateProcess
from tests.support.publisher import (
    ADMIN_TOKEN,
    PublisherProcess,
    gateway_token,
    start_publisher,
    write_publisher_config,
)
from tests.test_feeds_e2e import wait_for
from tests.test_resolver_e2e import LISTS, LISTS_YAML, POLICY

pytestmark = pytest.mark.integration

BLOCKED = "adult-site.test"     # category adult for the kids network (127.0.0.1)


def gateway_extra(pub_url: str, public_key: Path) -> dict[str, Any]:
    return {
        "gateway": {"id": "gw-a", "token": gateway_token("gw-a")},
        "feeds": [{"name": "central", "url": pub_url + "/v1/feed", "type": "safegate",
                   "public_key": str(public_key), "interval": 60, "long_poll": 10}],
        "reports": {"forward_to": [pub_url + "/v1/reports"]},
    }


def http(gw: SafeGateProcess, method: str, path: str, *, host: str = BLOCKED,
         data: dict[str, str] | None = None, accept: str = "text/html"
         ) -> tuple[int, dict[str, str], str]:
    body = urllib.parse.urlencode(data).encode() if data is not None else None
    req = urllib.request.Request(gw.web_url + path, data=body, method=method,
                                 headers={"Host": host, "Accept": accept})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, dict(resp.headers.items()), resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers.items()), exc.read().decode()


def form_of(page: str, kind: str) -> dict[str, str]:
    """The hidden fields of one report form, as a browser would send them."""
    form = page[page.index(f'id="report-{kind}"'):]
    form = form[:form.index("</form>")]
    return dict(re.findall(r'type="hidden" name="(\w+)" value="([^"]*)"', form))


def reports_at(pub: PublisherProcess) -> list[dict[str, Any]]:
    r = pub.request("GET", "/v1/reports", token=ADMIN_TOKEN)
    assert r.status == 200, r.body
    return list(r.json()["reports"])


def safegate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True,
                          text=True, cwd=REPO_ROOT, timeout=30, check=False)


def test_report_from_block_page_reaches_publisher(tmp_path: Path, unbound: ub.UnboundServer,
                                                 safegate_factory: Any) -> None:
    pub = start_publisher(tmp_path / "publisher", gateways=("gw-a",))
    try:
        gw = safegate_factory(upstream_port=unbound.port, policies={"p.yaml": POLICY},
                              lists=LISTS, lists_yaml=LISTS_YAML,
                              extra=gateway_extra(pub.url, pub.setup.public_key))
        status, headers, page = http(gw, "GET", "/some/page?x=1")
        assert status == 403 and headers["Cache-Control"] == "no-store"
        assert f"{BLOCKED}/some/page" in page and "Nội dung người lớn" in page

        fields = form_of(page, "harmful")
        assert fields["kind"] == "harmful" and fields["category"] == "adult"
        assert re.fullmatch(r"\d+\.[0-9a-f]{32}", fields["csrf"])
        # A forged post (no token) stores nothing; it gets the form back with a fresh token.
        status, _, answer = http(gw, "POST", "/report", data={**fields, "csrf": ""})
        assert status == 403 and "Vui lòng bấm Gửi" in answer
        assert form_of(answer, "harmful")["csrf"]

        status, _, answer = http(gw, "POST", "/report",
                                 data={**fields, "comment": "trang này có nội dung xấu",
                                       "contact": "teacher@school.example"})
        assert status == 200 and "Cảm ơn bạn" in answer
        report_id = re.search(r'id="report-id">([0-9a-f-]{36})<', answer)
        assert report_id is not None

        wait_for(lambda: len(reports_at(pub)) == 1, 10.0, "the report reached the publisher")
        got = reports_at(pub)[0]
        assert got["id"] == report_id.group(1)
        assert (got["kind"], got["target"], got["category"], got["gateway"], got["comment"],
                got["contact"]) == ("harmful", f"{BLOCKED}/some/page", "adult", "gw-a",
                                    "trang này có nội dung xấu", "teacher@school.example")
        assert "127.0.0.1" not in json.dumps(got)

        # Invalid field: a clear message naming the field. Then the rate limit: 5 submissions
        # per address per 10 minutes, the invalid one included (it is checked first).
        status, _, answer = http(gw, "POST", "/report", data={**fields, "kind": "spam"},
                                 accept="*/*")
        assert status == 400 and "field kind: must be one of mistake, harmful" in answer
        statuses = [http(gw, "POST", "/report", data={**fields, "kind": "mistake"})[0]
                    for _ in range(5)]
        assert statuses == [200, 200, 200, 429, 429]

        wait_for(lambda: len(reports_at(pub)) == 4, 10.0, "all four reports forwarded")
        wait_for(lambda: "safegate_reports_pending 0.0" in gw.metrics_text(), 5.0,
                 "nothing pending")
        metrics = gw.metrics_text()
        for line in ('safegate_reports_received_total{kind="harmful"} 1.0',
                     'safegate_reports_received_total{kind="mistake"} 3.0',
                     "safegate_reports_forwarded_total 4.0",
                     'safegate_reports_rejected_total{reason="csrf"} 1.0',
                     'safegate_reports_rejected_total{reason="rate_limited"} 2.0',
                     'safegate_reports_rejected_total{reason="invalid"} 1.0'):
            assert line in metrics, line
        promtool = shutil.which("promtool")
        assert promtool, "promtool (Debian package prometheus) is needed"
        check = subprocess.run([promtool, "check", "metrics"], input=metrics,
                               capture_output=True, text=True, check=False)
        assert check.returncode == 0, check.stdout + check.stderr

        assert gw.config is not None
        listed = safegate("reports", "list", "-c", str(gw.config))
        assert listed.returncode == 0, listed.stderr
        assert report_id.group(1) in listed.stdout and "forwarded" in listed.stdout
        exported = safegate("reports", "export", "-c", str(gw.config), "--format", "json")
        rows = json.loads(exported.stdout)
        assert len(rows) == 4 and {r["kind"] for r in rows} == {"harmful", "mistake"}
        assert all(r["delivered_to"] == [pub.url + "/v1/reports"] for r in rows)
        csv_out = safegate("reports", "export", "-c", str(gw.config)).stdout
        assert csv_out.splitlines()[0].startswith("id,kind,target,category,entry_id")
        assert len(csv_out.splitlines()) == 5
    finally:
        pub.kill()


def test_outage_and_restart_lose_nothing_and_duplicate_nothing(
        tmp_path: Path, unbound: ub.UnboundServer, safegate_factory: Any) -> None:
    setup = write_publisher_config(tmp_path / "publisher", gateways=("gw-a",))
    gw = safegate_factory(upstream_port=unbound.port, policies={"p.yaml": POLICY},
                          lists=LISTS, lists_yaml=LISTS_YAML,
                          extra=gateway_extra(setup.url, setup.public_key))
    _, _, page = http(gw, "GET", "/")
    status, _, answer = http(gw, "POST", "/report", data=form_of(page, "mistake"))
    assert status == 200
    report_id = re.search(r'id="report-id">([0-9a-f-]{36})<', answer)
    assert report_id is not None
    wait_for(lambda: "safegate_reports_forward_failures_total 1.0" in gw.metrics_text(), 5.0,
             "a failed delivery while the publisher is down")
    assert "safegate_reports_pending 1.0" in gw.metrics_text()

    gw.stop()   # SIGTERM while the report is still owed
    assert gw.config is not None
    again = SafeGateProcess().start(gw.config)
    pub = PublisherProcess(setup).start()
    try:
        wait_for(lambda: len(reports_at(pub)) == 1, 20.0, "delivered after the restart")
        wait_for(lambda: "safegate_reports_pending 0.0" in again.metrics_text(), 5.0,
                 "the outbox is empty")
        got = reports_at(pub)
        assert [r["id"] for r in got] == [report_id.group(1)]
        # At-least-once delivery: a repeat of the same report is acknowledged, not stored.
        body = {k: got[0][k] for k in ("id", "kind", "target", "category", "entry_id",
                                       "comment", "contact", "created_at", "gateway")}
        r = pub.request("POST", "/v1/reports", body=body, token=gateway_token("gw-a"))
        assert r.status == 200 and r.json()["duplicate"] is True
        assert len(reports_at(pub)) == 1
        assert pub.request("POST", "/v1/reports", body=body).status == 401
        assert pub.request("GET", "/v1/reports").status == 401
    finally:
        again.stop()
        pub.kill()
