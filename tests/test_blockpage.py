"""The block page alone: status, language choice, what it shows, and escaping (XSS)."""

from __future__ import annotations

import base64
import hashlib
import re
from datetime import datetime
from html.parser import HTMLParser
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from gateway.blockpage.model import BlockInfo, choose_lang, from_verdict
from gateway.blockpage.page import render_block
from gateway.blockpage.report_pages import render_report_result
from gateway.feedformat.document import LegalBasis
from gateway.policy.decide import Verdict

NOW = datetime(2026, 3, 2, 8, 15, 0, tzinfo=ZoneInfo("Asia/Ho_Chi_Minh"))
HTML = {"Accept": "text/html,application/xhtml+xml"}
REPORT = "http://127.0.0.1:8080/report"
LEGAL = BlockInfo("takedown.example/post/1", "csam", "mandatory", True,
                  "https://authority.example/orders", "123/QĐ-BCA", "2026-02-20", "BCA-1",
                  "thcs")
POLICY = BlockInfo("gamble.test", "gambling", "policy", False, tier="tieu-hoc")


class Collect(HTMLParser):
    """Tags and attributes as a browser's parser sees them."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(body: bytes) -> Collect:
    c = Collect()
    c.feed(body.decode())
    return c


def test_legal_order_is_451_with_authority_decision_date_entry_and_link() -> None:
    status, headers, body = render_block(LEGAL, HTML, now=NOW, report_url=REPORT)
    assert status == 451
    assert headers["Cache-Control"] == "no-store"
    assert headers["Link"] == '<https://authority.example/orders>; rel="blocked-by"'
    text = " ".join(parse(body).text)
    for shown in ("takedown.example/post/1", "123/QĐ-BCA", "2026-02-20", "BCA-1",
                  "Xâm hại tình dục trẻ em", "2026-03-02 08:15:00", "111",
                  "Báo chặn nhầm", "Báo cáo nội dung độc hại", "Nội dung bị gỡ bỏ"):
        assert shown in text, shown


def test_policy_block_is_403_without_link_and_names_the_tier() -> None:
    status, headers, body = render_block(POLICY, HTML, now=NOW, report_url=REPORT)
    assert status == 403 and "Link" not in headers
    text = " ".join(parse(body).text)
    assert "Cờ bạc" in text and "tiểu học" in text and "Trang này đã bị chặn" in text


def test_authority_that_is_not_a_url_gives_no_link_header() -> None:
    info = BlockInfo("x.example", "csam", "mandatory", True, "Bộ Công an", "1", "2026-01-01")
    assert "Link" not in render_block(info, HTML, now=NOW, report_url=REPORT)[1]


@pytest.mark.parametrize(("accept_language", "lang", "expected"), [
    ("", None, "vi"),
    ("en-US,en;q=0.9", None, "en"),
    ("fr,en;q=0.5,vi;q=0.8", None, "vi"),
    ("en;q=0", None, "vi"),
    ("en", "vi", "vi"),
    ("vi", "en", "en"),
    ("vi", "xx", "vi"),
])
def test_language_choice(accept_language: str, lang: str | None, expected: str) -> None:
    assert choose_lang({"Accept-Language": accept_language}, lang) == expected


def test_english_page_and_switch_back_to_vietnamese() -> None:
    _, headers, body = render_block(LEGAL, {**HTML, "Accept-Language": "en"}, now=NOW,
                                    report_url=REPORT)
    page = parse(body)
    text = " ".join(page.text)
    assert headers["Content-Language"] == "en"
    assert "Unavailable for legal reasons" in text and "Report this as a mistake" in text
    links = [a for t, a in page.tags if t == "a" and a.get("class") == "lang"]
    assert links == [{"class": "lang", "lang": "vi", "href": "?lang=vi"}]


def test_curl_gets_a_short_text_body() -> None:
    status, headers, body = render_block(LEGAL, {"Accept": "*/*"}, now=NOW, report_url=REPORT)
    assert status == 451 and headers["Content-Type"].startswith("text/plain")
    assert body.decode() == ("Bị chặn bởi SafeGate: takedown.example/post/1 (csam)\n"
                             "Bị chặn theo quyết định của cơ quan có thẩm quyền; không thể bỏ "
                             "chặn. https://authority.example/orders 123/QĐ-BCA 2026-02-20 "
                             "BCA-1\n")


HOSTILE = [
    '"><script>alert(1)</script>',
    "' onmouseover='alert(1)",
    "javascript:alert(1)//<img src=x onerror=alert(1)>",
    "x.example/\r\nSet-Cookie: a=b",
]


@pytest.mark.parametrize("hostile", HOSTILE)
def test_everything_echoed_is_escaped_in_text_and_attributes(hostile: str) -> None:
    info = BlockInfo(hostile, hostile, "policy", True, hostile, hostile, hostile, hostile,
                     hostile)
    status, headers, body = render_block(info, HTML, now=NOW, report_url=REPORT,
                                         csrf=hostile)
    assert status == 451 and "Link" not in headers
    assert all("\n" not in v for v in headers.values())
    page = parse(body)
    # No element or attribute the hostile text could have introduced.
    assert {t for t, _ in page.tags} <= {"html", "head", "meta", "title", "style", "body", "a",
                                         "h1", "h2", "dl", "dt", "dd", "strong", "code", "time",
                                         "p", "form", "input", "label", "br", "textarea",
                                         "button"}
    for _, attrs in page.tags:
        assert not any(k.startswith("on") for k in attrs), attrs
    hidden = {a["name"]: a["value"] for t, a in page.tags
              if t == "input" and a.get("type") == "hidden"}
    clean = hostile.replace("\r", "").replace("\n", "")
    assert hidden["target"] == clean and hidden["csrf"] == clean   # round-trips as data
    assert "<script>" not in body.decode()


@pytest.mark.parametrize("outcome", ["csrf", "reused"])
def test_report_result_refused_token_echoes_nothing_and_links_a_new_form(outcome: str) -> None:
    # A forged post must not put its words (or its target) on the gateway's page.
    form = {"kind": "harmful", "target": "forged-target.example", "comment": "CALL 0900 NOW",
            "contact": "scam@evil.example", "lang": "en"}
    status, headers, body = render_report_result(outcome, form, HTML, report_url=REPORT)
    assert status == (403 if outcome == "csrf" else 409)
    text = body.decode()
    for posted in ("forged-target.example", "CALL 0900 NOW", "scam@evil.example"):
        assert posted not in text
    page = parse(body)
    assert not any(t in ("form", "input", "textarea") for t, _ in page.tags)
    links = [a for t, a in page.tags if t == "a" and a.get("id") == "new-form"]
    assert links[0]["href"] == REPORT + "?lang=en"
    assert headers["X-Frame-Options"] == "DENY"


def test_security_headers_allow_the_inline_style_and_posts_to_the_report_origin() -> None:
    _, headers, body = render_block(POLICY, HTML, now=NOW, report_url=REPORT)
    csp = headers["Content-Security-Policy"]
    style = re.search(r"<style>(.*)</style>", body.decode(), re.S)
    assert style is not None
    digest = base64.b64encode(hashlib.sha256(style.group(1).encode()).digest()).decode()
    assert f"style-src 'sha256-{digest}'" in csp
    assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
    assert "form-action 'self' http://127.0.0.1:8080;" in csp
    assert 'style="' not in body.decode()      # inline attributes would need 'unsafe-inline'
    assert (headers["X-Frame-Options"], headers["X-Content-Type-Options"],
            headers["Referrer-Policy"]) == ("DENY", "nosniff", "no-referrer")
    six = render_block(POLICY, HTML, now=NOW, report_url="https://[2001:db8::1]/report")[1]
    assert "form-action 'self' https:;" in six["Content-Security-Policy"]


def test_from_verdict_only_mandatory_blocks_are_legal() -> None:
    basis = LegalBasis("Bộ Công an", "9/QĐ", "2026-01-01")
    mandatory = Verdict(True, "mandatory", "csam", b"x.example", 0, "blockpage", 16, ref="E1")
    info = from_verdict("x.example", mandatory, "thcs", basis)
    assert info is not None and info.legal and info.decision == "9/QĐ"
    assert info.entry_id == "E1" and info.tier == "thcs"
    policy = Verdict(True, "policy", "adult", b"x.example", 0, "blockpage", 15, ref="E2")
    info = from_verdict("x.example", policy, "thcs", basis)
    assert info is not None and not info.legal and info.authority == ""
    assert from_verdict("x.example", Verdict(False, "none"), "thcs") is None


# ---------------------------------------------------------------- with a real gateway

TWO_NETWORKS = """\
tiers:
  kids: {block: [games], answer: blockpage}
  staff: {block: []}
networks:
  - {name: pupils, cidrs: ["127.0.0.1/32"], tier: kids}
  - {name: teachers, cidrs: ["127.0.0.2/32"], tier: staff}
"""


def _page_from(source: str, web_url: str, host: str) -> tuple[int, str]:
    """GET / with `host` as Host, from the loopback address `source` (the client's identity)."""
    import http.client
    from urllib.parse import urlsplit

    url = urlsplit(web_url)
    conn = http.client.HTTPConnection(url.hostname or "", url.port, timeout=10,
                                      source_address=(source, 0))
    try:
        conn.request("GET", "/", headers={"Host": host, "Accept": "text/html"})
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


@pytest.mark.integration
def test_block_page_agrees_with_the_query_path_for_each_network(unbound: Any,
                                                                safegate_factory: Any) -> None:
    """A name blocked for one network and not another: the block page says so to each.

    Issue #11: the page said "Trang này đã bị chặn" to a client the query path lets through (a
    stale DNS answer in a browser leads there)."""
    import dns.edns
    import dns.message
    import dns.query
    import dns.rcode

    from tests.support.unbound import ALLOWED, ALLOWED_A

    gw = safegate_factory(upstream_port=unbound.port, policies={"p.yaml": TWO_NETWORKS},
                          lists={"games.txt": f"{ALLOWED}\n"},
                          lists_yaml="categories:\n  games:\n    - {path: games.txt, "
                                     "format: domains}\n")

    def ask(source: str) -> dns.message.Message:
        q = dns.message.make_query(ALLOWED, "A", use_edns=0, payload=1232)
        return dns.query.udp(q, "127.0.0.1", port=gw.dns_port, timeout=5, source=source)

    pupil, teacher = ask("127.0.0.1"), ask("127.0.0.2")
    assert [o.code for o in pupil.options if isinstance(o, dns.edns.EDEOption)] == [15]
    assert teacher.rcode() == dns.rcode.NOERROR
    assert [rr.address for rr in teacher.answer[0]] == [ALLOWED_A]
    assert not [o for o in teacher.options if isinstance(o, dns.edns.EDEOption)]

    status, page = _page_from("127.0.0.1", gw.web_url, ALLOWED)
    assert status == 403
    assert "Trang này đã bị chặn" in page and "Trò chơi trực tuyến" in page

    status, page = _page_from("127.0.0.2", gw.web_url, ALLOWED)
    assert "Trang này đã bị chặn" not in page and "Trò chơi trực tuyến" not in page
    assert "Trang này không bị chặn" in page and ALLOWED in page


DUAL_POLICY = """\
tiers:
  kids: {block: [adult], answer: blockpage}
networks:
  - {name: pupils, cidrs: ["127.0.0.1/32", "::1/128"], tier: kids}
"""


@pytest.mark.integration
def test_dual_stack_web_listen_serves_both_and_blocked_answers_point_at_each(
        unbound: Any, safegate_factory: Any) -> None:
    """Issue #14 item 4: `web.listen: [v4, v6]` binds both; A answers carry the IPv4 address and
    AAAA the IPv6 one, each a page that listens there (before, `[::]` was IPv6 only and the A
    answer pointed at nothing)."""
    import http.client
    import shutil
    import subprocess

    import dns.message
    import dns.query

    from tests.support.procs import free_port

    port, mport = free_port(udp=False), free_port(udp=False)
    gw = safegate_factory(upstream_port=unbound.port, policies={"p.yaml": DUAL_POLICY},
                          lists={"adult.txt": "adult-site.test\n"},
                          lists_yaml="categories:\n  adult:\n    - {path: adult.txt, "
                                     "format: domains}\n",
                          extra={"web": {"listen": [f"127.0.0.1:{port}", f"[::1]:{port}"]},
                                 "metrics": {"listen": [f"127.0.0.1:{mport}",
                                                        f"[::1]:{mport}"]}})
    for qtype, address in (("A", "127.0.0.1"), ("AAAA", "::1")):
        q = dns.message.make_query("adult-site.test", qtype)
        r = dns.query.udp(q, "127.0.0.1", port=gw.dns_port, timeout=5)
        assert [rr.address for rr in r.answer[0]] == [address], qtype
    curl = shutil.which("curl")
    assert curl, "curl is needed"
    for host in ("127.0.0.1", "[::1]"):
        out = subprocess.run([curl, "-g", "-sS", "-o", "-", "-w", "\n%{http_code}",
                              "-H", "Host: adult-site.test", "-H", "Accept: text/html",
                              f"http://{host}:{port}/"], capture_output=True, text=True,
                             timeout=30, check=False)
        body, _, status = out.stdout.rpartition("\n")
        assert status == "403" and "Trang này đã bị chặn" in body, (host, out.stderr)
        # DoH on the same listener, from that address family's client.
        wire = dns.message.make_query("adult-site.test", "A").to_wire()
        conn = http.client.HTTPConnection(host.strip("[]"), port, timeout=10)
        try:
            conn.request("POST", "/dns-query", body=wire,
                         headers={"Content-Type": "application/dns-message"})
            resp = conn.getresponse()
            assert resp.status == 200, host
            answer = dns.message.from_wire(resp.read())
        finally:
            conn.close()
        assert [rr.address for rr in answer.answer[0]] == ["127.0.0.1"], host
        metrics = http.client.HTTPConnection(host.strip("[]"), mport, timeout=10)
        try:
            metrics.request("GET", "/readyz")
            assert metrics.getresponse().status == 200, host
        finally:
            metrics.close()
