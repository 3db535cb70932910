"""Reports end to end with real processes: block page -> POST /report -> gateway SQLite ->
outbox -> publisher /v1/reports; CSRF, tokens bound to the address and single use, the rate
limit per /24, security headers, metrics, CLI, and an outage with a restart.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import urllib.parse
from pathlib import Path
from typing import Any

import pytest

from tests.support import unbound as ub
from tests.support.data import LISTS, LISTS_YAML, POLICY
from tests.support.hotline import BLOCKED, gateway_extra, http, reports_at
from tests.support.procs import REPO_ROOT, SafeGateProcess
from tests.support.publisher import (
    PublisherProcess,
    gateway_token,
    start_publisher,
    write_publisher_config,
)
from tests.support.wait import wait_for

pytestmark = pytest.mark.integration

SECURITY_HEADERS = ("Content-Security-Policy", "X-Frame-Options", "X-Content-Type-Options",
                    "Referrer-Policy")


def assert_secure(headers: dict[str, str]) -> None:
    """The headers every HTML page of the web listener carries."""
    csp = headers["Content-Security-Policy"]
    for part in ("default-src 'none'", "style-src 'sha256-", "form-action 'self'",
                 "frame-ancestors 'none'"):
        assert part in csp, csp
    assert (headers["X-Frame-Options"], headers["X-Content-Type-Options"],
            headers["Referrer-Policy"]) == ("DENY", "nosniff", "no-referrer")


def form_of(page: str, kind: str) -> dict[str, str]:
    """The hidden fields of one report form, as a browser would send them."""
    form = page[page.index(f'id="report-{kind}"'):]
    form = form[:form.index("</form>")]
    return dict(re.findall(r'type="hidden" name="(\w+)" value="([^"]*)"', form))


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
        assert re.fullmatch(r"\d+\.[0-9a-f]{8}\.[0-9a-f]{32}", fields["csrf"])
        # A forged post (no token) stores nothing; it gets a refusal and a link to a new form.
        status, _, answer = http(gw, "POST", "/report", data={**fields, "csrf": ""})
        assert status == 403 and "chưa được ghi nhận" in answer and 'id="new-form"' in answer

        status, _, answer = http(gw, "POST", "/report",
                                 data={**fields, "comment": "trang này có nội dung xấu",
                                       "contact": "teacher@school.example"})
        assert status == 200 and "Cảm ơn bạn" in answer
        report_id = re.search(r'id="report-id">([0-9a-f-]{36})<', answer)
        assert report_id is not None

        wait_for(lambda: len(reports_at(pub)) == 1, 10.0, what="the report reached the publisher")
        got = reports_at(pub)[0]
        assert got["id"] == report_id.group(1)
        assert (got["kind"], got["target"], got["category"], got["gateway"], got["comment"],
                got["contact"]) == ("harmful", f"{BLOCKED}/some/page", "adult", "gw-a",
                                    "trang này có nội dung xấu", "teacher@school.example")
        assert "127.0.0.1" not in json.dumps(got)

        # The same form sent again: single use.
        status, _, answer = http(gw, "POST", "/report", data=fields)
        assert status == 409 and "đã được gửi rồi" in answer

        # Invalid field: a clear message naming the field (each post from a fresh page).
        fields = form_of(http(gw, "GET", "/some/page?x=1")[2], "mistake")
        status, _, answer = http(gw, "POST", "/report", data={**fields, "kind": "spam"},
                                 accept="*/*")
        assert status == 400 and "field kind: must be one of mistake, harmful" in answer
        fields = form_of(http(gw, "GET", "/some/page?x=1")[2], "mistake")
        assert http(gw, "POST", "/report", data=fields)[0] == 200

        wait_for(lambda: len(reports_at(pub)) == 2, 10.0, what="both reports forwarded")
        wait_for(lambda: "safegate_reports_pending 0.0" in gw.metrics_text(), 5.0,
                 what="nothing pending")
        metrics = gw.metrics_text()
        for line in ('safegate_reports_received_total{kind="harmful"} 1.0',
                     'safegate_reports_received_total{kind="mistake"} 1.0',
                     "safegate_reports_forwarded_total 2.0",
                     'safegate_reports_rejected_total{reason="csrf"} 1.0',
                     'safegate_reports_rejected_total{reason="reused"} 1.0',
                     'safegate_reports_rejected_total{reason="rate_limited"} 0.0',
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
        assert len(rows) == 2 and {r["kind"] for r in rows} == {"harmful", "mistake"}
        assert all(r["delivered_to"] == [pub.url + "/v1/reports"] for r in rows)
        csv_out = safegate("reports", "export", "-c", str(gw.config)).stdout
        assert csv_out.splitlines()[0].startswith("id,kind,target,category,entry_id")
        assert len(csv_out.splitlines()) == 3
    finally:
        pub.kill()


def fresh_form(gw: SafeGateProcess, source: str) -> dict[str, str]:
    """The "mistake" form of a block page as `source` gets it (a token bound to `source`)."""
    status, _, page = http(gw, "GET", "/", source=source)
    assert status == 403
    return form_of(page, "mistake")


def test_rate_limit_per_24_tokens_bound_to_address_and_refusals_echo_nothing(
        unbound: ub.UnboundServer, safegate_factory: Any) -> None:
    gw = safegate_factory(upstream_port=unbound.port, policies={"p.yaml": POLICY},
                          lists=LISTS, lists_yaml=LISTS_YAML)
    # A token issued to 127.0.0.1, posted from 127.0.0.3 (with a forged comment): refused,
    # and the answer neither stores nor shows what was posted.
    token_of_1 = fresh_form(gw, "127.0.0.1")
    forged = {**token_of_1, "comment": "GỌI NGAY 0900-FORGED", "contact": "forged@evil.example"}
    status, headers, answer = http(gw, "POST", "/report", data=forged, source="127.0.0.3")
    assert status == 403 and "chưa được ghi nhận" in answer
    assert "FORGED" not in answer and "forged@evil" not in answer and "<form" not in answer
    assert_secure(headers)
    link = re.search(r'id="new-form" href="([^"]+)"', answer)
    assert link is not None
    new_form = urllib.parse.urlsplit(link.group(1))
    status, headers, page = http(gw, "GET", f"{new_form.path}?{new_form.query}",
                                 host=new_form.netloc, source="127.0.0.3")
    assert status == 200 and 'name="target"' in page and "FORGED" not in page
    assert_secure(headers)
    # The empty form works from the address it was given to.
    empty = form_of(page, "harmful")
    assert http(gw, "POST", "/report", data={**empty, "target": "x.example"},
                source="127.0.0.3")[0] == 200

    # From its own address the token works, once.
    assert http(gw, "POST", "/report", data=token_of_1)[0] == 200
    assert http(gw, "POST", "/report", data=token_of_1)[0] == 409

    # 127.0.0.1, .2 and .3 share a /24: ten reports an hour between them (two sent above).
    statuses = [http(gw, "POST", "/report", data=fresh_form(gw, source), source=source)[0]
                for source in ["127.0.0.2", "127.0.0.1"] * 4 + ["127.0.0.2"]]
    assert statuses == [200] * 8 + [429]
    status, headers, answer = http(gw, "POST", "/report", data=fresh_form(gw, "127.0.0.1"))
    assert status == 429 and "quá nhiều báo cáo trong một giờ qua" in answer
    assert_secure(headers)
    # Another /24 is not held back by them.
    assert http(gw, "POST", "/report", data=fresh_form(gw, "127.0.1.1"),
                source="127.0.1.1")[0] == 200

    metrics = gw.metrics_text()
    for line in ('safegate_reports_received_total{kind="mistake"} 10.0',
                 'safegate_reports_received_total{kind="harmful"} 1.0',
                 'safegate_reports_rejected_total{reason="csrf"} 1.0',
                 'safegate_reports_rejected_total{reason="reused"} 1.0',
                 'safegate_reports_rejected_total{reason="rate_limited"} 2.0',
                 "safegate_reports_rate_limit_networks 2.0",
                 "safegate_reports_spent_tokens 11.0"):
        assert line in metrics, line


def test_security_headers_on_every_page(unbound: ub.UnboundServer,
                                        safegate_factory: Any) -> None:
    gw = safegate_factory(upstream_port=unbound.port, policies={"p.yaml": POLICY},
                          lists=LISTS, lists_yaml=LISTS_YAML)
    for path, host in (("/some/page", BLOCKED), ("/", "127.0.0.1"), ("/report", "127.0.0.1"),
                       ("/ca", "127.0.0.1")):
        status, headers, page = http(gw, "GET", path, host=host)
        assert status in (200, 403, 404) and "<html" in page, (path, status)
        assert_secure(headers)
        # The report form posts to the gateway's own address, whatever the page's origin.
        assert f"form-action 'self' {gw.web_url};" in headers["Content-Security-Policy"]
    # On a blocked name, /report is one more blocked path (the empty form is the gateway's).
    status, _, page = http(gw, "GET", "/report", host=BLOCKED)
    assert status == 403 and f"{BLOCKED}/report" in page


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
             what="a failed delivery while the publisher is down")
    assert "safegate_reports_pending 1.0" in gw.metrics_text()

    gw.stop()   # SIGTERM while the report is still owed
    assert gw.config is not None
    again = SafeGateProcess().start(gw.config)
    pub = PublisherProcess(setup).start()
    try:
        wait_for(lambda: len(reports_at(pub)) == 1, 20.0, what="delivered after the restart")
        wait_for(lambda: "safegate_reports_pending 0.0" in again.metrics_text(), 5.0,
                 what="the outbox is empty")
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


def test_rate_limit_networks_and_token_binding_without_a_gateway() -> None:
    """IPv6 by /56 and IPv4-mapped addresses as IPv4 (what a dual-stack socket reports), the
    table bounded; a token checks only against the address it was issued to."""
    from gateway.config.limits import ReportLimits
    from gateway.hotline.guard import CsrfTokens, RateLimiter, SpentTokens, prefix_of

    assert prefix_of("2001:db8:0:ff::1") == prefix_of("2001:db8::9") == "2001:db8::/56"
    assert prefix_of("2001:db8:0:100::1") == "2001:db8:0:100::/56"
    assert prefix_of("::ffff:192.0.2.7") == prefix_of("192.0.2.200") == "192.0.2.0/24"
    limiter = RateLimiter(ReportLimits(per_v4_24=1, per_v6_56=2, prefixes=2))
    assert [limiter.allow(a, 0.0) for a in ("2001:db8::1", "2001:db8:0:ff::2",
                                            "2001:db8::3")] == [True, True, False]
    assert limiter.allow("192.0.2.1", 1.0) and not limiter.allow("192.0.2.2", 1.0)
    assert limiter.allow("198.51.100.1", 2.0) and len(limiter) == 2     # stalest forgotten
    assert not limiter.allow("192.0.2.3", 1000.0)                       # still tracked
    assert limiter.allow("192.0.2.3", 3601.5)                            # an hour later

    tokens = CsrfTokens(b"k" * 32, lifetime=60.0)
    token = tokens.issue("::ffff:192.0.2.7", 100.0)
    assert tokens.expiry(token, "192.0.2.7", 150.0) == 160
    assert tokens.expiry(token, "192.0.2.8", 150.0) is None
    assert tokens.expiry(token, "192.0.2.7", 161.0) is None              # expired
    assert tokens.expiry(token + "0", "192.0.2.7", 150.0) is None
    spent = SpentTokens(size=1)
    assert spent.spend("a", 200, 100.0) and not spent.spend("a", 200, 100.0)
    assert spent.spend("b", 200, 100.0) and len(spent) == 1              # bounded
