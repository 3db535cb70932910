"""The proxy as a real process: curl through the explicit proxy and through DNS steering.

A real origin (aiohttp, HTTP and HTTPS with a test CA) and a real upstream (unbound) on
loopback; the proxy resolves every name through unbound, never the system resolver.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

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
from tests.support.procs import REPO_ROOT, free_port, write_gateway_config
from tests.support.wait import wait_for

pytest.importorskip("mitmproxy")
pytestmark = pytest.mark.integration

# ---------------------------------------------------------------------- certificates


# ---------------------------------------------------------------------- the origin


@pytest.fixture(scope="module")
def origin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Origin, Path]]:
    with serve_origin(tmp_path_factory.mktemp("origin")) as started:
        yield started


# ---------------------------------------------------------------------- the proxy


@dataclass
class Proxy:
    proc: subprocess.Popen[bytes]
    config: Path
    state: Path
    port: int
    steer_http: int
    steer_https: int
    metrics: int
    stderr: Path

    def metric(self, name: str, **labels: str) -> float:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics}/metrics", timeout=5) as r:
            text = r.read().decode()
        want = ",".join(f'{k}="{v}"' for k, v in labels.items())
        for line in text.splitlines():
            head, _, value = line.rpartition(" ")
            if head == (f"{name}{{{want}}}" if want else name):
                return float(value)
        raise AssertionError(f"{name}{{{want}}} not in /metrics")


def start_proxy(config: Path, ports: dict[str, int], timeout: float = 20.0,
                log_level: str = "info") -> Proxy:
    stderr = config.parent / "proxy.stderr.log"
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=str(REPO_ROOT))
    with open(stderr, "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "gateway", "--log-level", log_level,
                                 "proxy", "-c", str(config)], stdout=subprocess.DEVNULL,
                                stderr=err, stdin=subprocess.DEVNULL, cwd=REPO_ROOT, env=env)
    proxy = Proxy(proc, config, config.parent / "var", ports["listen"], ports["http"],
                  ports["https"], ports["metrics"], stderr)
    def ready() -> bool:
        assert proc.poll() is None, f"proxy exited {proc.returncode}:\n{stderr.read_text()}"
        with urllib.request.urlopen(f"http://127.0.0.1:{proxy.metrics}/readyz",
                                    timeout=0.5) as r:
            return bool(r.status == 200)

    try:
        wait_for(ready, timeout=timeout, interval=0.1, what="proxy /readyz 200",
                 ignore=(OSError,))
    except AssertionError:
        proc.kill()
        raise AssertionError(f"proxy not ready:\n{stderr.read_text()}") from None
    return proxy


@pytest.fixture(scope="module")
def proxy(origin: tuple[Origin, Path], tmp_path_factory: pytest.TempPathFactory,
          ) -> Iterator[Proxy]:
    with run_proxy(origin, tmp_path_factory.mktemp("unbound"),
                   tmp_path_factory.mktemp("proxy")) as started:
        yield started


@contextlib.contextmanager
def run_proxy(origin: tuple[Origin, Path], unbound_dir: Path, d: Path,
              log_level: str = "info") -> Iterator[Proxy]:
    """unbound with the test names, the config, the feed copy, and the proxy process."""
    from tests.support.unbound import start_unbound

    org, origin_ca = origin
    upstream = start_unbound(unbound_dir, [f"{n}. 60 IN A 127.0.0.1" for n in NAMES])
    _, pub = generate_keys(d / "keys")
    ports = {k: free_port(v6=False, udp=False) for k in ("listen", "http", "https", "metrics")}
    cfg = write_gateway_config(
        d, upstream_port=upstream.port, policies={"p.yaml": POLICY},
        lists={"adult-pages.txt": ADULT_PAGES, "games-pages.txt": GAMES_PAGES},
        lists_yaml=LISTS_YAML, ipv6=False,
        extra={"feeds": [{"name": "central", "url": "http://127.0.0.1:9/v1/feed",
                          "type": "safegate", "public_key": str(pub), "acks": False}],
               "proxy": {"enabled": True, "listen": f"127.0.0.1:{ports['listen']}",
                         "ca_dir": "var/ca", "metrics_listen": f"127.0.0.1:{ports['metrics']}",
                         "intercept_listen": {"http": f"127.0.0.1:{ports['http']}",
                                              "https": f"127.0.0.1:{ports['https']}"},
                         "origin_ports": {"http": org.http_port, "https": org.https_port},
                         "upstream_ca": str(origin_ca),
                         "restrict_hosts": {"youtube": ["video.test"],
                                            "google": ["search.test"]},
                         "scan_hosts": ["img.test"]}})
    image_sha = hashlib.sha256(org.image).hexdigest()
    write_feed(d / "var", d / "keys" / "feed.key", [
        FeedEntry("takedown-42", "url", "https://news.test/post/42", ("violence",), "block", True,
              LEGAL, ISSUED),
        FeedEntry("img-1", "sha256", image_sha, ("csam",), "block", True, LEGAL, ISSUED)])
    proc = start_proxy(cfg, ports, log_level=log_level)
    yield proc
    proc.proc.terminate()
    try:
        code = proc.proc.wait(10)
    finally:
        proc.proc.kill()
        upstream.stop()
    assert code == 0, proc.stderr.read_text()[-5000:]


def ca(proxy: Proxy) -> str:
    return str(proxy.state / "ca" / "mitmproxy-ca-cert.pem")


# ---------------------------------------------------------------------- tests


def test_ca_generated_with_mitmproxy_names_and_private_key(proxy: Proxy) -> None:
    d = proxy.state / "ca"
    for name in ("mitmproxy-ca.pem", "mitmproxy-ca-cert.pem", "mitmproxy-ca-cert.cer",
                 "mitmproxy-ca-cert.p12"):
        assert (d / name).is_file(), name
    assert (d / "mitmproxy-ca.pem").stat().st_mode & 0o077 == 0


def test_intercept_file_lists_url_hosts_restricted_and_scanned(proxy: Proxy) -> None:
    from gateway.proxy.intercept import read_intercept_file

    hosts = read_intercept_file(proxy.state / "proxy-intercept.txt")
    assert {b"news.test", b"www.news.test", b"video.test", b"search.test",
            b"img.test"} <= set(hosts)
    assert b"plain.test" not in hosts


@pytest.mark.parametrize("via", ["explicit", "steered"])
def test_https_legal_category_and_neighbour(proxy: Proxy, origin: tuple[Origin, Path],
                                            via: str) -> None:
    org, _ = origin

    def get(path: str) -> tuple[int, str, str]:
        if via == "explicit":
            return curl("-x", f"http://127.0.0.1:{proxy.port}", "--cacert", ca(proxy),
                        f"https://news.test:{org.https_port}{path}")
        return curl("--connect-to", f"news.test:443:127.0.0.1:{proxy.steer_https}",
                    "--cacert", ca(proxy), f"https://news.test{path}")

    legal_before = proxy.metric("safegate_proxy_requests_total", action="legal")
    status, body, err = get("/post/42")
    assert status == 451, err
    assert "QĐ-123/2026" in body and "takedown-42" in body
    assert proxy.metric("safegate_proxy_requests_total", action="legal") == legal_before + 1
    status, body, _ = get("/post/42?utm_source=x")      # a query does not escape the entry
    assert status == 451
    status, body, _ = get("/adult/page.html")
    assert status == 403 and "adult" in body
    status, body, _ = get("/post/43")                   # the neighbour is untouched
    assert status == 200 and body.startswith("origin news.test")
    status, body, _ = get("/games/")                    # games: not blocked for this tier
    assert status == 200


@pytest.mark.parametrize("via", ["explicit", "steered"])
def test_plain_http_blocks_and_neighbour(proxy: Proxy, origin: tuple[Origin, Path],
                                         via: str) -> None:
    org, _ = origin
    if via == "explicit":
        base, extra = f"http://www.news.test:{org.http_port}", ["-x",
                                                                f"http://127.0.0.1:{proxy.port}"]
    else:
        base, extra = f"http://127.0.0.1:{proxy.steer_http}", ["-H", "Host: www.news.test"]
    assert curl(*extra, base + "/post/42")[0] == 451
    assert curl(*extra, base + "/adult/x")[0] == 403
    status, body, _ = curl(*extra, base + "/post/420")
    assert status == 200 and "/post/420" in body


def test_block_page_report_token_is_bound_to_the_client(proxy: Proxy, origin: tuple[Origin, Path],
                                                      tmp_path: Path) -> None:
    """The proxy's block page carries a form token the gateway accepts from this client's
    address only, and the same security headers as the gateway's pages."""
    from gateway.hotline.guard import CsrfTokens, load_secret

    org, _ = origin
    head = tmp_path / "headers.txt"
    status, body, err = curl("-x", f"http://127.0.0.1:{proxy.port}", "-H", "Accept: text/html",
                             "-D", str(head), f"http://www.news.test:{org.http_port}/post/42")
    assert status == 451, err
    token = re.search(r'name="csrf" value="([^"]+)"', body)
    assert token is not None
    tokens = CsrfTokens(load_secret(proxy.state), 3600.0)
    assert tokens.expiry(token.group(1), "127.0.0.1", time.time()) is not None
    assert tokens.expiry(token.group(1), "127.0.0.3", time.time()) is None
    headers = head.read_text().lower()
    assert "content-security-policy: default-src 'none'" in headers
    assert "x-frame-options: deny" in headers and "referrer-policy: no-referrer" in headers


def test_passthrough_keeps_the_origin_certificate(proxy: Proxy, origin: tuple[Origin, Path]
                                                  ) -> None:
    org, origin_ca = origin
    before = proxy.metric("safegate_proxy_connections_total", mode="passthrough")
    # Trusting only the origin's CA works: the proxy did not decrypt.
    status, body, err = curl("-x", f"http://127.0.0.1:{proxy.port}", "--cacert", str(origin_ca),
                             f"https://plain.test:{org.https_port}/x")
    assert status == 200 and body.startswith("origin plain.test"), err
    status, body, err = curl("--connect-to", f"plain.test:443:127.0.0.1:{proxy.steer_https}",
                             "--cacert", str(origin_ca), "https://plain.test/y")
    assert status == 200, err
    # ... and an intercepted name is not signed by the origin's CA.
    status, _, err = curl("--connect-to", f"news.test:443:127.0.0.1:{proxy.steer_https}",
                          "--cacert", str(origin_ca), "https://news.test/post/43")
    assert status == 0 and "certificate" in err.lower()
    assert proxy.metric("safegate_proxy_connections_total", mode="passthrough") == before + 2


def test_restricted_modes_reach_the_origin(proxy: Proxy, origin: tuple[Origin, Path]) -> None:
    status, body, err = curl("--connect-to", f"video.test:443:127.0.0.1:{proxy.steer_https}",
                             "--cacert", ca(proxy), "https://video.test/watch?v=abc")
    assert status == 200, err
    assert "yt=Strict" in body
    status, body, _ = curl("--connect-to", f"search.test:443:127.0.0.1:{proxy.steer_https}",
                           "--cacert", ca(proxy), "https://search.test/search?q=cats")
    assert status == 200 and "safe=active" in body and "q=cats" in body
    assert proxy.metric("safegate_proxy_requests_total", action="restricted") >= 2


def test_matching_image_is_replaced_and_reported(proxy: Proxy) -> None:
    status, body, err = curl("--connect-to", f"img.test:443:127.0.0.1:{proxy.steer_https}",
                             "--cacert", ca(proxy), "-o", "/dev/null", "-w",
                             "%{content_type} %{size_download}\n%{http_code}",
                             "https://img.test/img/a.png")
    assert status == 200, err
    assert body.strip().startswith("image/gif 43"), body
    assert proxy.metric("safegate_proxy_hash_matches_total", type="sha256") == 1
    with sqlite3.connect(proxy.state / "reports.sqlite3") as db:
        rows = db.execute("SELECT kind, target, entry_id FROM reports").fetchall()
    assert ("match", "https://img.test/img/a.png", "img-1") in rows


def test_reload_on_list_change(proxy: Proxy) -> None:
    pages = proxy.config.parent / "blocklists" / "adult-pages.txt"
    url = f"http://127.0.0.1:{proxy.steer_http}/fresh/1"
    assert curl("-H", "Host: news.test", url)[0] == 200
    pages.write_text(ADULT_PAGES + "news.test/fresh/1\n")
    wait_for(lambda: curl("-H", "Host: news.test", url)[0] == 403, interval=0.2,
             what="the new URL entry in force (403)")
    assert proxy.metric("safegate_proxy_rules_generation") > 1


@pytest.mark.parametrize("via", ["explicit-http", "steered-https"])
def test_keepalive_reuses_server_connections(proxy: Proxy, origin: tuple[Origin, Path],
                                             via: str) -> None:
    """mitmproxy allows 5 server connections per client to one address: more requests on one
    keep-alive connection than that must still all be answered (one server connection)."""
    org, _ = origin
    if via == "explicit-http":
        args = ["-x", f"http://127.0.0.1:{proxy.port}"]
        urls = [f"http://news.test:{org.http_port}/k/{i}" for i in range(8)]
    else:
        args = ["--connect-to", f"news.test:443:127.0.0.1:{proxy.steer_https}", "--cacert",
                ca(proxy)]
        urls = [f"https://news.test/k/{i}" for i in range(8)]
    p = subprocess.run(["curl", "-sS", "--max-time", "10", "-w", "%{http_code} ", *args,
                        *[x for url in urls for x in ("-o", "/dev/null", url)]],
                       capture_output=True, text=True, timeout=30)
    assert p.stdout.split() == ["200"] * 8, p.stderr
