"""Headless Chromium (Debian's, driven by Playwright) on the real admin page of a real gateway
with a real unbound upstream: login, every page, an allow that takes effect at DNS, a refused
edit that changes nothing, CSRF refused, and an address locked out after wrong passwords.

With SAFEGATE_SCREENSHOT_DIR set, the status page's screenshot is saved there as
admin-status.png (docs/img/admin-status.png was made that way)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import dns.rcode
import pytest
import yaml

from tests.support import unbound as ub
from tests.support.data import LISTS, LISTS_YAML, POLICY
from tests.support.procs import REPO_ROOT, free_port, write_gateway_config
from tests.support.wait import wait_for

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
PASSWORD = "correct horse battery"
BLOCKED = "adult.example"          # in the adult list; kids-v4 (127.0.0.1) blocks adult
REAL_A = ub.BLOCKED_TARGET_A      # what unbound answers for it
# The standard policy with a query log on kids-v4 (127.0.0.1).
LOGGED = POLICY.replace('tier: kids, deny: ["games.test"],',
                        'tier: kids, deny: ["games.test"], query_log: {retention_hours: 24},')
assert LOGGED != POLICY


def _answers(gw: Any, name: str) -> list[str]:
    reply = gw.query(name, "A")
    return [r.to_text() for rrset in reply.answer for r in rrset]


def _set_password(config: Path, password: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run([sys.executable, "-m", "gateway", "admin", "passwd", "-c", str(config),
                           "--password-stdin"], input=password + "\n", text=True,
                          capture_output=True, env=env, cwd=REPO_ROOT, timeout=60)
    assert done.returncode == 0, done.stderr


def test_chromium_admin_page(tmp_path: Path, unbound: ub.UnboundServer,
                             safegate_factory: Any) -> None:
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), "chromium (Debian package) is needed"
    upstream = unbound
    port = free_port(v6=False, udp=False)
    config = write_gateway_config(tmp_path, upstream_port=upstream.port,
                                  policies={"p.yaml": LOGGED}, lists=LISTS,
                                  lists_yaml=LISTS_YAML,
                                  extra={"admin": {"listen": [f"127.0.0.1:{port}"]}})
    _set_password(config, PASSWORD)
    passwd = tmp_path / "var" / "admin.passwd"
    assert passwd.stat().st_mode & 0o777 == 0o600
    assert PASSWORD not in passwd.read_text()
    gw = safegate_factory(config)
    for _ in range(3):   # the same UDP query thrice: a logged network has no memo/fast path
        assert _answers(gw, BLOCKED) != [REAL_A]
    for _ in range(4):   # teens-v6 (::1) has no query log: counted through its reply memo
        assert gw.query(BLOCKED, "A", addr="::1").rcode() == dns.rcode.NXDOMAIN
    admin = f"http://127.0.0.1:{port}"
    local = tmp_path / "policies" / "local.yaml"
    with sync_playwright() as p:
        web_port = int(gw.web_url.rsplit(":", 1)[1])
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--host-resolver-rules=MAP {BLOCKED} 127.0.0.1:{web_port}"])
        try:
            page = browser.new_page(locale="en-US", viewport={"width": 900, "height": 900})
            # Not logged in: every page leads to the login form.
            page.goto(admin + "/rules")
            assert page.url == admin + "/login"
            page.fill("input[name=password]", "not the password")
            with page.expect_navigation() as nav:
                page.click("#login button")
            assert nav.value.status == 401
            assert "Wrong password" in page.inner_text("#message")

            page.fill("input[name=password]", PASSWORD)
            page.click("#login button")
            assert page.url == admin + "/"
            assert page.inner_text("#ready").startswith("Ready")
            lists = page.inner_text("#lists")
            assert "adult" in lists and "gambling" in lists
            assert f"127.0.0.1:{upstream.port}" in page.inner_text("#upstreams")
            shots = os.environ.get("SAFEGATE_SCREENSHOT_DIR")
            if shots:
                page.screenshot(path=str(Path(shots) / "admin-status.png"), full_page=True)
            page.goto(admin + "/?lang=vi")
            assert page.inner_text("#ready").startswith("Sẵn sàng")
            page.goto(admin + "/?lang=en")

            page.click("nav >> text=Statistics")
            assert "kids" in page.inner_text("#tiers")

            # Aggregates and the query log: written within a flush interval (1 s).
            def logged() -> bool:
                page.goto(admin + "/querylog?name=adult&verdict=blocked")
                return page.inner_text("#log").count(BLOCKED) == 3

            wait_for(logged, 20.0, what="three blocked queries in the query log")
            log_text = page.inner_text("#log")
            assert "kids-v4" in log_text and "127.0.0.1" not in log_text
            page.goto(admin + "/querylog?name=nothing-like-this")
            assert BLOCKED not in page.inner_text("#log")
            page.goto(admin + "/stats")
            top = page.inner_text("#top-kids-v4"), page.inner_text("#top-teens-v6")
            assert f"{BLOCKED}\t3" in top[0] and f"{BLOCKED}\t4" in top[1], top
            assert page.inner_text("#blocked-kids-v4") == "Blocked: 3 — adult: 3"
            assert page.inner_text("#blocked-teens-v6") == "Blocked: 4 — adult: 4"
            # A report sent from the block page shows on the Reports page.
            page.goto(f"http://{BLOCKED}/lesson")
            page.fill("#report-mistake textarea[name=comment]", "a health class page")
            page.click("#report-mistake button[type=submit]")
            assert "Thank you" in page.inner_text("#result")
            page.goto(admin + "/")
            page.click("nav >> text=Reports")
            reports = page.inner_text("#reports")
            assert f"{BLOCKED}/lesson" in reports and "a health class page" in reports, reports

            # Usable on a phone: nothing wider than a 360 px screen.
            page.set_viewport_size({"width": 360, "height": 740})
            for path in ("/", "/stats", "/explain", "/rules", "/querylog", "/reports"):
                page.goto(admin + path)
                width = page.evaluate("document.documentElement.scrollWidth")
                assert width <= 360, (path, width)
                if shots and path == "/rules":
                    page.screenshot(path=str(Path(shots) / "admin-rules-phone.png"))
            page.set_viewport_size({"width": 900, "height": 900})

            page.click("nav >> text=Explain")
            page.fill("input[name=client]", "127.0.0.1")
            page.fill("input[name=name]", BLOCKED)
            page.click("#explain button")
            assert page.inner_text("#verdict") == "BLOCKED"
            assert "adult" in page.inner_text("#result")

            # A name the checks refuse: a clear error, no file, the running policy unchanged.
            page.click("nav >> text=Allow / deny")
            page.fill("#rule input[name=name]", "bad..name.example")
            page.select_option("#rule select[name=target]", "networks:kids-v4")
            page.select_option("#rule select[name=action]", "allow")
            with page.expect_navigation() as nav:
                page.click("#rule button")
            assert nav.value.status == 422
            error = page.inner_text("#error")
            assert "Not saved" in error and "local.yaml" in error, error
            assert not local.exists()

            # Allow the blocked name for the network: in force at DNS when the page answers.
            page.fill("#rule input[name=name]", BLOCKED)
            page.select_option("#rule select[name=target]", "networks:kids-v4")
            page.select_option("#rule select[name=action]", "allow")
            page.click("#rule button")
            assert "Saved" in page.inner_text("#message")
            assert _answers(gw, BLOCKED) == [REAL_A]
            assert yaml.safe_load(local.read_text()) == {
                "local": {"networks": {"kids-v4": {"allow": [BLOCKED]}}}}
            assert BLOCKED in page.inner_text("#current")
            assert f"allow {BLOCKED}" in page.inner_text("#audit")
            audit = (tmp_path / "var" / "admin-audit.log").read_text()
            assert '"user": "admin"' in audit and '"network": "kids-v4"' in audit

            # The rule passes its checks but the reload fails on another file (a broken
            # lists.yaml): local.yaml is put back, the page says why, DNS is unchanged.
            saved = local.read_text()
            (tmp_path / "blocklists" / "lists.yaml").write_text("categories: [oops\n")
            page.fill("#rule input[name=name]", BLOCKED)
            page.select_option("#rule select[name=target]", "networks:kids-v4")
            page.select_option("#rule select[name=action]", "remove")
            with page.expect_navigation() as nav:
                page.click("#rule button")
            assert nav.value.status == 422
            assert "lists.yaml" in page.inner_text("#error")
            assert local.read_text() == saved
            assert _answers(gw, BLOCKED) == [REAL_A]
            (tmp_path / "blocklists" / "lists.yaml").write_text(LISTS_YAML)

            # CSRF: a POST without the token, or with a wrong one, is refused.
            for form in ({"name": "x.example", "target": "networks:kids-v4", "action": "deny"},
                         {"name": "x.example", "target": "networks:kids-v4", "action": "deny",
                          "csrf": "forged"}):
                r = page.request.post(admin + "/rules", form=form, max_redirects=0)
                assert r.status == 403, r.status
            assert "x.example" not in local.read_text()
            # A form over limits.admin.form_bytes (16 KiB): 413, nothing read into memory.
            r = page.request.post(admin + "/rules", form={"csrf": "x", "name": "a" * 20_000})
            assert r.status == 413, r.status

            # Wrong passwords from one address: locked out, even with the right one after.
            other = browser.new_page(locale="en-US")
            other.goto(admin + "/login")
            for _ in range(5):
                other.fill("input[name=password]", "guess")
                other.click("#login button")
            other.fill("input[name=password]", PASSWORD)
            with other.expect_navigation() as nav:
                other.click("#login button")
            assert nav.value.status == 429
            assert "Too many wrong passwords" in other.inner_text("#message")
        finally:
            browser.close()
    metrics = gw.metrics_text()
    assert "safegate_querylog_written_total" in metrics
    for stored in (tmp_path / "var").glob("querylog.sqlite3*"):   # with its WAL
        assert b"127.0.0.1" not in stored.read_bytes(), stored
    assert 'safegate_admin_logins_total{result="locked"} 1.0' in metrics
    assert 'safegate_admin_logins_total{result="ok"} 1.0' in metrics
    assert 'safegate_admin_rule_changes_total{result="applied"} 1.0' in metrics


class _ListServer:
    """A real HTTP server (stdlib, a thread) serving one plain domains list that the test
    changes: the `feeds:` source of a held update."""

    def __init__(self) -> None:
        import http.server
        import threading

        self.body = b""
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(outer.body)))
                self.end_headers()
                self.wfile.write(outer.body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/list.txt"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_chromium_confirms_a_held_feed_update(tmp_path: Path, unbound: ub.UnboundServer,
                                             safegate_factory: Any) -> None:
    """The status page's Confirm button does what `safegate feeds confirm` does."""
    from playwright.sync_api import sync_playwright

    source = _ListServer()
    try:
        source.body = b"first.malware.test\n"
        port = free_port(v6=False, udp=False)
        config = write_gateway_config(
            tmp_path, upstream_port=unbound.port, policies={"p.yaml": POLICY}, lists=LISTS,
            lists_yaml=LISTS_YAML, extra={
                "admin": {"listen": f"127.0.0.1:{port}"},
                "feeds": [{"name": "isp", "url": source.url, "type": "domains",
                           "category": "malware", "mandatory": True, "interval": 0.5}],
                "feed_guard": {"max_change": {"ratio": 0.5, "entries": 3}}})
        _set_password(config, PASSWORD)
        gw = safegate_factory(config)
        wait_for(lambda: _answers(gw, "first.malware.test"), 20.0, what="the first list")
        source.body = b"".join(b"n%d.malware.test\n" % i for i in range(10))
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=[
                "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"])
            try:
                page = browser.new_page(locale="en-US")
                page.goto(f"http://127.0.0.1:{port}/login")
                page.fill("input[name=password]", PASSWORD)
                page.click("#login button")

                def held() -> bool:
                    page.goto(f"http://127.0.0.1:{port}/")
                    return page.locator("#feeds button").count() == 1

                wait_for(held, 20.0, what="the held update on the status page")
                assert "changes 11 of 1 entries" in page.inner_text("#feeds")
                assert not _answers(gw, "n5.malware.test")          # held: not in force
                page.click("#feeds button")
                assert "Confirmed update" in page.inner_text("#message")
                wait_for(lambda: _answers(gw, "n5.malware.test"), 20.0,
                         what="the confirmed update in force")
                assert not _answers(gw, "first.malware.test")
            finally:
                browser.close()
    finally:
        source.close()
