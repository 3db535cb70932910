"""The proxy's pure parts: URL normalisation and matching, intercept decisions, restricted
modes, the intercept set, the PAC file, config and list errors with file:line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config.checks import check_files
from gateway.config.gateway import load_config
from gateway.errors import ConfigError
from gateway.lists.catalog import load_catalog
from gateway.lists.compile import compile_catalog
from gateway.policy.netindex import PrefixMap
from gateway.proxy.intercept import read_intercept_file, write_intercept_file
from gateway.proxy.pac import pac_text
from gateway.proxy.rules import (
    ALLOWED,
    BLOCKED,
    LEGAL,
    RESTRICTED,
    ClientTier,
    Rules,
    intercept_hosts,
)
from gateway.proxy.urls import LegalOrder, UrlEntry, UrlIndex, parse_entry_url, request_key
from tests.support.procs import REPO_ROOT, write_gateway_config

ORDER = LegalOrder("Bộ TT&TT", "QĐ-1/2026", "2026-01-02")
ENTRIES = [
    ("https://forum.test/post/42", "legal-42", ("violence",), True),
    ("http://www.forum.test/adult/*", "adult-dir", ("adult",), False),
    ("forum.test/watch?v=bad", "video-bad", ("adult",), False),
    ("https://forum.test:8443/only-here", "port-8443", ("adult",), False),
    ("https://forum.test/games/", "games", ("games",), False),
]
TIER = ClientTier("tieu-hoc", frozenset({"adult"}), "strict")


def rules() -> Rules:
    items = []
    for url, eid, cats, mandatory in ENTRIES:
        items.append((parse_entry_url(url),
                      UrlEntry(eid, url, cats, mandatory, ORDER if mandatory else None)))
    return Rules(UrlIndex(items), PrefixMap([]),
                 {"www.youtube.com": "youtube", "www.google.com": "google"},
                 frozenset({"img.test"}))


@pytest.mark.parametrize(("host", "port", "path", "action", "entry"), [
    ("forum.test", None, "/post/42", LEGAL, "legal-42"),
    ("FORUM.test", 80, "/post/42", LEGAL, "legal-42"),             # scheme, case, port
    ("www.forum.test", 443, "/post/42?utm=1", LEGAL, "legal-42"),  # www., extra query
    ("forum.test", None, "/post/42#frag", LEGAL, "legal-42"),
    ("forum.test", None, "/post/420", ALLOWED, None),              # neighbours untouched
    ("forum.test", None, "/post/4", ALLOWED, None),
    ("forum.test", None, "/post/42/", ALLOWED, None),              # exact means exact
    ("forum.test", None, "/adult/", BLOCKED, "adult-dir"),         # prefix
    ("forum.test", None, "/adult/a/b.jpg", BLOCKED, "adult-dir"),
    ("forum.test", None, "/adul", ALLOWED, None),
    ("forum.test", None, "/watch?v=bad", BLOCKED, "video-bad"),
    ("forum.test", None, "/watch?t=3&v=bad", BLOCKED, "video-bad"),  # query order
    ("forum.test", None, "/watch?v=good", ALLOWED, None),
    ("forum.test", None, "/watch", ALLOWED, None),
    ("forum.test", 8443, "/only-here", BLOCKED, "port-8443"),
    ("forum.test", 443, "/only-here", ALLOWED, None),
    ("forum.test", None, "/games/", ALLOWED, None),                # tier does not block games
    ("img.forum.test", None, "/post/42", ALLOWED, None),           # hosts match exactly
    ("forum.test", None, "/%61dult/x", ALLOWED, None),             # escapes are not decoded
])
def test_url_matching(host: str, port: int | None, path: str, action: str,
                      entry: str | None) -> None:
    verdict = rules().decide(TIER, host, port, path)
    assert verdict.action == action
    assert (verdict.entry.id if verdict.entry else None) == entry


def test_legal_verdict_carries_the_order() -> None:
    verdict = rules().decide(TIER, "forum.test", None, "/post/42")
    assert verdict.entry is not None and verdict.entry.legal == ORDER
    assert verdict.category == "violence"


@pytest.mark.parametrize("bad", ["ftp://x.test/a", "https://user:pw@x.test/", "http://x.test/a*b",
                                 "http:///nohost"])
def test_bad_entry_urls_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_entry_url(bad)


def test_percent_escape_case_is_normalised() -> None:
    assert parse_entry_url("http://x.test/a%2fb").path == request_key("x.test", None,
                                                                     "/a%2Fb").path


@pytest.mark.parametrize(("sni", "tier", "intercepted"), [
    ("forum.test", TIER, True),
    ("www.forum.test", TIER, True),
    ("other.test", TIER, False),
    ("a.img.test", TIER, True),                    # scan scopes cover subdomains
    ("www.youtube.com", TIER, True),
    ("www.youtube.com", ClientTier("staff", frozenset(), "off"), False),   # no SafeSearch
    ("www.youtube.com", None, False),
    ("", TIER, False),
])
def test_intercept_decision(sni: str, tier: ClientTier | None, intercepted: bool) -> None:
    assert rules().intercepts(sni, tier) is intercepted


@pytest.mark.parametrize(("host", "path", "mode", "headers", "query"), [
    ("www.youtube.com", "/watch?v=1", "strict", (("YouTube-Restrict", "Strict"),), ()),
    ("www.youtube.com", "/", "moderate", (("YouTube-Restrict", "Moderate"),), ()),
    ("www.google.com", "/search?q=x", "moderate", (), (("safe", "active"),)),
    ("www.google.com", "/maps", "strict", (), ()),
    ("www.youtube.com", "/", "off", (), ()),
])
def test_restricted_modes(host: str, path: str, mode: str, headers: tuple[tuple[str, str], ...],
                          query: tuple[tuple[str, str], ...]) -> None:
    verdict = rules().decide(ClientTier("t", frozenset(), mode), host, None, path)
    assert verdict.headers == headers and verdict.query == query
    assert verdict.action == (RESTRICTED if headers or query else ALLOWED)


def test_intercept_set_and_its_file(tmp_path: Path) -> None:
    hosts = intercept_hosts({"forum.test"}, {"www.youtube.com": "youtube"}, ["img.test"],
                            [ClientTier("a", frozenset(), "off")])
    assert hosts == ["forum.test", "img.test", "www.forum.test"]
    hosts = intercept_hosts({"forum.test"}, {"www.youtube.com": "youtube"}, [],
                            [ClientTier("a", frozenset(), "strict")])
    assert "www.youtube.com" in hosts
    path = write_intercept_file(tmp_path, hosts, "test")
    assert read_intercept_file(path) == [h.encode() for h in hosts]
    assert path.read_text().startswith("#") and sorted(os.listdir(tmp_path)) == [path.name]


def test_pac_sends_only_the_intercept_set() -> None:
    text = pac_text("192.0.2.1:3128", ["forum.test"])
    assert '"forum.test":1' in text and "PROXY 192.0.2.1:3128" in text and "DIRECT" in text
    assert '"PROXY 192.0.2.1:3128"' in pac_text("192.0.2.1:3128", None)


def config_with(tmp_path: Path, proxy: dict[str, object]) -> Path:
    return write_gateway_config(tmp_path, upstream_port=53, ipv6=False,
                                extra={"proxy": proxy})


@pytest.mark.parametrize(("proxy", "message"), [
    ({"intercept_listen": {"ftp": "127.0.0.1:21"}}, "unknown key"),
    ({"intercept_listen": {"https": "nope:x"}}, "proxy.intercept_listen.https"),
    ({"origin_ports": {"https": 70000}}, "proxy.origin_ports.https"),
    ({"listen": "0.0.0.0:3128"}, "proxy.public_address"),
    ({"upstream_ca": "missing.pem"}, "proxy.upstream_ca"),
    ({"restrict_hosts": {"bing": ["x.test"]}}, "unknown key"),
    ({"scan_hosts": ["bad name!"]}, "proxy.scan_hosts"),
    ({"max_image_bytes": -1}, "proxy.max_image_bytes"),
])
def test_config_errors_name_file_and_line(tmp_path: Path, proxy: dict[str, object],
                                          message: str) -> None:
    path = config_with(tmp_path, proxy)
    with pytest.raises(ConfigError) as exc:
        check_files(load_config(path))   # upstream_ca: the file is opened by check_files
    assert message in str(exc.value)
    assert str(exc.value).startswith(f"{path}:") and exc.value.line


def test_config_defaults(tmp_path: Path) -> None:
    cfg = load_config(config_with(tmp_path, {"enabled": True})).proxy
    assert cfg.listen == ("127.0.0.1", 3128) and cfg.metrics_listen == ("127.0.0.1", 9154)
    assert dict(cfg.origin_ports) == {"http": 80, "https": 443}
    assert cfg.intercept_listen == () and cfg.public_address == "127.0.0.1"


def test_url_lists_are_the_proxys_not_the_dns_index(tmp_path: Path) -> None:
    (tmp_path / "pages.txt").write_text("https://forum.test/post/1\n")
    (tmp_path / "names.domains").write_text("bad.test\n")
    (tmp_path / "lists.yaml").write_text(
        "categories:\n  adult:\n    - {path: pages.txt, format: urls}\n"
        "    - {path: names.domains, format: domains}\n")
    catalog = load_catalog(tmp_path / "lists.yaml")
    assert [s.path.name for s in catalog.url_sources()] == ["pages.txt"]
    assert [s.path.name for s in catalog.sources()] == ["names.domains"]
    assert tmp_path / "pages.txt" in catalog.files()
    assert compile_catalog(catalog, None).entries == 1
    (tmp_path / "lists.yaml").write_text(
        "categories:\n  adult:\n    - {path: pages.txt, format: url}\n")
    with pytest.raises(ConfigError, match=r"lists.yaml:3: unknown format 'url'.*urls"):
        load_catalog(tmp_path / "lists.yaml")


def test_proxy_without_mitmproxy_says_what_to_install(tmp_path: Path) -> None:
    fake = tmp_path / "fake" / "mitmproxy"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('No module named mitmproxy')\n")
    cfg = config_with(tmp_path / "cfg", {"enabled": True})
    env = dict(os.environ, PYTHONPATH=f"{fake.parent}{os.pathsep}{REPO_ROOT}")
    p = subprocess.run([sys.executable, "-m", "gateway", "proxy", "-c", str(cfg)],
                       capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=60)
    assert p.returncode == 1
    assert "pip install 'safegate[proxy]'" in p.stderr
