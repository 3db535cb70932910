"""dns.workers: several resolver processes share the DNS sockets and answer as one.

Each query comes from a fresh socket (a new source port), so the kernel's SO_REUSEPORT hash
spreads them over the processes: a worker that missed a reload, or counts that were not
folded into the primary's metrics, would show as a fraction of wrong answers or a short count.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
from pathlib import Path
from typing import Any

import dns.exception
import dns.message
import dns.query
import dns.rcode
import pytest

from tests.support import unbound as ub
from tests.support.data import LISTS, LISTS_YAML, POLICY
from tests.support.procs import SafeGateProcess
from tests.support.wait import wait_for

pytestmark = pytest.mark.integration

N = 120


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True,
                         text=True, check=False).stdout
    return [int(x) for x in out.split()]


def _workers(gw: SafeGateProcess) -> list[int]:
    """The worker processes (spawned interpreters running gateway.runtime.workers)."""
    out = []
    for pid in _children(gw.pid):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if b"spawn_main" in cmd:
            out.append(pid)
    return out


def _answers(gw: SafeGateProcess, name: str, n: int = N) -> list[str]:
    """The A record each query got (the block page's address when blocked), the RCODE, or
    "timeout" (after one retry from the same port, as a stub resolver would)."""
    out = []
    for _ in range(n):
        q = dns.message.make_query(name, "A")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:   # a new source port
            s.bind(("127.0.0.1", 0))
            s.setblocking(False)   # dnspython's timeout only works on a non-blocking socket
            for _attempt in range(2):
                try:
                    r = dns.query.udp(q, "127.0.0.1", port=gw.dns_port, timeout=1, sock=s)
                except dns.exception.Timeout:
                    continue
                out.append(r.answer[0][0].address if r.answer else dns.rcode.to_text(r.rcode()))
                break
            else:
                out.append("timeout")
    return out


def _metric(gw: SafeGateProcess, pattern: str) -> float:
    m = re.search(pattern + r" ([0-9.e+]+)", gw.metrics_text())
    return float(m.group(1)) if m else 0.0


def _serves_dns(pid: int, port: int) -> bool:
    """True once process `pid` holds a UDP socket bound to `port` (a worker binds only after
    it built its view from the primary's state, so bound means answering with it)."""
    try:
        inodes = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
    except OSError:
        return False
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if (int(fields[1].rsplit(":", 1)[1], 16) == port
                    and f"socket:[{fields[9]}]" in inodes):
                return True
    return False


@pytest.fixture
def gw(unbound: ub.UnboundServer, safegate_factory: Any) -> SafeGateProcess:
    return safegate_factory(upstream_port=unbound.port, policies={"p.yaml": POLICY},  # type: ignore[no-any-return]
                            lists=LISTS, lists_yaml=LISTS_YAML,
                            extra={"dns": {"workers": 2}, "reload": {"watch_interval": 0.2}})


def test_two_workers_answer_reload_together_and_count_as_one(gw: SafeGateProcess) -> None:
    assert len(_workers(gw)) == 1           # the primary + one worker
    # 127.0.0.1 is the kids network: gambling is blocked (the block page) by every process.
    assert set(_answers(gw, "gamble.test")) == {"127.0.0.1"}
    blocked = ('safegate_dns_queries_total{action="blocked",category="gambling",'
               'protocol="udp",tier="kids"}')
    wait_for(lambda: _metric(gw, re.escape(blocked)) == N,
             what=f"the node's metrics count all {N} queries")
    # A policy change reaches every process: no query lands on a stale one.
    assert gw.config is not None
    policy = gw.config.parent / "policies" / "p.yaml"
    policy.write_text(POLICY.replace("kids: {block: [adult, gambling]",
                                     "kids: {block: [adult]"))
    wait_for(lambda: 'safegate_config_reloads_total{result="success"} 2.0' in gw.metrics_text(),
             what="the reload happened")
    # Every process answers with the real address: a worker left on the old policy would
    # keep answering some of the queries with the block page, and the wait would time out.
    answered: list[str] = []

    def new_policy_everywhere() -> bool:
        got = _answers(gw, "gamble.test")
        answered.extend(got)
        return set(got) == {ub.BLOCKED_TARGET_A}   # the real address
    wait_for(new_policy_everywhere, interval=0.1,
             what="every process answers gamble.test with the new policy")
    # The node counts each query once, whichever process answered it and with which policy.
    assert "timeout" not in answered
    allowed = ('safegate_dns_queries_total{action="allowed",category="",protocol="udp",'
               'tier="kids"}')
    wait_for(lambda: _metric(gw, re.escape(blocked)) + _metric(gw, re.escape(allowed)) + _metric(
        gw, re.escape(allowed.replace('"allowed"', '"cached"'))) == N + len(answered),
        what=f"the node's metrics count all {N + len(answered)} queries")


def test_a_killed_worker_is_replaced_and_dns_keeps_answering(gw: SafeGateProcess) -> None:
    (worker,) = _workers(gw)
    os.kill(worker, signal.SIGKILL)
    wait_for(lambda: "DNS worker 1 exited (exit code -9)" in gw.stderr_text(),
             what="the primary saw the worker die")
    # The dead process's socket is gone with it: every query reaches the primary meanwhile.
    # (Queries already queued on the dead socket are lost: the client's retry covers them.)
    assert set(_answers(gw, "adult.example", 40)) == {"127.0.0.1"}
    (new,) = wait_for(lambda: [p for p in _workers(gw) if p != worker],
                      what="a new worker process")
    assert "restarting DNS worker 1" in gw.stderr_text()
    wait_for(lambda: _serves_dns(new, gw.dns_port), what="the new worker serves DNS")
    assert set(_answers(gw, "adult.example")) == {"127.0.0.1"}


def test_a_feed_entry_is_acked_only_once_every_worker_enforces_it(
        unbound: ub.UnboundServer, safegate_factory: Any, tmp_path: Path) -> None:
    """The ack tells the regulator "enforced": by then no process of the node may still
    answer the name (the self-probe waits for every worker's confirmation)."""
    from tests.support.feeds import NAME, acked, entry, gateway_extra
    from tests.support.publisher import ADMIN_TOKEN, start_publisher

    pub = start_publisher(tmp_path / "publisher", gateways=("gw-a",))
    try:
        gw = safegate_factory(upstream_port=unbound.port, policies={"p.yaml": POLICY},
                              lists=LISTS, lists_yaml=LISTS_YAML,
                              extra={**gateway_extra(pub, "gw-a"), "dns": {"workers": 2}})
        assert len(_workers(gw)) == 1
        assert set(_answers(gw, NAME, 40)) == {ub.BLOCKED_TARGET_A}
        r = pub.request("POST", "/v1/entries", body={"entries": [entry("BCA-2026-0100")]},
                        token=ADMIN_TOKEN)
        assert r.status == 201, r.body
        wait_for(lambda: acked(pub, "BCA-2026-0100", "gw-a"), what="the entry was acked")
        # 127.0.0.1 is the kids network (answer: blockpage): the page's address, from every
        # process, right after the ack.
        assert set(_answers(gw, NAME)) == {"127.0.0.1"}
    finally:
        pub.kill()
