"""ISP scale-out, end to end: 3 SafeGate nodes behind dnsdist running deploy/dnsdist/dnsdist.conf.

Real processes on loopback (bench/scaleout.py's cluster: nodes on 127.0.0.11-13, dnsdist on
127.0.0.10 querying them from 127.0.0.2 with PROXY v2). What a subscriber must see: their own
policy whichever node answers, and answers again within dnsdist's failover window when the node
serving them is killed.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import dns.edns
import dns.exception
import dns.message
import dns.query
import dns.rcode
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bench.scaleout import (
    ISP_CUSTOMER,
    KIDS_SUBSCRIBER,
    SHIPPED_CONF,
    Front,
    start_front,
    start_nodes,
)
from gateway.policy.decide import EDE_BLOCKED, EDE_FILTERED
from tests.support import unbound as ub
from tests.support.dnsdist import DNSDIST
from tests.support.procs import SafeGateProcess

pytestmark = pytest.mark.integration

# dnsdist keeps a query to a dead node outstanding for its UDP timeout (2 s), so
# leastOutstanding stops picking that node after the first unanswered query; the node is
# marked down within one check (connection refused) or two (timeouts). Sequential queries can
# therefore lose the one in flight plus at most one more picked before the mark.
MAX_LOST_AFTER_KILL = 2
MAX_SECONDS_TO_DOWN = 3.0      # checkInterval 1 s x maxCheckFailures 2, checkTimeout 0.5 s


@pytest.fixture
def cluster(unbound: ub.UnboundServer, tmp_path: Path
            ) -> Iterator[tuple[list[SafeGateProcess], Front]]:
    nodes = start_nodes(tmp_path, 3, unbound.port, log_level="info")
    try:
        front = start_front(tmp_path / "dnsdist", nodes)
    except BaseException:
        for node in nodes:
            node.kill()
        raise
    yield nodes, front
    front.stop()
    for node in nodes:
        if node.proc is not None and node.proc.poll() is None:
            node.stop()        # a survivor must still exit cleanly


def _ask(front: Front, source: str, name: str, *, tcp: bool = False,
         timeout: float = 2.0) -> dns.message.Message:
    q = dns.message.make_query(name, "A", use_edns=0, payload=1232)
    addr, port = front.dnsdist.address, front.dnsdist.port
    if tcp:
        return dns.query.tcp(q, addr, port=port, timeout=timeout, source=source)
    return dns.query.udp(q, addr, port=port, timeout=timeout, source=source)


def _ede(msg: dns.message.Message) -> list[int]:
    return [o.code for o in msg.options if isinstance(o, dns.edns.EDEOption)]


def _queries_by_tier(node: SafeGateProcess) -> dict[str, float]:
    """safegate_dns_queries_total summed per tier label."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(node.metrics_text()):
        for s in family.samples:
            if s.name == "safegate_dns_queries_total":
                tier = s.labels.get("tier", "")
                out[tier] = out.get(tier, 0.0) + s.value
    return out


def _assert_subscriber_policies(front: Front) -> None:
    for tcp in (False, True):
        r = _ask(front, KIDS_SUBSCRIBER, "gamble.test", tcp=tcp)       # chose filtering
        assert (r.rcode(), _ede(r)) == (dns.rcode.NXDOMAIN, [EDE_FILTERED])
        r = _ask(front, ISP_CUSTOMER, "gamble.test", tcp=tcp)          # adults: allowed
        assert r.rcode() == dns.rcode.NOERROR
        assert [rr.address for rr in r.answer[0]] == [ub.BLOCKED_TARGET_A]
        r = _ask(front, ISP_CUSTOMER, "adult.example", tcp=tcp)
        assert (r.rcode(), _ede(r)) == (dns.rcode.NXDOMAIN, [EDE_BLOCKED])


def test_policy_through_dnsdist_and_failover_when_a_node_is_killed(
        cluster: tuple[list[SafeGateProcess], Front]) -> None:
    nodes, front = cluster
    _assert_subscriber_policies(front)

    # dnsdist's health probes reached every node and were answered there, by the front end's
    # allowlist-only tier (no upstream involved): that is why every node is "up".
    for node in nodes:
        assert _queries_by_tier(node).get("frontend", 0) >= 1, node.metrics_text()

    # Kill the node that has been answering (leastOutstanding: the busiest so far).
    counts = {name: int(s["queries"]) for name, s in front.servers().items()}
    victim_name = max(counts, key=lambda k: counts[k])
    victim = nodes[int(victim_name.rsplit("-", 1)[1]) - 1]
    survivors = [n for n in nodes if n is not victim]
    before = sum(_queries_by_tier(n).get("adults", 0) for n in survivors)
    assert victim.proc is not None
    victim.proc.kill()
    victim.proc.wait(5)

    answered, failed = 0, 0
    for _ in range(40):
        try:
            r = _ask(front, ISP_CUSTOMER, ub.ALLOWED, timeout=0.3)
            assert r.rcode() == dns.rcode.NOERROR and r.answer, r
            answered += 1
        except dns.exception.Timeout:
            failed += 1
    assert failed <= MAX_LOST_AFTER_KILL, (failed, front.states())
    took = front.wait_states({victim_name: "down"}, timeout=MAX_SECONDS_TO_DOWN)
    assert took <= MAX_SECONDS_TO_DOWN
    assert [s for n, s in front.states().items() if n != victim_name] == ["up", "up"]

    # Marked down: nothing more is lost, and every subscriber keeps their policy.
    for _ in range(20):
        assert _ask(front, ISP_CUSTOMER, ub.ALLOWED, timeout=1.0).answer
    answered += 20
    _assert_subscriber_policies(front)
    answered += 4              # the ISP customer's queries in _assert_subscriber_policies
    after = sum(_queries_by_tier(n).get("adults", 0) for n in survivors)
    # Every answer came from a survivor (a query that timed out here may still have been
    # answered late by one, hence the upper bound).
    assert answered <= after - before <= answered + failed


def test_the_shipped_dnsdist_config_checks_and_has_no_packet_cache() -> None:
    out = subprocess.run([DNSDIST, "--check-config", "-C", str(SHIPPED_CONF)],
                         capture_output=True, text=True, timeout=20, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "OK!" in out.stdout
    code = [line.split("--", 1)[0] for line in SHIPPED_CONF.read_text().splitlines()]
    text = "\n".join(code)
    # A packet cache would serve one subscriber's answer to all (see the comment in the file).
    assert not re.search(r"setCache|newPacketCache", text)
    assert "useProxyProtocol = true" in text
    assert "setServerPolicy(leastOutstanding)" in text
