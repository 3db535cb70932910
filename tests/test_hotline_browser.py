"""Headless Chromium (Debian's, driven by Playwright) on the real block page: a legal
takedown shows the authority and decision, a screenshot is saved as a test artifact, and the
report form submitted in the browser ends up at the test publisher."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from tests.support import unbound as ub
from tests.support.data import LISTS, LISTS_YAML, POLICY
from tests.support.feeds import entry
from tests.support.hotline import gateway_extra, reports_at
from tests.support.procs import REPO_ROOT
from tests.support.publisher import ADMIN_TOKEN, start_publisher
from tests.support.wait import wait_for

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
TAKEDOWN = "takedown.example"


def artifacts() -> Path:
    path = Path(os.environ.get("SAFEGATE_TEST_ARTIFACTS", REPO_ROOT / "test-artifacts"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def test_chromium_legal_block_page_and_report(tmp_path: Path, unbound: ub.UnboundServer,
                                             safegate_factory: Any) -> None:
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), "chromium (Debian package) is needed"
    pub = start_publisher(tmp_path / "publisher", gateways=("gw-a",))
    try:
        added = pub.request("POST", "/v1/entries", token=ADMIN_TOKEN, body={"entries": [
            entry("BCA-2026-0042", TAKEDOWN)]})
        assert added.status == 201, added.body
        gw = safegate_factory(upstream_port=unbound.port, policies={"p.yaml": POLICY},
                              lists=LISTS, lists_yaml=LISTS_YAML,
                              extra=gateway_extra(pub.url, pub.setup.public_key))
        web_port = int(gw.web_url.rsplit(":", 1)[1])
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=[
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync",
                f"--host-resolver-rules=MAP * 127.0.0.1:{web_port}"])
            try:
                page = browser.new_page(locale="vi-VN")
                console: list[str] = []     # CSP violations are reported here
                page.on("console", lambda message: console.append(message.text))

                def legal_page_shown() -> bool:
                    response = page.goto(f"http://{TAKEDOWN}/bai-viet/1")
                    return response is not None and response.status == 451

                wait_for(legal_page_shown, 10.0, what="the feed entry is in force (HTTP 451)")
                text = page.inner_text("body")
                for shown in (f"{TAKEDOWN}/bai-viet/1", "Nội dung bị gỡ bỏ theo yêu cầu pháp lý",
                              "Bộ Công an", "123/QĐ-BCA", "2026-11-20", "BCA-2026-0042",
                              "Xâm hại tình dục trẻ em", "111", "Báo chặn nhầm"):
                    assert shown in text, shown
                page.screenshot(path=str(artifacts() / "blockpage-legal-vi.png"), full_page=True)

                page.click("a.lang")
                assert "Unavailable for legal reasons" in page.inner_text("h1")
                page.screenshot(path=str(artifacts() / "blockpage-legal-en.png"), full_page=True)

                page.fill("#report-mistake textarea[name=comment]", "a school history page")
                page.click("#report-mistake button[type=submit]")
                assert "Thank you" in page.inner_text("#result")
                # The style sheet applied (its hash is in the CSP) and nothing was refused.
                assert page.eval_on_selector("body", "b => getComputedStyle(b).maxWidth") != "none"
                assert not [m for m in console if "Content Security Policy" in m], console
                page.screenshot(path=str(artifacts() / "report-thanks-en.png"))
            finally:
                browser.close()
        wait_for(lambda: len(reports_at(pub)) == 1, 10.0, what="the report reached the publisher")
        got = reports_at(pub)[0]
        assert (got["kind"], got["target"], got["category"], got["entry_id"],
                got["comment"]) == ("mistake", f"{TAKEDOWN}/bai-viet/1", "csam",
                                    "BCA-2026-0042", "a school history page")
    finally:
        pub.kill()
