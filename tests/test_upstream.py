"""The forwarder: in-flight dedup, failover, benching, DO/CD forwarding, spoof resistance.

The upstream here is a tiny scripted UDP server on loopback: these behaviours (counting
queries, replying late or wrongly) cannot be provoked from a real resolver on demand.
"""

from __future__ import annotations

import asyncio
import ssl
import struct
from collections.abc import Callable
from pathlib import Path

import dns.edns
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from gateway.config.checks import check_files
from gateway.config.dns import ForwarderConfig
from gateway.config.gateway import load_config
from gateway.config.limits import UpstreamLimits
from gateway.config.upstreams import UpstreamSpec, parse_upstream
from gateway.dns.cache import cache_key, entry_from_reply
from gateway.dns.tasks import Tasks
from gateway.dns.upstream import Forwarder
from gateway.dns.upstream_base import (
    Entropy,
    Upstream,
    UpstreamBusy,
    UpstreamError,
    UpstreamObserver,
    upstreams_from,
)
from gateway.errors import ConfigError
from tests.support.builders import make_profile, make_resolver
from tests.support.wait import async_wait_for

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


# ---------------------------------------------------------------- sockets, 0x20, in-flight caps


class Recording(Scripted):
    """Scripted, and remembers each query's raw bytes and source port."""

    def __init__(self, respond: Callable[[dns.message.Message], list[bytes]],
                 delay: float = 0.0) -> None:
        super().__init__(respond, delay)
        self.raw: list[bytes] = []
        self.ports: list[int] = []

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.raw.append(data)
        self.ports.append(addr[1])
        super().datagram_received(data, addr)


def question(name: str) -> bytes:
    return dns.message.make_query(name, "A").to_wire()[12:]  # type: ignore[no-any-return]


async def test_concurrent_misses_share_a_bounded_socket_pool() -> None:
    """Issue #10 item 1: thousands of concurrent misses must not each open a socket (and leak
    all but one); afterwards only the pool stays open."""
    proto = Recording(lambda m: [answer(m)], delay=0.05)
    transport, port = await serve(proto)
    try:
        limits = UpstreamLimits(inflight=5000, inflight_per_zone=5000, sockets=4, socket_uses=8)
        # (the scripted server's receive buffer drops part of such a burst: those time out)
        fwd = Forwarder([Upstream("127.0.0.1", port)],
                        ForwarderConfig(attempt_timeout=5.0, query_timeout=10.0,
                                        fail_threshold=10**6),
                        limits=limits)
        peak = 0

        async def one(i: int) -> bytes:
            nonlocal peak
            peak = max(peak, fwd.open_sockets())
            return await fwd.resolve(question(f"n{i}.example.test"), do=False, cd=False)

        replies = await asyncio.gather(*(one(i) for i in range(2000)), return_exceptions=True)
        assert any(isinstance(r, bytes) for r in replies)
        # in flight: at most the pool plus one retired socket per pending query
        assert peak <= 4 + 2000
        assert fwd.open_sockets() <= 4
        # every socket served at most socket_uses queries
        counts = {p: proto.ports.count(p) for p in set(proto.ports)}
        assert max(counts.values()) <= 8
        fwd.close()
        assert fwd.open_sockets() == 0
    finally:
        transport.close()


async def test_sequential_queries_rotate_random_source_ports() -> None:
    proto = Recording(lambda m: [answer(m)])
    transport, port = await serve(proto)
    try:
        fwd = Forwarder([Upstream("127.0.0.1", port)], ForwarderConfig(),
                        limits=UpstreamLimits(sockets=8, socket_uses=16))
        for i in range(320):
            await fwd.resolve(question(f"s{i}.example.test"), do=False, cd=False)
        counts = {p: proto.ports.count(p) for p in set(proto.ports)}
        assert max(counts.values()) <= 16
        assert len(counts) >= 320 // 16
        assert fwd.open_sockets() <= 8
        fwd.close()
    finally:
        transport.close()


class Observed(UpstreamObserver):
    def __init__(self) -> None:
        self.mismatches: list[tuple[str, str]] = []
        self.drops: list[str] = []
        self.errors: list[tuple[str, str]] = []

    def mismatch(self, upstream: str, reason: str) -> None:
        self.mismatches.append((upstream, reason))

    def dropped(self, reason: str) -> None:
        self.drops.append(reason)

    def error(self, upstream: str, reason: str) -> None:
        self.errors.append((upstream, reason))


async def test_0x20_sends_mixed_case_and_ignores_a_lowercased_echo() -> None:
    name = "www.mixed-case-example.test"
    echo = Recording(lambda m: [answer(m)])
    t1, echo_port = await serve(echo)

    def lowercased(m: dns.message.Message) -> list[bytes]:
        wire_reply = bytearray(answer(m))
        n = len(m.question[0].name.to_wire())
        wire_reply[12:12 + n] = bytes(wire_reply[12:12 + n]).lower()
        return [bytes(wire_reply)]

    spoofy = Recording(lowercased)
    t2, spoofy_port = await serve(spoofy)
    try:
        seen = Observed()
        fwd = Forwarder([Upstream("127.0.0.1", echo_port)], ForwarderConfig(qname_0x20=True),
                        seen)
        for i in range(8):
            got = dns.message.from_wire(await fwd.resolve(question(f"{i}{name}"), do=False,
                                                          cd=False))
            assert got.answer[0][0].address == "192.0.2.1"
        sent = [dns.message.from_wire(r).question[0].name.to_text() for r in echo.raw]
        assert all(s.lower() == f"{i}{name}." for i, s in enumerate(sent))
        assert any(s != s.lower() for s in sent)   # 8 names x 23 letters: never all lower
        assert seen.mismatches == []

        fwd = Forwarder([Upstream("127.0.0.1", spoofy_port)],
                        ForwarderConfig(qname_0x20=True, attempt_timeout=0.2,
                                        query_timeout=0.3), seen)
        q = question(name)
        with pytest.raises(UpstreamError):
            await fwd.resolve(q, do=False, cd=False)
        if dns.message.from_wire(spoofy.raw[0]).question[0].name.to_text() != name + ".":
            assert seen.mismatches == [(f"127.0.0.1:{spoofy_port}", "case")]
        # 0x20 off (the default): case is not checked, the same server's reply is used
        fwd = Forwarder([Upstream("127.0.0.1", spoofy_port)], ForwarderConfig())
        assert (await fwd.resolve(q, do=False, cd=False))[3] & 0xF == 0
    finally:
        t1.close()
        t2.close()


def patient_forwarder(port: int, limits: UpstreamLimits) -> tuple[Forwarder, Observed]:
    """A forwarder to one upstream that waits long (5 s) and reports what it dropped: the
    in-flight tests keep questions waiting at a silent upstream."""
    seen = Observed()
    return Forwarder([Upstream("127.0.0.1", port)],
                     ForwarderConfig(attempt_timeout=5, query_timeout=5), seen,
                     limits=limits), seen


async def test_inflight_caps_answer_busy_at_once() -> None:
    silent = Recording(lambda m: [])
    transport, port = await serve(silent)
    try:
        fwd, seen = patient_forwarder(port, UpstreamLimits(inflight=6, inflight_per_zone=4))
        flood = [asyncio.ensure_future(fwd.resolve(question(f"r{i}.flood.test"), do=False,
                                                   cd=False)) for i in range(10)]
        await asyncio.sleep(0)
        busy = [f for f in flood if f.done()]
        assert len(busy) == 6 and all(isinstance(f.exception(), UpstreamBusy) for f in busy)
        assert seen.drops == ["zone"] * 6
        other = [asyncio.ensure_future(fwd.resolve(question(f"o{i}.other.test"), do=False,
                                                   cd=False)) for i in range(3)]
        await asyncio.sleep(0)
        assert [f.done() for f in other] == [False, False, True]
        assert seen.drops[-1] == "inflight"
        exc = other[2].exception()
        assert isinstance(exc, UpstreamBusy) and exc.ede[4:6] == b"\x00\x0e"   # EDE 14
        # a question already in flight is shared, never refused
        again = asyncio.ensure_future(fwd.resolve(question("r0.flood.test"), do=False, cd=False))
        await asyncio.sleep(0)
        assert not again.done()
        for f in [*flood, *other, again]:
            f.cancel()
        await asyncio.gather(*flood, *other, again, return_exceptions=True)
        assert fwd._zones == {} and fwd._inflight == {}
        fwd.close()
    finally:
        transport.close()


async def test_the_zone_share_is_the_registrable_domain_however_deep_the_flood() -> None:
    """`<r>.<r>.flood.test` is flood.test's flood like `<r>.flood.test` (the parent zone, the
    name minus one label, was unique per query and never filled); two sites under one public
    suffix (co.uk) are two zones."""
    silent = Recording(lambda m: [])
    transport, port = await serve(silent)
    try:
        fwd, seen = patient_forwarder(port, UpstreamLimits(inflight=100, inflight_per_zone=4))
        names = [f"r{i}.q{i}.flood.test" if i % 2 else f"r{i}.flood.test" for i in range(10)]
        names += [f"w{i}.a{i}.victim.co.uk" for i in range(6)]
        names += ["www.other.co.uk"]
        flood = [asyncio.ensure_future(fwd.resolve(question(n), do=False, cd=False))
                 for n in names]
        await asyncio.sleep(0)
        busy = [n for n, f in zip(names, flood, strict=True) if f.done()]
        assert busy == names[4:10] + names[14:16]   # flood.test: 4 sent; victim.co.uk: 4
        assert seen.drops == ["zone"] * 8
        assert not flood[-1].done()                 # other.co.uk has its own share
        assert fwd._zones == {b"flood.test": 4, b"victim.co.uk": 4, b"other.co.uk": 1}
        for f in flood:
            f.cancel()
        await asyncio.gather(*flood, return_exceptions=True)
        assert fwd._zones == {} and fwd._inflight == {}
        fwd.close()
    finally:
        transport.close()


def test_entropy_hands_out_every_urandom_byte_once_and_refills() -> None:
    """Query IDs come from os.urandom read 4 KiB at a time: 2,048 IDs per read, never a byte
    twice, and `below` stays inside its range (rejection sampling, no modulo bias)."""
    e = Entropy()
    first = [e.bits16() for _ in range(2048)]
    assert e._pos == 4096
    assert bytes(b for v in first for b in (v >> 8, v & 0xFF)) == e._buf
    buf = e._buf
    e.bits16()
    assert e._buf is not buf and e._pos == 2        # refilled from os.urandom
    picks = [e.below(3) for _ in range(3000)]
    assert set(picks) == {0, 1, 2}
    assert all(0 <= e.below(65_536) < 65_536 for _ in range(100))


async def test_a_refused_question_is_answered_at_once_without_a_coroutine() -> None:
    """Over the zone share, the query path answers SERVFAIL + EDE 14 (or a stale answer) from
    handle() itself: before, every refused flood query cost a task and a raised exception."""
    silent = Recording(lambda m: [])
    transport, port = await serve(silent)
    try:
        fwd, seen = patient_forwarder(port, UpstreamLimits(inflight=100, inflight_per_zone=2))
        r = make_resolver(make_profile(), forwarder=fwd)
        tasks = Tasks()
        for i in range(2):
            pending = r.handle(dns.message.make_query(f"r{i}.flood.test", "A").to_wire(),
                               "127.0.0.1", "udp")
            assert pending is not None and not isinstance(pending, bytes)
            tasks.spawn(pending)  # type: ignore[arg-type]
        await async_wait_for(lambda: len(silent.raw) == 2, 10,
                             what="both questions at the silent upstream")
        q = dns.message.make_query("x.y.flood.test", "A", use_edns=0)
        out = r.handle(q.to_wire(), "127.0.0.1", "udp")
        assert isinstance(out, bytes), "expected the refusal at once"
        reply = dns.message.from_wire(out)
        assert reply.id == q.id and reply.rcode() == dns.rcode.SERVFAIL
        assert [(o.code, o.text) for o in reply.options if isinstance(o, dns.edns.EDEOption)] \
            == [(14, "too many upstream queries in flight")]
        # an answer the cache still has, expired, is served stale instead (RFC 8767)
        old = dns.message.make_response(dns.message.make_query("old.flood.test", "A"))
        old.answer.append(dns.rrset.from_text("old.flood.test.", 60, "IN", "A", "192.0.2.9"))
        entry = entry_from_reply(old.to_wire(), r.cache.cfg, r.clock() - 120)
        assert entry is not None
        r.cache.put(cache_key(b"old.flood.test", 1, 1, 0), entry)
        out = r.handle(dns.message.make_query("old.flood.test", "A").to_wire(), "127.0.0.1",
                       "udp")
        assert isinstance(out, bytes)
        stale = dns.message.from_wire(out)
        assert stale.rcode() == dns.rcode.NOERROR and stale.answer[0].ttl == 30
        assert seen.drops == ["zone", "zone"] and len(silent.raw) == 2   # nothing more sent
        assert r.stats.queries[("servfail", "", "tier", "udp")] == 1
        assert r.stats.queries[("stale", "", "tier", "udp")] == 1
        await tasks.cancel_all()
        fwd.close()
    finally:
        transport.close()


# ---------------------------------------------------------------- dns.upstreams entries


@pytest.mark.parametrize(("text", "spec"), [
    ("127.0.0.1", UpstreamSpec("127.0.0.1", 53)),
    ("udp://[::1]:5353", UpstreamSpec("::1", 5353)),
    ("tls://127.0.0.1", UpstreamSpec("127.0.0.1", 853, "tls")),
    ("tls://127.0.0.1:8853#Dot.Test.", UpstreamSpec("127.0.0.1", 8853, "tls", "dot.test")),
    ("TLS://[::1]#dot.test", UpstreamSpec("::1", 853, "tls", "dot.test")),
    # issue #14.3: DNS over HTTPS (this used to be "bad port '//1.1.1.1/dns-query'")
    ("https://1.1.1.1/dns-query", UpstreamSpec("1.1.1.1", 443, "https", None, "/dns-query")),
    ("https://Dns.Quad9.net./dns-query",
     UpstreamSpec("dns.quad9.net", 443, "https", None, "/dns-query")),
    ("https://[::1]:8443", UpstreamSpec("::1", 8443, "https", None, "/dns-query")),
    ("https://9.9.9.9/q/x#dns.quad9.net",
     UpstreamSpec("9.9.9.9", 443, "https", "dns.quad9.net", "/q/x")),
])
def test_upstream_entries_parse(text: str, spec: UpstreamSpec) -> None:
    assert parse_upstream(text) == spec


@pytest.mark.parametrize(("text", "problem"), [
    ("quic://127.0.0.1", "unknown scheme"),
    ("127.0.0.1#dot.test", "only for tls://"),
    ("https://1.1.1.1/dns-query?dns=x", "bad URL path"),
    ("https://bad host/dns-query", "bad host"),
    ("https://dns.example:0/dns-query", "bad port"),
    ("tls://dns.example:853", "not an IP address"),
    ("tls://127.0.0.1#bad name", "bad certificate name"),
    ("tls://127.0.0.1:99999", "bad port"),
    ("https:/dns.example/dns-query", r"not an address\[:port\] nor a URL with ://"),
    ("1.1.1.1/dns-query", r"not an address\[:port\] nor a URL with ://"),
    ("http://dns.example/dns-query", r"unknown scheme 'http' \(use udp://, tls:// or https://\)"),
])
def test_bad_upstream_entries_say_why(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_upstream(text)


def test_config_errors_name_the_upstream_line(tmp_path: Path) -> None:
    cfg = tmp_path / "gateway.yaml"
    cfg.write_text("dns:\n  upstreams:\n    - 127.0.0.1\n    - tls://127.0.0.1#bad name\n")
    with pytest.raises(ConfigError, match=r"gateway.yaml:4: .*bad certificate name"):
        load_config(cfg)
    cfg.write_text("dns:\n  upstreams: ['tls://127.0.0.1']\n  upstream_ca: nope.pem\n")
    with pytest.raises(ConfigError, match=r"gateway.yaml:3: dns.upstream_ca: .*nope.pem"):
        check_files(load_config(cfg))   # parsing alone opens no file
    cfg.write_text("dns:\n  upstreams: ['tls://127.0.0.1#dot.test', '[::1]:5353']\n"
                   "  upstream_0x20: true\n")
    loaded = load_config(cfg)
    assert loaded.upstreams == (UpstreamSpec("127.0.0.1", 853, "tls", "dot.test"),
                                UpstreamSpec("::1", 5353))
    assert loaded.forwarder.qname_0x20 and loaded.forwarder.tls_ca is None
    assert [u.label for u in upstreams_from(loaded.upstreams)] == \
        ["tls://127.0.0.1:853", "[::1]:5353"]


async def test_a_tls_query_is_retried_once_when_the_reused_connection_closes_under_it(
        tmp_path: Path) -> None:
    """The server's idle timeout can race a query on the persistent connection: the query
    goes out again on a fresh connection instead of failing."""
    from tests.support.certs import make_ca_and_cert

    ca, cert, key = make_ca_and_cert(tmp_path, "dot.test")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    connections: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(len(connections))
        first = len(connections) == 1
        try:
            for answered in range(10):
                size = struct.unpack(">H", await reader.readexactly(2))[0]
                msg = dns.message.from_wire(await reader.readexactly(size))
                if first and answered == 1:
                    return          # hang up on the second query of the first connection
                reply = answer(msg)
                writer.write(struct.pack(">H", len(reply)) + reply)
        except asyncio.IncompleteReadError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    try:
        seen = Observed()
        fwd = Forwarder([Upstream("127.0.0.1", port, "tls", "dot.test")],
                        ForwarderConfig(tls_ca=str(ca)), seen)
        for name in ("one.example.test", "two.example.test", "three.example.test"):
            got = dns.message.from_wire(await fwd.resolve(question(name), do=False, cd=False))
            assert got.answer[0][0].address == "192.0.2.1"
        assert len(connections) == 2 and seen.errors == []
        assert fwd.open_sockets() == 1
        fwd.close()
        await asyncio.sleep(0)
        assert fwd.open_sockets() == 0
    finally:
        server.close()
        await server.wait_closed()


def test_worker_counts_reach_the_primarys_metrics() -> None:
    """dns.workers: a worker's drops, mismatches and open sockets show in the node's scrape."""
    from prometheus_client import CollectorRegistry, generate_latest

    from gateway.dns.stats import DnsStats
    from gateway.runtime.metrics import Metrics
    from gateway.runtime.worker_stats import Deltas, add_deltas

    registry = CollectorRegistry()
    metrics = Metrics(registry)
    metrics.init_upstreams(["127.0.0.1:53", "tls://127.0.0.1:853"], lambda: 3)
    add_deltas(DnsStats(), {}, metrics, Deltas(
        upstream_mismatched={("127.0.0.1:53", "case"): 2}, upstream_dropped={"zone": 5},
        worker=1, upstream_sockets=4))
    add_deltas(DnsStats(), {}, metrics, Deltas(worker=2, upstream_sockets=1))
    add_deltas(DnsStats(), {}, metrics, Deltas(worker=1, upstream_sockets=2))
    text = generate_latest(registry).decode()
    assert 'safegate_upstream_mismatched_replies_total{reason="case",upstream="127.0.0.1:53"} ' \
        '2.0' in text
    assert 'safegate_upstream_dropped_total{reason="zone"} 5.0' in text
    assert 'safegate_upstream_dropped_total{reason="inflight"} 0.0' in text
    assert "safegate_upstream_sockets 6.0" in text          # 3 here + 2 + 1 in workers
    assert 'safegate_upstream_queries_total{protocol="tls",upstream="tls://127.0.0.1:853"} 0.0' \
        in text
    assert 'protocol="udp",upstream="tls://' not in text
