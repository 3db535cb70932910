"""`safegate run` with proxy.enabled: the proxy child starts, is restarted when it dies, stops
with the gateway; the web listener serves /proxy.pac."""

from __future__ import annotations

import os
import signal
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.support.procs import SafeGateFactory, free_port
from tests.support.unbound import UnboundServer
from tests.support.wait import wait_for

pytest.importorskip("mitmproxy")
pytestmark = pytest.mark.integration

POLICY = """
tiers:
  all: {block: [adult]}
networks:
  - {name: lo, cidrs: ["127.0.0.0/8"], tier: all}
"""
LISTS_YAML = "categories:\n  adult:\n    - {path: pages.txt, format: urls}\n"


def children(pid: int) -> list[int]:
    """Proxy child processes of `pid` (others, like the list compiler, are left out)."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat.rpartition(")")[2].split()
            if int(fields[1]) == pid and fields[0] != "Z" and \
                    b"proxy" in (entry / "cmdline").read_bytes():
                out.append(int(entry.name))
    return out


def ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=0.5) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def test_run_supervises_the_proxy_and_serves_the_pac(safegate_factory: SafeGateFactory,
                                                     unbound: UnboundServer) -> None:
    pport, mport = free_port(v6=False, udp=False), free_port(v6=False, udp=False)
    gw = safegate_factory(
        upstream_port=unbound.port, policies={"p.yaml": POLICY},
        lists={"pages.txt": "https://news.test/post/1\n"}, lists_yaml=LISTS_YAML, ipv6=False,
        extra={"proxy": {"enabled": True, "listen": f"127.0.0.1:{pport}",
                         "metrics_listen": f"127.0.0.1:{mport}"}})
    wait_for(lambda: ready(mport), what="the proxy metrics port answers")
    [child] = children(gw.pid)
    with urllib.request.urlopen(gw.web_url + "/proxy.pac", timeout=5) as r:
        assert r.headers["Content-Type"].startswith("application/x-ns-proxy-autoconfig")
        pac = r.read().decode()
    assert f'"PROXY 127.0.0.1:{pport}"' in pac and '"news.test":1' in pac
    os.kill(child, signal.SIGKILL)
    wait_for(lambda: [c for c in children(gw.pid) if c != child] and ready(mport),
             what="a new proxy child serves")
    [second] = children(gw.pid)
    assert second != child
    gw.stop()                      # exit code 0 asserted; the child goes with it
    assert not children(gw.pid) and not ready(mport)


def test_proxy_enabled_by_a_reload_starts_and_disabled_stops_the_child(
        safegate_factory: SafeGateFactory, unbound: UnboundServer) -> None:
    """Saving `proxy.enabled: true` to a running gateway used to do nothing until a restart."""
    mport, mport2 = free_port(v6=False, udp=False), free_port(v6=False, udp=False)
    proxy = {"enabled": False, "listen": f"127.0.0.1:{free_port(v6=False, udp=False)}",
             "metrics_listen": f"127.0.0.1:{mport}"}
    gw = safegate_factory(
        upstream_port=unbound.port, policies={"p.yaml": POLICY},
        lists={"pages.txt": "https://news.test/post/1\n"}, lists_yaml=LISTS_YAML, ipv6=False,
        extra={"proxy": proxy})
    assert gw.config is not None
    assert not children(gw.pid) and not ready(mport)

    def save(**changes: object) -> None:
        assert gw.config is not None
        doc = yaml.safe_load(gw.config.read_text())
        doc["proxy"].update(changes)
        gw.config.write_text(yaml.safe_dump(doc))
        gw.reload()

    save(enabled=True)
    wait_for(lambda: ready(mport), what="the proxy enabled by a reload serves")
    [child] = children(gw.pid)
    # Another proxy setting: the child is restarted on the new metrics port.
    save(metrics_listen=f"127.0.0.1:{mport2}")
    wait_for(lambda: ready(mport2), what="the restarted proxy serves on the new port")
    assert children(gw.pid) != [child] and not ready(mport)
    save(enabled=False)
    wait_for(lambda: not children(gw.pid) and not ready(mport2),
             what="the proxy disabled by a reload stops")
    gw.stop()
