"""DNS-steered interception, the whole chain with real processes.

`safegate run` with the proxy enabled: the proxy child writes its intercept set, the gateway
picks it up, SafeGate's DNS answers the steering listener's address for news.test (and only for
the intercept set), and curl — connecting where that DNS answer says — gets the 451 legal
takedown page for the one URL and the origin for its neighbour.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import pytest

from gateway.feedformat.document import FeedEntry
from gateway.feedformat.signing import generate_keys
from tests.support.origin import (
    ADULT_PAGES,
    GAMES_PAGES,
    ISSUED,
    LEGAL,
    LISTS_YAML,
    NAMES,
    POLICY,
    Origin,
    curl,
    serve_origin,
    write_feed,
)
from tests.support.procs import SafeGateProcess, free_port, write_gateway_config
from tests.support.wait import wait_for

pytest.importorskip("mitmproxy")
pytestmark = pytest.mark.integration

@pytest.fixture(scope="module")
def origin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Origin, Path]]:
    with serve_origin(tmp_path_factory.mktemp("origin")) as started:
        yield started


STEER_ADDRESS = "127.0.0.6"   # where the steering listeners listen; what the DNS answers


def _a(gw: SafeGateProcess, name: str) -> list[str]:
    q = dns.message.make_query(name, "A")
    r = dns.query.udp(q, "127.0.0.1", port=gw.dns_port, timeout=2)
    return [rr.address for rrset in r.answer for rr in rrset if rrset.rdtype == 1]


def test_safegate_dns_steers_the_intercept_set_to_the_proxy(
        origin: tuple[Origin, Path], safegate_factory: Any, unbound_factory: Any,
        tmp_path: Path) -> None:
    org, origin_ca = origin
    upstream = unbound_factory([f"{n}. 60 IN A 127.0.0.1" for n in NAMES])
    _, pub = generate_keys(tmp_path / "keys")
    ports = {k: free_port(v6=False, udp=False) for k in ("listen", "http", "https", "metrics")}
    cfg = write_gateway_config(
        tmp_path, upstream_port=upstream.port, policies={"p.yaml": POLICY},
        lists={"adult-pages.txt": ADULT_PAGES, "games-pages.txt": GAMES_PAGES},
        lists_yaml=LISTS_YAML, ipv6=False,
        extra={"feeds": [{"name": "central", "url": "http://127.0.0.1:9/v1/feed",
                          "type": "safegate", "public_key": str(pub), "acks": False}],
               "reload": {"watch_interval": 0.2},
               "proxy": {"enabled": True, "listen": f"127.0.0.1:{ports['listen']}",
                         "metrics_listen": f"127.0.0.1:{ports['metrics']}",
                         "intercept_listen": {"http": f"{STEER_ADDRESS}:{ports['http']}",
                                              "https": f"{STEER_ADDRESS}:{ports['https']}"},
                         "origin_ports": {"http": org.http_port, "https": org.https_port},
                         "upstream_ca": str(origin_ca)}})
    write_feed(tmp_path / "var", tmp_path / "keys" / "feed.key", [
        FeedEntry("takedown-42", "url", "https://news.test/post/42", ("violence",), "block", True,
              LEGAL, ISSUED)])
    gw: SafeGateProcess = safegate_factory(cfg)
    wait_for(lambda: _a(gw, "news.test") == [STEER_ADDRESS], timeout=30, interval=0.2,
             what="news.test steered to the proxy")
    assert _a(gw, "www.news.test") == [STEER_ADDRESS]
    assert _a(gw, "plain.test") == ["127.0.0.1"]          # not in the intercept set: upstream
    [answer] = _a(gw, "news.test")
    ca = str(tmp_path / "var" / "ca" / "mitmproxy-ca-cert.pem")

    def get(path: str) -> tuple[int, str, str]:
        # The browser connects to port 443 of the address SafeGate answered; on loopback the
        # steering listener sits on an unprivileged port, hence --connect-to.
        return curl("--connect-to", f"news.test:443:{answer}:{ports['https']}", "--cacert", ca,
                    f"https://news.test{path}")

    status, body, err = get("/post/42")
    assert status == 451, err
    assert "QĐ-123/2026" in body and "takedown-42" in body
    status, body, _ = get("/post/43")
    assert status == 200 and body.startswith("origin news.test /post/43")
    metrics = gw.metrics_text()
    assert 'safegate_dns_queries_total{action="intercepted",category="",protocol="udp",' \
           'tier="tieu-hoc"}' in metrics
