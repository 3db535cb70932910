"""gateway.yaml's section parsers (issue #11): parsing reads only gateway.yaml and imports no
DNS module; the files it names are checked by check_files, at the line naming them, in
`safegate check`, at startup and on reload."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import pytest
import yaml

from gateway.config.checks import check_files
from gateway.config.dns import CacheConfig, DnsConfig, ForwarderConfig
from gateway.config.feeds import FeedGuardConfig
from gateway.config.gateway import load_config
from gateway.config.limits import Limits
from gateway.config.proxy import ProxyConfig
from gateway.config.reports import ReportsConfig
from gateway.errors import ConfigError
from tests.support import unbound as ub
from tests.support.cli import check
from tests.support.data import LISTS, LISTS_YAML, POLICY
from tests.support.wait import wait_for

BASE = "dns:\n  upstreams: ['127.0.0.1']\n"


def test_the_config_package_imports_no_dns_module() -> None:
    code = ("import sys, gateway.config.gateway, gateway.config.checks; "
            "print(sorted(m for m in sys.modules if m.startswith(('gateway.dns', "
            "'gateway.runtime', 'gateway.policy', 'gateway.lists', 'gateway.feeds'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


# (text after BASE, line of the error, the message with {d} for the config's directory)
FILE_CASES = [
    ("  upstream_ca: nope.pem\n", 3,
     "dns.upstream_ca: {d}/nope.pem: not a readable PEM CA bundle ("),
    ("  tls: {listen: ['127.0.0.1:8853'], cert: c.pem, key: k.pem}\n", 3,
     "dns.tls: cannot load certificate {d}/c.pem with key {d}/k.pem: "),
    ("web:\n  tls: {cert: c.pem, key: k.pem}\n", 4,
     "web.tls: cannot load certificate {d}/c.pem with key {d}/k.pem: "),
    ("gateway: {id: gw1, token: secret-token}\nfeeds:\n  - name: central\n"
     "    url: https://feeds.example/v1\n    public_key: [nope.pub]\n", 7,
     "feed 'central': public key file {d}/nope.pub not found"),
    ("subscribers: {url: 'https://isp.example/subs.csv', token_file: nope.token}\n", 3,
     "subscribers.token_file {d}/nope.token not found"),
    ("subscribers: /dev/zero\n", 3,
     "subscribers: file /dev/zero is not a regular file (a device, FIFO or socket)"),
    ("proxy:\n  upstream_ca: nope.pem\n", 4, "proxy.upstream_ca: file {d}/nope.pem not found"),
]


@pytest.mark.parametrize(("text", "line", "message"), FILE_CASES)
def test_parsing_opens_no_named_file_and_check_files_names_its_line(
        tmp_path: Path, text: str, line: int, message: str) -> None:
    cfg = tmp_path / "gateway.yaml"
    cfg.write_text(BASE + text)
    config = load_config(cfg)   # before issue #11 this opened (and failed on) the file
    with pytest.raises(ConfigError) as info:
        check_files(config)
    assert str(info.value).startswith(f"{cfg}:{line}: " + message.format(d=tmp_path)), \
        str(info.value)


def test_safegate_check_reports_a_missing_public_key_at_its_line(tmp_path: Path) -> None:
    from tests.support.cli import config

    cfg = config(tmp_path, extra={"gateway": {"id": "gw1", "token": "secret-token"},
                                  "feeds": [{"name": "central", "url": "https://feeds.example/",
                                             "public_key": ["nope.pub"]}]})
    line = next(n for n, t in enumerate(cfg.read_text().splitlines(), 1) if "nope.pub" in t)
    rc, _, err = check(cfg)
    assert rc == 1
    assert err.strip() == (f"{cfg}:{line}: feed 'central': public key file "
                           f"{tmp_path / 'nope.pub'} not found")


@pytest.mark.integration
def test_a_reload_naming_a_missing_file_keeps_the_running_config(
        unbound: ub.UnboundServer, safegate_factory: Any) -> None:
    gw = safegate_factory(upstream_port=unbound.port, policies={"p.yaml": POLICY}, lists=LISTS,
                          lists_yaml=LISTS_YAML)
    assert gw.config is not None
    doc = yaml.safe_load(gw.config.read_text())
    doc["proxy"] = {"upstream_ca": "nope.pem"}
    gw.config.write_text(yaml.safe_dump(doc, sort_keys=False))
    line = next(n for n, t in enumerate(gw.config.read_text().splitlines(), 1) if "nope.pem" in t)
    gw.reload()
    wait_for(lambda: 'safegate_config_reloads_total{result="failure"} 1.0' in gw.metrics_text(),
             what="the reload refused")
    assert (f"{gw.config}:{line}: proxy.upstream_ca: file {gw.config.parent / 'nope.pem'} "
            "not found") in gw.stderr_text()
    q = dns.message.make_query("x.adult-site.test", "A", use_edns=0)
    r = dns.query.udp(q, "127.0.0.1", port=gw.dns_port, timeout=2)
    assert r.answer and r.answer[0][0].address == "127.0.0.1"   # still the block answer


def test_a_key_not_written_takes_its_section_dataclass_default(tmp_path: Path) -> None:
    cfg = tmp_path / "gateway.yaml"
    cfg.write_text(BASE)
    config = load_config(cfg)
    dns_defaults = DnsConfig()
    assert config.dns_listen == dns_defaults.listen
    assert config.block_ttl == dns_defaults.block_ttl
    assert config.tcp_idle_timeout == dns_defaults.tcp_idle_timeout
    assert config.workers == dns_defaults.workers
    assert config.cache == CacheConfig()
    assert config.forwarder == ForwarderConfig()
    assert config.feed_guard == FeedGuardConfig()
    assert config.reports == ReportsConfig()
    assert config.limits == Limits()
    proxy = ProxyConfig()
    assert config.proxy.listen == proxy.listen
    assert config.proxy.ca_dir == tmp_path / proxy.ca_dir
    assert config.proxy.max_image_bytes == proxy.max_image_bytes


@pytest.mark.parametrize(("text", "message"), [
    ("gateway: {id: gw1, token: secret-token}\nfeeds:\n  - name: central\n"
     "    url: ftp://feeds.example/\n    public_key: [k.pub]\n",
     "6: feed 'central': url must be an http(s) URL, got 'ftp://feeds.example/'"),
    ("subscribers: {url: 'https:///subs.csv'}\n",
     "3: subscribers.url must be an http(s) URL, got 'https:///subs.csv'"),
    ("reports: {forward_to: ['mailto:x@example.org']}\n",
     "3: reports.forward_to: 'mailto:x@example.org' is not an http(s) URL"),
])
def test_one_url_check_and_its_messages(tmp_path: Path, text: str, message: str) -> None:
    cfg = tmp_path / "gateway.yaml"
    cfg.write_text(BASE + text)
    with pytest.raises(ConfigError) as info:
        load_config(cfg)
    assert str(info.value) == f"{cfg}:{message}"


# Issue #14 item 4: web.listen / metrics.listen take one address or a list (dual stack).
def test_web_listen_takes_a_list_and_public_address_defaults_to_each_address(
        tmp_path: Path) -> None:
    cfg = tmp_path / "gateway.yaml"
    cfg.write_text(BASE + "web:\n  listen: ['127.0.0.1:8080', '[::1]:8080']\n"
                   "metrics:\n  listen: ['127.0.0.1:9153', '[::1]:9153']\n")
    config = load_config(cfg)
    assert config.web_listen == (("127.0.0.1", 8080), ("::1", 8080))
    # A answers carry the IPv4 address, AAAA answers the IPv6 one.
    assert config.blockpage_addresses == ("127.0.0.1", "::1")
    assert config.metrics_listen == (("127.0.0.1", 9153), ("::1", 9153))


def test_a_single_web_listen_string_still_means_one_listener(tmp_path: Path) -> None:
    cfg = tmp_path / "gateway.yaml"
    cfg.write_text(BASE + "web:\n  listen: '[::1]:8080'\nmetrics:\n  listen: '127.0.0.1:9'\n")
    config = load_config(cfg)
    assert config.web_listen == (("::1", 8080),)
    assert config.blockpage_addresses == ("::1",)
    assert config.metrics_listen == (("127.0.0.1", 9),)
    cfg.write_text(BASE)
    assert load_config(cfg).web_listen == (("127.0.0.1", 8080),)


@pytest.mark.parametrize(("text", "line", "message"), [
    ("web:\n  listen:\n    - 127.0.0.1:8080\n    - '[::1]:80x'\n", 6,
     "web.listen: '[::1]:80x': bad port '80x'"),
    ("web:\n  listen:\n    - 127.0.0.1:8080\n    - '[::]:8080'\n", 4,
     "web.listen is a wildcard address: set web.public_address to the address clients reach "
     "the block page at"),
    ("web:\n  listen: []\n", 4, "web.listen is empty"),
    ("metrics:\n  listen:\n    - 127.0.0.1:9153\n    - 'nope:9153'\n", 6,
     "metrics.listen: 'nope:9153': 'nope' is not an IP address"),
])
def test_safegate_check_names_the_line_of_a_bad_listen_item(tmp_path: Path, text: str,
                                                             line: int, message: str) -> None:
    cfg = tmp_path / "gateway.yaml"
    cfg.write_text(BASE + text)
    rc, _, err = check(cfg)
    assert rc == 1
    assert err.strip() == f"{cfg}:{line}: {message}"


def test_a_wildcard_in_the_list_with_public_address_answers_those(tmp_path: Path) -> None:
    cfg = tmp_path / "gateway.yaml"
    cfg.write_text(BASE + "web:\n  listen: ['0.0.0.0:80', '[::]:80']\n"
                   "  public_address: ['192.0.2.80', '2001:db8::80']\n")
    config = load_config(cfg)
    assert config.web_listen == (("0.0.0.0", 80), ("::", 80))
    assert config.blockpage_addresses == ("192.0.2.80", "2001:db8::80")
