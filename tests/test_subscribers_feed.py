"""Subscribers loaded from a URL (the ISP's provisioning system), end to end.

A real HTTP server on loopback publishes the CSV; a real SafeGate polls it. A new file applies,
a broken one is rejected while the running subscribers stay, an outage changes nothing, and a
restart during the outage starts from the last-known-good copy.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import dns.rcode
import pytest

from tests.support import unbound as ub
from tests.support.data import FRONTENDS_LISTS, FRONTENDS_LISTS_YAML, FRONTENDS_POLICY
from tests.support.docserver import DocumentServer
from tests.support.procs import SafeGateProcess, write_gateway_config
from tests.support.wait import wait_for

pytestmark = pytest.mark.integration

TOKEN = "s3cret-provisioning-token"
V1 = "prefix,tier\n127.0.8.5,kids\n"
V2 = V1 + "127.0.8.9,kids\n"
BROKEN = V2 + "127.0.8.10,grade-nine\n"


@pytest.fixture
def publisher() -> Iterator[DocumentServer]:
    """The provisioning system's HTTP endpoint: ETag, bearer token."""
    pub = DocumentServer("/isp/subscribers.csv", V1.encode(), token=TOKEN)
    yield pub
    pub.stop()


def _rcode(gw: SafeGateProcess, source: str) -> int:
    q = dns.message.make_query("gamble.test", "A", use_edns=0, payload=1232)
    return dns.query.udp(q, "127.0.0.1", port=gw.dns_port, timeout=2,  # type: ignore[no-any-return]
                         source=source).rcode()


def _polling_gateway(unbound: ub.UnboundServer, safegate_factory: Any, publisher: DocumentServer,
                     tmp_path: Path) -> Any:
    """A gateway polling the publisher's subscribers export, once its first file applied."""
    (tmp_path / "token").write_text(TOKEN + "\n")
    cfg = write_gateway_config(
        tmp_path, upstream_port=unbound.port, policies={"p.yaml": FRONTENDS_POLICY},
        lists=FRONTENDS_LISTS,
        lists_yaml=FRONTENDS_LISTS_YAML, ipv6=False,
        extra={"subscribers": {"url": publisher.url, "interval": 0.3, "token_file": "token"},
               "reload": {"watch_interval": 0.2}})
    gw = safegate_factory(cfg)
    wait_for(lambda: _rcode(gw, "127.0.8.5") == dns.rcode.NXDOMAIN,
             what="the first file never applied")
    return gw


def test_subscribers_from_a_url(unbound: ub.UnboundServer, safegate_factory: Any,
                                publisher: DocumentServer, tmp_path: Path) -> None:
    gw = _polling_gateway(unbound, safegate_factory, publisher, tmp_path)
    later = "127.0.8.9"
    assert _rcode(gw, later) == dns.rcode.NOERROR           # isp network (teens)
    local = tmp_path / "var" / "subscribers.csv"
    assert local.read_text() == V1

    publisher.body = V2.encode()
    wait_for(lambda: _rcode(gw, later) == dns.rcode.NXDOMAIN, what="the update never applied")
    wait_for(lambda: any(inm and status == 304 for inm, _, status in publisher.answered),
             what="no conditional request was answered 304")

    publisher.body = BROKEN.encode()
    wait_for(lambda: 'safegate_subscribers_updates_total{result="rejected"} 1.0'
             in gw.metrics_text(), what="the broken file was not rejected")
    assert "tier 'grade-nine' is not defined in the policies" in gw.stderr_text()
    assert local.read_text() == V2                          # last-known-good kept
    assert _rcode(gw, later) == dns.rcode.NXDOMAIN

    publisher.stop()
    wait_for(lambda: 'safegate_subscribers_updates_total{result="error"} 0.0'
             not in gw.metrics_text(), what="the outage was not counted")
    assert _rcode(gw, later) == dns.rcode.NXDOMAIN
    gw.stop()

    # A restart while the provisioning system is down starts from the local copy.
    gw2 = safegate_factory(gw.config)
    assert _rcode(gw2, later) == dns.rcode.NXDOMAIN
    assert _rcode(gw2, "127.0.8.10") == dns.rcode.NOERROR   # the rejected line never applied


def test_a_subscribers_url_needs_a_valid_setting(tmp_path: Path) -> None:
    import subprocess
    import sys

    cfg = write_gateway_config(tmp_path, upstream_port=53000, policies={"p.yaml": FRONTENDS_POLICY},
                               lists=FRONTENDS_LISTS, lists_yaml=FRONTENDS_LISTS_YAML,
                               extra={"subscribers": {"url": "ftp://isp.example/s.csv"}})
    r = subprocess.run([sys.executable, "-m", "gateway", "check", "-c", str(cfg)],
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 1
    assert "subscribers.url must be an http(s) URL, got 'ftp://isp.example/s.csv'" in r.stderr


def test_an_export_that_is_not_utf8_is_rejected_and_polling_goes_on(
        unbound: ub.UnboundServer, safegate_factory: Any, publisher: DocumentServer,
        tmp_path: Path) -> None:
    """A non-UTF-8 byte used to raise UnicodeDecodeError out of the poller, which ended it:
    later exports were never fetched. Now it is a rejected file with its line."""
    gw = _polling_gateway(unbound, safegate_factory, publisher, tmp_path)
    later = "127.0.8.9"
    publisher.body = V1.encode() + b"127.0.8.9,k\xe9ds\n"
    wait_for(lambda: 'safegate_subscribers_updates_total{result="rejected"} 1.0'
             in gw.metrics_text(), what="the file was not rejected")
    assert f"{publisher.url}:3: not UTF-8 text (invalid continuation byte)" in gw.stderr_text()
    assert _rcode(gw, later) == dns.rcode.NOERROR   # the running subscribers stay
    publisher.body = V2.encode()
    wait_for(lambda: _rcode(gw, later) == dns.rcode.NXDOMAIN, what="the poller stopped polling")
