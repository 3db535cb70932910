"""Mutation fuzzing (issue #10): the wire parser in-process, then a real gateway process.

Deterministic: every case comes from SAFEGATE_FUZZ_SEED (printed; default fixed, so CI runs
the same cases every time) and its index. SAFEGATE_FUZZ_COUNT sets how many datagrams the
gateway gets (TCP connections: a sixth of that; in-process parser cases: four times).
A failure names `SEED:KIND:INDEX`; `python bench/fuzz.py --replay SEED:KIND:INDEX` rebuilds
that one packet, and bench/fuzz.py runs the same mutators for minutes or hours.
"""

from __future__ import annotations

import os
import random
import time
from typing import Any

import dns.edns
import dns.rcode
import pytest

from tests.support import fuzzing
from tests.support import unbound as ub
from tests.support.procs import SafeGateProcess

SEED = int(os.environ.get("SAFEGATE_FUZZ_SEED", "20261204"))
COUNT = int(os.environ.get("SAFEGATE_FUZZ_COUNT", "3000"))
FRONTEND = fuzzing.FRONTEND


def _seed_banner() -> str:
    return f"fuzz seed {SEED} (SAFEGATE_FUZZ_SEED), count {COUNT} (SAFEGATE_FUZZ_COUNT)"


def test_wire_parser_only_raises_documented_errors() -> None:
    """parse_query never raises; read_name/skip_name raise only WireError, the PROXY v2 reader
    only ProxyHeaderError; every error reply built from a parsed query is a valid message."""
    print(_seed_banner())
    rng = random.Random(f"{SEED}:wire-extra")
    for i in range(COUNT * 4):
        case = fuzzing.wire_case(SEED, i)
        problems = fuzzing.check_wire(case, rng)
        assert not problems, f"{case.describe(SEED)}\n" + "\n".join(problems)


def test_upstream_reply_reader_only_raises_what_its_callers_catch() -> None:
    """A hostile or broken upstream: entry_from_reply (cache fill and one-off relay) raises
    only what chain.py catches around it, and a built entry renders a reply without error."""
    print(_seed_banner())
    for i in range(COUNT * 2):
        case, question = fuzzing.upstream_case(SEED, i)
        problems = fuzzing.check_upstream(case, question)
        assert not problems, f"{case.describe(SEED)}\n" + "\n".join(problems)


# ---------------------------------------------------------------- a real gateway


@pytest.fixture
def fuzz_gateway(unbound: ub.UnboundServer, safegate_factory: Any) -> SafeGateProcess:
    return safegate_factory(  # type: ignore[no-any-return]
        **fuzzing.gateway_config(unbound.port), log_level="debug")


@pytest.mark.integration
def test_gateway_survives_mutated_udp_and_tcp(fuzz_gateway: SafeGateProcess) -> None:
    """Thousands of mutated datagrams and TCP streams at a real gateway: no traceback, no
    reply to a non-query, every reply a valid response with the query's ID, controls answered;
    afterwards normal queries over UDP and TCP and /healthz still work."""
    print(_seed_banner())
    gw = fuzz_gateway
    target = ("127.0.0.1", gw.dns_port)
    t0 = time.monotonic()
    udp_cases = [fuzzing.udp_case(SEED, i, FRONTEND) for i in range(COUNT)]
    udp_stats, findings = fuzzing.run_udp(udp_cases, target, SEED)
    tcp_cases = [fuzzing.tcp_case(SEED, i, FRONTEND) for i in range(max(COUNT // 6, 1))]
    tcp_stats, tcp_findings = fuzzing.run_tcp(tcp_cases, target, SEED)
    findings += tcp_findings
    print(f"fuzzed in {time.monotonic() - t0:.1f}s: udp {udp_stats}\ntcp {tcp_stats}")

    assert gw.running(), f"{_seed_banner()}: the gateway died\n{gw.stderr_text()[-5000:]}"
    problems = fuzzing.gateway_log_problems(gw.stderr_text())
    assert not problems, f"{_seed_banner()}: the gateway logged:\n" + "\n\n".join(problems[:5])
    assert not findings, f"{_seed_banner()}: {len(findings)} findings, first 10:\n" + \
        "\n".join(str(f) for f in findings[:10])
    # The fuzz reached the query path (not just a closed port): the controls were answered
    # (checked above) and so was a good share of the rest (today ~90%).
    assert udp_stats.answered > COUNT // 4, udp_stats

    for tcp in (False, True):
        r = gw.query(ub.ALLOWED, "A", tcp=tcp, payload=1232)
        assert r.rcode() == dns.rcode.NOERROR
        assert [rr.address for rr in r.answer[0]] == [ub.ALLOWED_A]
        blocked = gw.query("sub.adult-site.test", "A", tcp=tcp, payload=1232)
        assert blocked.rcode() == dns.rcode.NXDOMAIN
        assert [o.code for o in blocked.options if isinstance(o, dns.edns.EDEOption)] == [15]
    assert gw.http_get("/healthz")[0] == 200
