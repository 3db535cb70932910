"""Query packets the fast-path tests share: tests/test_fastpath.py checks the Python fast
path against the full path with them, tests/test_fastparse.py the C parse against Python."""

from __future__ import annotations

import itertools

import dns.edns
import dns.flags
import dns.message

from gateway.dns import wire


def queries() -> list[tuple[str, bytes]]:
    """(label, packet): every test name x qtype x EDNS shape (none, plain, DO, a cookie)."""
    names = ["adult.test", "WWW.Adult.Test", "a.b.c.adult.test", "nx.test", "x.nodata.test",
             "pass.adult.test", "x.pass.adult.test", "csam.test", "x.csam.test", "feed.test",
             "games.test", "exact.test", "x.exact.test", "below.test", "x.below.test",
             "two.test", "social.test", "allowed.test", "deny.test", "x." * 100 + "adult.test",
             "a.sub.adult.test", "deny.adult.test", "x.ok.adult.test", "porn.csam.test"]
    out = []
    for name, rdtype, edns in itertools.product(names, ("A", "AAAA", "MX", "HTTPS", "CNAME"),
                                                ("none", "plain", "do", "cookie")):
        if edns == "none":
            m = dns.message.make_query(name, rdtype, use_edns=False)
        elif edns == "plain":
            m = dns.message.make_query(name, rdtype, use_edns=0)
        elif edns == "do":
            m = dns.message.make_query(name, rdtype, want_dnssec=True)
        else:
            cookie = dns.edns.GenericOption(dns.edns.COOKIE, b"\x01" * 8)
            m = dns.message.make_query(name, rdtype, use_edns=0, options=[cookie])
        m.id = 4242
        out.append((f"{name} {rdtype} {edns}", m.to_wire()))
    m = dns.message.make_query("adult.test", "A")
    m.flags = dns.flags.CD  # RD off, CD on: both echoed as the client sent them
    out.append(("adult.test CD no RD", m.to_wire()))
    return out


# Packets that are not the fast path's shape (it must return None and leave them to the full
# parser): empty, short, a cut OPT, class CHAOS, a response, trailing bytes, a dot or a
# non-ASCII byte inside a label, a compression pointer in the question.
ODD_SHAPES: list[bytes] = [
    b"", b"\x00" * 11, b"\x00" * 17,
    wire.build_query(1, wire.key_to_wire(b"adult.test") + b"\x00\x01\x00\x01",
                     do=False, cd=False)[:-3],                         # OPT cut short
    wire.build_query(1, wire.key_to_wire(b"adult.test") + b"\x00\x01\x00\x03",
                     do=False, cd=False),                              # class CHAOS
    b"\x00\x01\x80\x00\x00\x01\x00\x00\x00\x00\x00\x00\x05adult\x04test\x00\x00\x01\x00\x01",
    b"\x00\x01\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x05adult\x04test\x00\x00\x01\x00\x01xx",
    b"\x00\x01\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x05ad.lt\x04test\x00\x00\x01\x00\x01",
    b"\x00\x01\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x05adul\xff\x04test\x00\x00\x01\x00\x01",
    b"\x00\x01\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xc0\x0c\x00\x01\x00\x01",
]
