"""DNS-steered interception: names in the proxy's intercept set answer the proxy's address.

The proxy process writes `<state_dir>/proxy-intercept.txt`; the gateway reads it with its
configuration (a watched file) and answers A/AAAA with the steering listeners' address,
HTTPS/SVCB with NODATA (no ECH or alternative endpoint around the proxy), everything else as
usual. Blocked names stay blocked.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import dns.message
import dns.rcode
import pytest

from gateway.config.dns import CacheConfig, ForwarderConfig
from gateway.dns.cache import AnswerCache
from gateway.dns.chain import Resolver
from gateway.dns.stats import DnsStats
from gateway.dns.upstream import Forwarder
from gateway.dns.upstream_base import Upstream
from gateway.proxy.intercept import INTERCEPT_FILE, read_intercept_file, write_intercept_file
from gateway.proxy.pac import pac_text
from gateway.runtime.state import load_in_process
from tests.support.data import LISTS, LISTS_YAML, POLICY
from tests.support.procs import write_gateway_config

PROXY = {"proxy": {"enabled": True, "listen": "127.0.0.5:3128",
                   "intercept_listen": {"http": "127.0.0.5:8880", "https": "127.0.0.5:8443"}}}


def _config(tmp_path: Path, intercept: str | None) -> Path:
    cfg = write_gateway_config(tmp_path, upstream_port=53000, policies={"p.yaml": POLICY},
                               lists=LISTS, lists_yaml=LISTS_YAML, extra=PROXY)
    if intercept is not None:
        (tmp_path / "var" / INTERCEPT_FILE).write_text(intercept)
    return cfg


def _resolver(cfg: Path) -> Resolver:
    loaded = load_in_process(cfg)
    fwd = Forwarder([Upstream("127.0.0.1", 9)], ForwarderConfig())
    return Resolver(loaded.view, AnswerCache(CacheConfig()), fwd, DnsStats())


def _ask(r: Resolver, name: str, rdtype: str, client: str = "127.0.0.1"
         ) -> dns.message.Message:
    q = dns.message.make_query(name, rdtype, use_edns=0, payload=1232)
    out = r.handle(q.to_wire(), client, "udp")
    assert isinstance(out, bytes), "expected a synchronous answer"
    return dns.message.from_wire(out)


def test_intercept_set_names_answer_the_proxy_address(tmp_path: Path) -> None:
    r = _resolver(_config(tmp_path, "# written by safegate proxy\nnews.example\nadult.example\n"))
    for name in ("news.example", "WWW.News.example"):
        a = _ask(r, name, "A")
        assert a.rcode() == dns.rcode.NOERROR
        assert [rr.to_text() for rr in a.answer[0]] == ["127.0.0.5"]
        assert list(a.options) == []              # not a block: no EDE
        assert a.answer[0].ttl == 30
        assert a.answer[0].name.to_text() == name + "."
    aaaa = _ask(r, "news.example", "AAAA")        # the proxy has no IPv6 address here
    assert (aaaa.rcode(), aaaa.answer) == (dns.rcode.NOERROR, [])
    https = _ask(r, "news.example", "HTTPS")       # no ECH / alt endpoints around the proxy
    assert (https.rcode(), https.answer) == (dns.rcode.NOERROR, [])
    # Blocked names stay blocked (adult.example is in the lists and in the intercept set).
    blocked = _ask(r, "adult.example", "A")
    assert [rr.to_text() for rr in blocked.answer[0]] == ["127.0.0.1"]  # the block page
    assert [o.code for o in blocked.options] == [15]
    assert r.stats.queries[("intercepted", "", "kids", "udp")] == 4
    # The UDP memo answers a repeat the same way.
    again = _ask(r, "news.example", "A")
    assert [rr.to_text() for rr in again.answer[0]] == ["127.0.0.5"]
    assert r.stats.queries[("intercepted", "", "kids", "udp")] == 5


def test_what_the_proxy_writes_is_what_the_gateway_steers(tmp_path: Path) -> None:
    """One normalisation on both sides: a scan host written with capitals and a trailing dot,
    or an internationalised name, is steered by the resolver and listed in the PAC file
    exactly as the proxy intercepts it (before, the proxy wrote such names verbatim, or
    failed on a non-ASCII one, and the two readers normalised differently)."""
    cfg = _config(tmp_path, None)
    hosts = ["News.Example.", "www.news.example", "b\u00fccher.example", "not a name"]
    path = write_intercept_file(tmp_path / "var", hosts, "test")
    written = read_intercept_file(path)
    assert written == [b"news.example", b"www.news.example", b"xn--bcher-kva.example"]
    assert load_in_process(cfg).intercept == frozenset(written)
    pac = pac_text("192.0.2.1:3128", [n.decode() for n in written])
    assert '"news.example":1' in pac and '"xn--bcher-kva.example":1' in pac
    r = _resolver(cfg)
    for name in ("news.example", "xn--bcher-kva.example"):
        assert [rr.to_text() for rr in _ask(r, name, "A").answer[0]] == ["127.0.0.5"], name


def test_no_file_or_proxy_off_means_no_steering(tmp_path: Path) -> None:
    loaded = load_in_process(_config(tmp_path, None))
    assert loaded.intercept == frozenset()
    assert not loaded.view.clients.lookup("127.0.0.1").decide(b"news.example").steer  # type: ignore[union-attr]
    off = tmp_path / "off"
    cfg = write_gateway_config(off, upstream_port=53000, policies={"p.yaml": POLICY},
                               lists=LISTS, lists_yaml=LISTS_YAML)
    (off / "var" / INTERCEPT_FILE).write_text("news.example\n")
    assert load_in_process(cfg).intercept == frozenset()


def test_explain_says_a_name_is_intercepted(tmp_path: Path) -> None:
    cfg = _config(tmp_path, "news.example\n")
    r = subprocess.run([sys.executable, "-m", "gateway", "explain", "-c", str(cfg), "127.0.0.1",
                        "www.news.example", "--json"], capture_output=True, text=True,
                       timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert (out["verdict"], out["rule"], out["rcode"]) == ("intercepted", "news.example",
                                                          "NOERROR")
    assert out["answer"] == "A/AAAA: the proxy's address (127.0.0.5); HTTPS/SVCB: NODATA"


@pytest.mark.parametrize("qtype", ["MX", "TXT"])
def test_other_types_are_not_steered(tmp_path: Path, qtype: str) -> None:
    loaded = load_in_process(_config(tmp_path, "news.example\n"))
    profile = loaded.view.clients.lookup("127.0.0.1")
    assert profile is not None and profile.decide(b"news.example").steer
    r = Resolver(loaded.view, AnswerCache(CacheConfig()),
                 Forwarder([Upstream("127.0.0.1", 9)], ForwarderConfig()), DnsStats())
    q = dns.message.make_query("news.example", qtype)
    pending = r.handle(q.to_wire(), "127.0.0.1", "udp")
    assert pending is not None and not isinstance(pending, bytes)  # goes upstream
    pending.close()
    # ... and so does a neighbour of a steered name, for any type.
    q = dns.message.make_query("other.example", "A")
    pending = r.handle(q.to_wire(), "127.0.0.1", "udp")
    assert pending is not None and not isinstance(pending, bytes)
    pending.close()


def test_image_scan_scopes_steer_their_subdomains(tmp_path: Path) -> None:
    cfg = write_gateway_config(
        tmp_path, upstream_port=53000, policies={"p.yaml": POLICY}, lists=LISTS,
        lists_yaml=LISTS_YAML,
        extra={"proxy": {**PROXY["proxy"], "scan_hosts": ["img.example"]}})
    (tmp_path / "var" / INTERCEPT_FILE).write_text("img.example\nnews.example\n")
    r = _resolver(cfg)
    for name in ("img.example", "cdn.img.example", "a.b.img.example"):
        assert [rr.to_text() for rr in _ask(r, name, "A").answer[0]] == ["127.0.0.5"], name
    profile = load_in_process(cfg).view.clients.lookup("127.0.0.1")
    assert profile is not None
    assert not profile.decide(b"sub.news.example").steer   # URL entries: exact hosts only
    assert not profile.decide(b"notimg.example").steer
