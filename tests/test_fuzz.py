"""Mutation fuzzing (issue #10): the wire parser in-process, then a real gateway process.

Deterministic: every case comes from SAFEGATE_FUZZ_SEED (printed; default fixed, so CI runs
the same cases every time) and its index. SAFEGATE_FUZZ_COUNT sets how many datagrams the
gateway gets (TCP connections: a sixth of that; in-process parser cases: four times).
A failure names `SEED:KIND:INDEX`; `python bench/fuzz.py --replay SEED:KIND:INDEX` rebuilds
that one packet, and bench/fuzz.py runs the same mutators for minutes or hours.
"""

from __future__ import annotations

import contextlib
import os
import random
import struct
import time
from typing import Any

import dns.edns
import dns.message
import dns.rcode
import dns.rrset
import pytest

from gateway.dns import cache, proxyproto, wire
from tests.support import fuzzing
from tests.support import unbound as ub
from tests.support.procs import SafeGateProcess

SEED = int(os.environ.get("SAFEGATE_FUZZ_SEED", "20261204"))
COUNT = int(os.environ.get("SAFEGATE_FUZZ_COUNT", "3000"))
FRONTEND = "127.0.0.9"  # a trusted front end (PROXY v2 on); every other source is not one

POLICY = """\
tiers:
  kids: {block: [adult], answer: nxdomain}
networks:
  - {name: loopback, cidrs: ["127.0.0.0/8", "::1/128"], tier: kids}
"""
LISTS_YAML = "categories:\n  adult:\n    - {path: adult.txt, format: domains}\n"


def _seed_banner() -> str:
    return f"fuzz seed {SEED} (SAFEGATE_FUZZ_SEED), count {COUNT} (SAFEGATE_FUZZ_COUNT)"


def _parses_and_echoes(reply: bytes, qid: int, what: str, case: fuzzing.Case) -> None:
    msg = fuzzing.parse_reply(reply)
    assert msg.id == qid and msg.flags & 0x8000, f"{what}: {case.describe(SEED)}"


def test_wire_parser_only_raises_documented_errors() -> None:
    """parse_query never raises; read_name/skip_name raise only WireError, the PROXY v2 reader
    only ProxyHeaderError; every error reply built from a parsed query is a valid message."""
    print(_seed_banner())
    rng = random.Random(f"{SEED}:wire-extra")
    for i in range(COUNT * 4):
        case = fuzzing.wire_case(SEED, i)
        pkt = case.payload
        try:
            q = wire.parse_query(pkt)
            formerr = wire.formerr_from_header(pkt)
        except Exception as exc:
            raise AssertionError(f"{exc!r} from {case.describe(SEED)}") from exc
        if fuzzing.is_query(pkt):
            assert formerr is not None and q is not None, case.describe(SEED)
            _parses_and_echoes(formerr, q.id, "formerr_from_header", case)
        else:
            assert formerr is None and q is None, case.describe(SEED)
            continue
        _parses_and_echoes(wire.error_reply(q, q.error or wire.SERVFAIL), q.id, "error_reply",
                           case)
        if q.question:
            _parses_and_echoes(wire.truncated_reply(q, 0), q.id, "truncated_reply", case)
        for option in (q.ecs, fuzzing.ecs_garbage(rng)):
            if option is not None and wire.ecs_address(option) is not None:
                wire.ecs_truncate(option)
        for start in (12, rng.randrange(len(pkt) + 1)):
            for walk in (wire.read_name, wire.skip_name):
                with contextlib.suppress(wire.WireError):
                    walk(pkt, start)
        with contextlib.suppress(proxyproto.ProxyHeaderError):
            proxyproto.parse(fuzzing.proxy_header(rng, udp=bool(i & 1)) + pkt)


def _upstream_replies() -> list[bytes]:
    """What unbound sends for the corpus: answers, CNAMEs, negative answers with SOA."""
    out = []
    soa = dns.rrset.from_text("test.", 3600, "IN", "SOA",
                              "ns.test. hostmaster.test. 1 3600 600 86400 60")
    for _label, query in fuzzing.CORPUS[::3]:
        msg = dns.message.from_wire(query)
        resp = dns.message.make_response(msg)
        qname = msg.question[0].name
        kind = len(out) % 4
        if kind == 0:
            resp.answer.append(dns.rrset.from_text(qname, 300, "IN", "A", "192.0.2.10"))
        elif kind == 1:
            resp.answer.append(dns.rrset.from_text(qname, 300, "IN", "CNAME", "allowed.test."))
            resp.answer.append(dns.rrset.from_text("allowed.test.", 300, "IN", "A", "192.0.2.1"))
        elif kind == 2:
            resp.set_rcode(dns.rcode.NXDOMAIN)
            resp.authority.append(soa)
        else:
            resp.answer.append(dns.rrset.from_text(qname, 300, "IN", "TXT", '"x"'))
        out.append(resp.to_wire())
    return out


def test_upstream_reply_reader_only_raises_what_its_callers_catch() -> None:
    """A hostile or broken upstream: entry_from_reply (cache fill and one-off relay) raises
    only what chain.py catches around it, and a built entry renders a reply without error.
    The header and question stay intact: the forwarder drops replies that do not match."""
    print(_seed_banner())
    replies = _upstream_replies()
    cfg = cache.CacheConfig()
    for i in range(COUNT * 2):
        rng = fuzzing.case_rng(SEED, "upstream", i)
        raw = rng.choice(replies)
        head = fuzzing.question_end(raw)
        body, names = fuzzing.mutate(rng, b"\0" * 12 + raw[head:])
        reply = raw[:head] + body[12:]
        if rng.random() < 0.3:
            reply = raw[:head] + reply[head:][:rng.randrange(len(reply) - head + 1)]
        for relay in (False, True):
            try:
                entry = cache.entry_from_reply(reply, cfg, 100.0, relay=relay)
            except (wire.WireError, IndexError, ValueError):
                continue
            except Exception as exc:
                raise AssertionError(f"{exc!r} from upstream case {SEED}:upstream:{i} via "
                                     f"{'+'.join(names)}: {reply.hex()}") from exc
            if entry is not None:
                q = wire.parse_query(struct.pack(">6H", 1, wire.RD, 1, 0, 0, 0) + raw[12:head])
                assert q is not None and not q.error
                entry.reply(q, 150.0, 512)
                entry.reply(q, 150.0, 65535, stale=True)


# ---------------------------------------------------------------- a real gateway


@pytest.fixture
def fuzz_gateway(unbound: ub.UnboundServer, safegate_factory: Any) -> SafeGateProcess:
    # RRL off: every reply to this one loopback source is checked; RRL would (rightly) drop
    # most of them. A trusted front end other than the fuzzer's address: PROXY v2 headers
    # from 127.0.0.1 are plain bytes, from FRONTEND they are read.
    return safegate_factory(  # type: ignore[no-any-return]
        upstream_port=unbound.port, policies={"p.yaml": POLICY},
        lists={"adult.txt": fuzzing.BLOCKED_LIST}, lists_yaml=LISTS_YAML, log_level="debug",
        extra={"dns": {"trusted_frontends": [f"{FRONTEND}/32"], "proxy_protocol": True},
               "limits": {"rrl": {"enabled": False}}})


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
    # The fuzz really reached the gateway: most datagrams that are queries were answered.
    assert udp_stats.answered > COUNT // 2, udp_stats

    for tcp in (False, True):
        r = gw.query(ub.ALLOWED, "A", tcp=tcp, payload=1232)
        assert r.rcode() == dns.rcode.NOERROR
        assert [rr.address for rr in r.answer[0]] == [ub.ALLOWED_A]
        blocked = gw.query("sub.adult-site.test", "A", tcp=tcp, payload=1232)
        assert blocked.rcode() == dns.rcode.NXDOMAIN
        assert [o.code for o in blocked.options if isinstance(o, dns.edns.EDEOption)] == [15]
    assert gw.http_get("/healthz")[0] == 200
