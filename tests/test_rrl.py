"""Response rate limiting (gateway/dns/rrl.py) against a fake clock: exact counts.

The replies are the gateway's own (blocked, cached, refused) built by the real query path, so
the buckets are keyed on what a client would really get.
"""

from __future__ import annotations

import ipaddress

import dns.flags
import dns.message
import dns.rcode
import dns.rrset
import pytest

from gateway.config.limits import RrlLimits
from gateway.dns.cache import cache_key, entry_from_reply
from gateway.dns.chain import Resolver
from gateway.dns.rrl import Rrl, slip_reply
from gateway.policy.netindex import PrefixMap
from tests.support.builders import list_index, make_profile, make_resolver


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def resolver() -> Resolver:
    profile = make_profile({"adult"}, index=list_index({b"blocked.test": "adult"}))
    r = make_resolver([("10.0.0.0/8", profile), ("2001:db8::/32", profile)])
    q = dns.message.make_query("allowed.test", "TXT")
    up = dns.message.make_response(q)
    up.answer.append(dns.rrset.from_text("allowed.test.", 300, "IN", "TXT", '"' + "x" * 200 + '"'))
    entry = entry_from_reply(up.to_wire(), r.cache.cfg, r.clock())
    assert entry is not None
    r.cache.put(cache_key(b"allowed.test", 16, 1, 0), entry)
    return r


def reply(r: Resolver, name: str, rdtype: str = "A", client: str = "10.1.2.3") -> bytes:
    out = r.handle(dns.message.make_query(name, rdtype).to_wire(), client, "udp")
    assert isinstance(out, bytes)
    return out


def run(rrl: Rrl, client: str, out: bytes, n: int) -> tuple[int, int, int]:
    """(answered, slipped, dropped) for `n` sends of `out` to `client` at one instant."""
    answered = slipped = dropped = 0
    for _ in range(n):
        got = rrl.check(client, out)
        if got is None:
            dropped += 1
        elif got == out:
            answered += 1
        else:
            slipped += 1
    return answered, slipped, dropped


def limits(**kw: object) -> RrlLimits:
    base: dict[str, object] = {"responses_per_second": 5, "errors_per_second": 2, "window": 2,
                               "slip": 2}
    base.update(kw)
    return RrlLimits(**base)  # type: ignore[arg-type]


def test_burst_gets_window_of_credit_then_slips_every_other(resolver: Resolver) -> None:
    """The prefix's gate (lowest rate, 2/s x 2 s = 4) passes first, then the answer's own
    bucket (5/s x 2 s = 10): 14 of a burst, then every other limited reply slips."""
    clock = Clock()
    rrl = Rrl(limits(), clock)
    out = reply(resolver, "allowed.test", "TXT")
    assert run(rrl, "10.1.2.3", out, 30) == (14, 8, 8)
    assert (rrl.slipped, rrl.dropped) == (8, 8)
    clock.now += 1.0                                        # one second earns 5 more
    assert run(rrl, "10.1.2.3", out, 8) == (5, 2, 1)
    clock.now += 60.0          # quiet: credit is capped at the window, the gate opens again
    assert run(rrl, "10.1.2.3", out, 15) == (14, 0, 1)   # the slip turn carries on


def test_slip_is_a_bare_tc_reply_with_the_question(resolver: Resolver) -> None:
    rrl = Rrl(limits(responses_per_second=1, window=1, slip=1), Clock())
    out = reply(resolver, "Allowed.TEST", "TXT")
    assert [rrl.check("10.1.2.3", out) for _ in range(2)] == [out, out]  # gate, then bucket
    slip = rrl.check("10.1.2.3", out)
    assert slip is not None and slip == slip_reply(out) and len(slip) < len(out) // 4
    msg = dns.message.from_wire(slip)
    original = dns.message.from_wire(out)
    assert msg.id == original.id and msg.flags & dns.flags.TC and msg.flags & dns.flags.QR
    assert msg.question == original.question and not msg.answer and msg.edns < 0
    assert run(rrl, "10.1.2.3", out, 4) == (0, 4, 0)        # slip 1: every limited one slips


def test_slip_zero_drops_everything_limited(resolver: Resolver) -> None:
    rrl = Rrl(limits(slip=0), Clock())
    assert run(rrl, "10.1.2.3", reply(resolver, "allowed.test", "TXT"), 25) == (14, 0, 11)


def test_buckets_are_per_prefix_and_per_response(resolver: Resolver) -> None:
    rrl = Rrl(limits(slip=0), Clock())
    txt = reply(resolver, "allowed.test", "TXT")
    assert run(rrl, "10.1.2.3", txt, 16) == (14, 0, 2)
    assert run(rrl, "10.1.2.250", txt, 1) == (0, 0, 1)      # same /24: same bucket
    assert run(rrl, "10.1.3.1", txt, 14) == (14, 0, 0)      # next /24: its own
    # The same name in capitals (0x20) is the same answer; another name or type is not.
    assert run(rrl, "10.1.2.3", reply(resolver, "ALLOWED.test", "TXT"), 1) == (0, 0, 1)
    assert run(rrl, "10.1.2.3", reply(resolver, "blocked.test", "A"), 11) == (10, 0, 1)
    assert run(rrl, "2001:db8:0:ff::1", txt, 14) == (14, 0, 0)
    assert run(rrl, "2001:db8:0:ff::2", txt, 1) == (0, 0, 1)   # same /56
    assert run(rrl, "2001:db8:0:100::1", txt, 1) == (1, 0, 0)  # next /56


def test_negative_answers_share_the_zone_bucket(resolver: Resolver) -> None:
    """Random names under one blocked zone: one bucket (the SOA owner), not one per name."""
    rrl = Rrl(limits(slip=0), Clock())
    outs = [reply(resolver, f"r{i}.blocked.test", "A") for i in range(20)]
    assert dns.message.from_wire(outs[0]).rcode() == dns.rcode.NXDOMAIN
    results = [rrl.check("10.1.2.3", out) for out in outs]
    assert sum(r is not None for r in results) == 14       # gate 4 + the zone's bucket 10


def test_errors_share_one_bucket_at_errors_per_second(resolver: Resolver) -> None:
    rrl = Rrl(limits(slip=0), Clock())
    refused = [reply(resolver, f"n{i}.test", "A", client="192.0.2.7") for i in range(10)]
    assert dns.message.from_wire(refused[0]).rcode() == dns.rcode.REFUSED
    # gate 2/s x 2 s, then the error bucket 2/s x 2 s
    assert [rrl.check("192.0.2.7", out) is not None for out in refused] == [True] * 8 + [False] * 2


def test_exempt_networks_trusted_frontends_and_disabled(resolver: Resolver) -> None:
    out = reply(resolver, "allowed.test", "TXT")
    rrl = Rrl(limits(exempt=("10.1.2.0/24",)), Clock())
    assert run(rrl, "10.1.2.3", out, 100) == (100, 0, 0)
    frontends = PrefixMap([(ipaddress.ip_network("10.9.0.0/16"), True)])
    rrl = Rrl(limits(), Clock())
    assert [rrl.check("10.9.1.1", out, frontends) for _ in range(100)] == [out] * 100
    rrl = Rrl(limits(enabled=False), Clock())
    assert run(rrl, "10.1.2.3", out, 100) == (100, 0, 0)
    assert len(rrl) == 0


def test_table_is_bounded_and_an_abuser_outlives_idle_buckets(resolver: Resolver) -> None:
    rrl = Rrl(limits(slip=0, table_size=50), Clock())
    out = reply(resolver, "allowed.test", "TXT")
    assert run(rrl, "10.1.2.3", out, 15) == (14, 0, 1)      # limiting now
    for i in range(200):                                    # forged sources fill the table
        rrl.check(f"10.2.{i}.1", out)
        if i % 20 == 0:
            assert rrl.check("10.1.2.3", out) is None       # still limited, not evicted
    assert len(rrl) == 50 + 1            # 50 prefixes' gates and the abuser's answer bucket


def test_configure_applies_new_limits_on_reload(resolver: Resolver) -> None:
    out = reply(resolver, "allowed.test", "TXT")
    rrl = Rrl(limits(slip=0), Clock())
    assert run(rrl, "10.1.2.3", out, 16) == (14, 0, 2)
    rrl.configure(limits(enabled=False))
    assert run(rrl, "10.1.2.3", out, 50) == (50, 0, 0)
    rrl.configure(limits(slip=0, responses_per_second=1, errors_per_second=1))  # fresh tables
    assert run(rrl, "10.1.2.3", out, 6) == (4, 0, 2)    # gate 1/s x 2 s, then the answer's 2
    assert rrl.dropped == 4                             # counters run on across reloads
