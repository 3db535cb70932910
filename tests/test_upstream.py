"""The forwarder: in-flight dedup, failover, benching, DO/CD forwarding, spoof resistance.

The upstream here is a tiny scripted UDP server on loopback: these behaviours (counting
queries, replying late or wrongly) cannot be provoked from a real resolver on demand.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import dns.flags
import dns.message
import dns.rdatatype
import dns.rrset
import pytest

from gateway.dns.upstream import Forwarder, ForwarderConfig, Upstream, UpstreamError

QUESTION = dns.message.make_query("www.example.test", "A").to_wire()[12:]


class Scripted(asyncio.DatagramProtocol):
    """Answers each query after `delay`, via `respond(query) -> list of wire replies`."""

    def __init__(self, respond: Callable[[dns.message.Message], list[bytes]],
                 delay: float = 0.0) -> None:
        self.respond = respond
        self.delay = delay
        self.queries: list[dns.message.Message] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        msg = dns.message.from_wire(data)
        self.queries.append(msg)
        asyncio.get_running_loop().call_later(self.delay, self._send, msg, addr)

    def _send(self, msg: dns.message.Message, addr: tuple[str, int]) -> None:
        assert self.transport is not None
        for reply in self.respond(msg):
            self.transport.sendto(reply, addr)


def answer(msg: dns.message.Message, address: str = "192.0.2.1") -> bytes:
    r = dns.message.make_response(msg)
    r.answer.append(dns.rrset.from_text(msg.question[0].name, 60, "IN", "A", address))
    return r.to_wire()


async def serve(proto: Scripted) -> tuple[asyncio.DatagramTransport, int]:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(lambda: proto,
                                                       local_addr=("127.0.0.1", 0))
    return transport, transport.get_extra_info("sockname")[1]  # type: ignore[return-value]


async def test_identical_queries_in_flight_share_one_upstream_query() -> None:
    proto = Scripted(lambda m: [answer(m)], delay=0.2)
    transport, port = await serve(proto)
    try:
        fwd = Forwarder([Upstream("127.0.0.1", port)], ForwarderConfig())
        replies = await asyncio.gather(*(fwd.resolve(QUESTION, do=False, cd=False)
                                         for _ in range(20)))
        assert len(proto.queries) == 1
        assert len({r[2:] for r in replies}) == 1
        # a different DO bit is a different question
        await fwd.resolve(QUESTION, do=True, cd=False)
        assert len(proto.queries) == 2
    finally:
        transport.close()


async def test_do_and_cd_are_forwarded_and_dnssec_records_come_back() -> None:
    def respond(m: dns.message.Message) -> list[bytes]:
        r = dns.message.make_response(m)
        r.answer.append(dns.rrset.from_text(m.question[0].name, 60, "IN", "A", "192.0.2.1"))
        r.answer.append(dns.rrset.from_text(
            m.question[0].name, 60, "IN", "RRSIG",
            "A 13 3 60 20301231000000 20200101000000 12345 example.test. "
            "dGVzdHNpZ25hdHVyZXRlc3RzaWduYXR1cmU="))
        return [r.to_wire()]

    proto = Scripted(respond)
    transport, port = await serve(proto)
    try:
        fwd = Forwarder([Upstream("127.0.0.1", port)], ForwarderConfig())
        raw = await fwd.resolve(QUESTION, do=True, cd=True)
        sent = proto.queries[0]
        assert sent.ednsflags & dns.flags.DO
        assert sent.flags & dns.flags.CD and sent.flags & dns.flags.RD
        assert sent.payload == 1232
        got = dns.message.from_wire(raw)
        assert {rr.rdtype for rr in got.answer} == {dns.rdatatype.A, dns.rdatatype.RRSIG}
    finally:
        transport.close()


async def test_replies_with_wrong_id_or_question_are_ignored() -> None:
    def respond(m: dns.message.Message) -> list[bytes]:
        wrong_id = dns.message.make_response(m)
        wrong_id.id = (m.id + 1) & 0xFFFF
        other = dns.message.make_response(dns.message.make_query("evil.test", "A"))
        other.id = m.id
        return [wrong_id.to_wire(), other.to_wire(), answer(m, "192.0.2.99")]

    proto = Scripted(respond)
    transport, port = await serve(proto)
    try:
        fwd = Forwarder([Upstream("127.0.0.1", port)], ForwarderConfig())
        got = dns.message.from_wire(await fwd.resolve(QUESTION, do=False, cd=False))
        assert got.answer[0][0].address == "192.0.2.99"
    finally:
        transport.close()


async def test_failover_and_benching_of_a_silent_upstream() -> None:
    silent = Scripted(lambda m: [])
    good = Scripted(lambda m: [answer(m)])
    t1, silent_port = await serve(silent)
    t2, good_port = await serve(good)
    now = [1000.0]
    try:
        fwd = Forwarder([Upstream("127.0.0.1", silent_port), Upstream("127.0.0.1", good_port)],
                        ForwarderConfig(attempt_timeout=0.1, fail_threshold=2,
                                        bench_seconds=30), clock=lambda: now[0])
        for i in range(2):
            q = dns.message.make_query(f"n{i}.example.test", "A").to_wire()[12:]
            await fwd.resolve(q, do=False, cd=False)
        assert len(silent.queries) == 2 and len(good.queries) == 2
        # benched: the silent upstream is not asked again for 30 s
        q = dns.message.make_query("n9.example.test", "A").to_wire()[12:]
        await fwd.resolve(q, do=False, cd=False)
        assert len(silent.queries) == 2
        now[0] += 31
        await fwd.resolve(dns.message.make_query("n10.example.test", "A").to_wire()[12:],
                          do=False, cd=False)
        assert len(silent.queries) == 3
    finally:
        t1.close()
        t2.close()


async def test_all_upstreams_failing_raises() -> None:
    silent = Scripted(lambda m: [])
    t1, port = await serve(silent)
    try:
        fwd = Forwarder([Upstream("127.0.0.1", port)],
                        ForwarderConfig(attempt_timeout=0.05, query_timeout=0.5))
        with pytest.raises(UpstreamError):
            await fwd.resolve(QUESTION, do=False, cd=False)
    finally:
        t1.close()


async def test_servfail_tries_the_next_upstream_then_relays_it() -> None:
    def servfail(m: dns.message.Message) -> list[bytes]:
        r = dns.message.make_response(m)
        r.set_rcode(2)
        return [r.to_wire()]

    bad = Scripted(servfail)
    good = Scripted(lambda m: [answer(m)])
    t1, bad_port = await serve(bad)
    t2, good_port = await serve(good)
    try:
        fwd = Forwarder([Upstream("127.0.0.1", bad_port), Upstream("127.0.0.1", good_port)],
                        ForwarderConfig())
        got = dns.message.from_wire(await fwd.resolve(QUESTION, do=False, cd=False))
        assert got.rcode() == 0 and got.answer
        only_bad = Forwarder([Upstream("127.0.0.1", bad_port)], ForwarderConfig())
        got = dns.message.from_wire(await only_bad.resolve(QUESTION, do=False, cd=False))
        assert got.rcode() == 2
    finally:
        t1.close()
        t2.close()


async def test_a_benched_upstream_is_logged_once_per_outage(caplog: pytest.LogCaptureFixture
                                                            ) -> None:
    """With every upstream down, the benched one is still tried (last resort) and fails on
    every query; the log says so once, not once per query (a Pi's journal would flood)."""
    silent = Scripted(lambda m: [])
    t1, port = await serve(silent)
    now = [1000.0]
    try:
        fwd = Forwarder([Upstream("127.0.0.1", port)],
                        ForwarderConfig(attempt_timeout=0.02, query_timeout=0.05,
                                        fail_threshold=2, bench_seconds=30),
                        clock=lambda: now[0])
        with caplog.at_level("WARNING", logger="gateway.dns.upstream"):
            for i in range(6):
                q = dns.message.make_query(f"d{i}.example.test", "A").to_wire()[12:]
                with pytest.raises(UpstreamError):
                    await fwd.resolve(q, do=False, cd=False)
            benched = [r for r in caplog.records if "benched" in r.getMessage()]
            assert len(silent.queries) == 6 and len(benched) == 1
            now[0] += 31       # the bench ran out: a new outage is logged again
            with pytest.raises(UpstreamError):
                await fwd.resolve(QUESTION, do=False, cd=False)
            assert len([r for r in caplog.records if "benched" in r.getMessage()]) == 2
    finally:
        t1.close()
