"""The hand-written query reader agrees with dnspython and fails safe on junk."""

from __future__ import annotations

import struct

import dns.edns
import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import pytest

from gateway.dns import wire


def make(name: str = "www.Example.test", rdtype: str = "A", **kw: object) -> bytes:
    msg = dns.message.make_query(name, rdtype, **kw)  # type: ignore[arg-type]
    return msg.to_wire()


@pytest.mark.parametrize(
    ("packet", "key", "qtype", "edns", "do", "size"),
    [
        (make(), b"www.example.test", 1, False, False, 512),
        (make("A.B.C.TEST", "AAAA", use_edns=0), b"a.b.c.test", 28, True, False, 1232),
        (make("x.test", "TXT", use_edns=0, payload=4096, want_dnssec=True), b"x.test", 16, True,
         True, 1232),
        (make("x.test", "MX", use_edns=0, payload=100), b"x.test", 15, True, False, 512),
        (make(".", "NS"), b"", 2, False, False, 512),
    ],
)
def test_reads_question_and_edns(packet: bytes, key: bytes, qtype: int, edns: bool, do: bool,
                                 size: int) -> None:
    q = wire.parse_query(packet)
    assert q is not None and q.error == 0
    assert q.key == key
    assert q.qtype == qtype and q.qclass == 1
    assert q.edns is edns and q.do is do
    assert q.max_udp_response() == size
    # The question is echoed byte for byte, case included (0x20 randomisation).
    assert q.question == packet[12:12 + len(q.question)]


def test_unknown_edns_options_are_ignored_and_ecs_is_kept() -> None:
    ecs = dns.edns.ECSOption("192.0.2.0", 24)
    other = dns.edns.GenericOption(65001, b"hello")
    q = wire.parse_query(make("x.test", use_edns=0, options=[other, ecs]))
    assert q is not None and q.error == 0 and q.edns
    assert q.ecs is not None and q.ecs[:2] == b"\x00\x01"  # family 1 = IPv4


@pytest.mark.parametrize(
    ("packet", "rcode"),
    [
        (make("x.test", use_edns=1), wire.BADVERS),  # EDNS version 1
        (make("x.test")[:-3], wire.FORMERR),  # question cut short
        (make("x.test")[:12] + b"\xc0\x0c\x00\x01\x00\x01", wire.FORMERR),  # pointer loop
        (make("x.test")[:12] + b"\x50" + b"a" * 80 + b"\x00\x00\x01\x00\x01", wire.FORMERR),
        (make("x.test")[:12] + (b"\x3f" + b"a" * 63) * 5 + b"\x00\x00\x01\x00\x01", wire.FORMERR),
    ],
)
def test_bad_queries_get_an_rcode(packet: bytes, rcode: int) -> None:
    q = wire.parse_query(packet)
    assert q is not None
    assert q.error == rcode


def test_opcode_other_than_query_is_notimp() -> None:
    msg = dns.message.make_query("x.test", "SOA")
    msg.set_opcode(dns.opcode.NOTIFY)
    q = wire.parse_query(msg.to_wire())
    assert q is not None and q.error == wire.NOTIMP
    reply = dns.message.from_wire(wire.error_reply(q, q.error))
    assert reply.rcode() == dns.rcode.NOTIMP
    assert reply.opcode() == dns.opcode.NOTIFY


@pytest.mark.parametrize("packet", [b"", b"\x00" * 11, bytes(range(5))])
def test_no_header_is_dropped(packet: bytes) -> None:
    assert wire.parse_query(packet) is None
    assert wire.formerr_from_header(packet) is None


def test_responses_are_never_answered() -> None:
    reply = dns.message.make_response(dns.message.make_query("x.test", "A"))
    assert wire.parse_query(reply.to_wire()) is None


def test_two_questions_go_through_the_slow_path_and_are_formerr() -> None:
    packet = bytearray(make("x.test"))
    struct.pack_into(">H", packet, 4, 2)
    packet += packet[12:]
    q = wire.parse_query(bytes(packet))
    assert q is not None and q.error == wire.FORMERR


def test_answer_records_in_a_query_use_the_slow_path() -> None:
    msg = dns.message.make_query("x.test", "A", use_edns=0)
    msg.answer.append(dns.rrset.from_text("x.test.", 60, "IN", "A", "192.0.2.1"))
    q = wire.parse_query(msg.to_wire())
    assert q is not None and q.error == 0
    assert q.key == b"x.test" and q.edns


def test_label_with_a_dot_does_not_alias_another_name() -> None:
    packet = make("x.test")[:12] + b"\x0aadult.test\x00\x00\x01\x00\x01"
    q = wire.parse_query(packet)
    assert q is not None and q.error == 0
    assert q.key != b"adult.test" and not q.labels_ok


def test_error_reply_echoes_opt_only_when_sent() -> None:
    q = wire.parse_query(make("x.test", use_edns=0, want_dnssec=True))
    assert q is not None
    reply = dns.message.from_wire(wire.error_reply(q, wire.REFUSED))
    assert reply.rcode() == dns.rcode.REFUSED
    assert reply.edns == 0 and reply.payload == 1232
    assert reply.ednsflags & dns.flags.DO
    q2 = wire.parse_query(make("x.test"))
    assert q2 is not None
    assert dns.message.from_wire(wire.error_reply(q2, wire.REFUSED)).edns == -1


def test_badvers_reply_carries_extended_rcode() -> None:
    q = wire.parse_query(make("x.test", use_edns=1))
    assert q is not None
    reply = dns.message.from_wire(wire.error_reply(q, q.error))
    assert reply.rcode() == dns.rcode.BADVERS
    assert reply.edns == 0


def test_read_name_rejects_compression_loops() -> None:
    msg = b"\x00" * 12 + b"\xc0\x0e\xc0\x0c"
    with pytest.raises(wire.WireError):
        wire.read_name(msg, 12)
