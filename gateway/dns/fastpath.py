"""The uncached blocked query, answered straight from the wire bytes.

A name drawn from a million-name list is rarely asked twice, so the reply memo (dns/chain.py)
cannot absorb it: every such query used to pay for a `Query` object, a frozen `Verdict`, a
reply body cached for one use, and two memo inserts (~14 µs in Python). Here the common shape
— one plain question, at most a plain OPT, class IN, blocked by a list rule — goes from bytes
to reply bytes with nothing allocated but the reply. Anything else returns None and takes the
full path in chain.py, which stays the reference: a test drives both over the same queries and
requires identical replies (tests/test_fastpath.py).

The decision is `policy.decide`'s own ranking (`rank`) of the rules at each matching level,
made once per combination of rule tuples and memoized in `Profile.plans`; what depends on the
name itself — a bypass name, the network's deny and allow lists, which sit between mandatory
and category blocks — is checked per query, and any of them sends the query to the full path.

The byte work — `parse`, and assembling the reply — has a C twin (gateway/dns/_fastparse.c)
that `choose` picks when it is built; the Python here is the reference (tests/test_fastparse.py
holds them equal byte for byte) and the fallback.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any, NamedTuple

from gateway.dns import wire
from gateway.dns.answers import BlockAnswers, Parts
from gateway.policy.decide import (
    EDE_FILTERED,
    Profile,
    bypass_verdict,
    category_block,
    mandatory_block,
    rank,
    suffix_match,
)

try:  # the optional C parse (setup.py builds it where a compiler exists)
    from gateway.dns import _fastparse
except ImportError:  # pragma: no cover - depends on the install
    _fastparse = None  # type: ignore[assignment]

# (key, end of question, qtype, EDNS, DO)
Shape = tuple[bytes, int, int, bool, bool]
Parse = Callable[[bytes], Shape | None]
# (data, end, parts, edns, offset, ede, prefix, key, suffix) -> reply: _fastparse.blocked_reply
Reply = Callable[[bytes, int, Parts, bool, int, int, bytes, bytes, bytes], bytes]

# What a combination of rule tuples (one per matching level) means for one profile: None
# (not a list block: take the full path) or (deciding level, whether bypass names and
# deny/allow lists must be checked, answer, EDE code, EDE text prefix, EDE text suffix,
# stats key).
Plan = tuple[int, bool, str, int, bytes, bytes, tuple[str, str, str, str]] | None

_NO_PLAN: Plan = None
_MARK = b"\x00"  # the stand-in name of _plan's template verdict
_PLANS_LIMIT = 4096
_QD1 = b"\x00\x01\x00\x00\x00\x00"  # QDCOUNT 1, ANCOUNT 0, NSCOUNT 0
_OPT_FIXED = b"\x00\x00\x29"         # root owner, TYPE OPT


def parse(data: bytes) -> Shape | None:
    """(key, end of question, qtype, EDNS, DO) for the common query shape, else None.

    None is not an error: the full parser (wire.parse_query) then decides what the packet is.
    Only the shape is checked here, never whether the packet is well formed beyond it.
    """
    n = len(data)
    if n < 17 or data[2] & 0xF8 or not data.startswith(_QD1, 4):  # QR, opcode; counts
        return None
    arcount = data[11]
    if data[10] or arcount > 1:
        return None
    pos = 12
    labels = []
    length = data[12]
    while length:
        if length > 63:
            return None
        start = pos + 1
        pos = start + length
        labels.append(data[start:pos])
        if pos >= n:
            return None
        length = data[pos]
    if not labels or pos > 12 + 254:
        return None
    end = pos + 5
    if end > n or data[pos + 3] or data[pos + 4] != 1:  # class IN only
        return None
    key = b".".join(labels)
    if key.count(b".") != len(labels) - 1 or not key.isascii():
        return None  # a dot inside a label (wire.py escapes it); non-ASCII EDE text
    do = False
    if arcount:
        # Exactly one OPT, version 0, ending the packet; its options are walked so that a
        # malformed one still gets the full parser's FORMERR.
        if end + 11 > n or not data.startswith(_OPT_FIXED, end) or data[end + 6]:
            return None
        rdlen = (data[end + 9] << 8) | data[end + 10]
        opt = end + 11
        stop = opt + rdlen
        if stop != n:
            return None
        while opt < stop:
            if opt + 4 > stop:
                return None
            opt += 4 + ((data[opt + 2] << 8) | data[opt + 3])
        if opt != stop:
            return None
        do = bool(data[end + 7] & 0x80)
    elif end != n:
        return None
    return key.lower(), end, (data[pos + 1] << 8) | data[pos + 2], arcount == 1, do


class Codec(NamedTuple):
    """How the fast path reads a query and writes its reply: Python, or C."""

    name: str           # for the ready line: "C" or "pure-Python"
    parse: Parse        # `parse` or _fastparse.parse
    reply: Reply | None  # _fastparse.blocked_reply, or None: answers.blocked_body in Python


PURE = Codec("pure-Python", parse, None)


def choose(pure: bool | None = None) -> Codec:
    """C when the extension is built and `pure` is false; None reads SAFEGATE_PURE (1 forces
    Python, as for the list index). The caller keeps the result and passes it in."""
    if pure is None:
        pure = os.environ.get("SAFEGATE_PURE", "") not in ("", "0")
    if pure or _fastparse is None:
        return PURE
    return Codec("C", _fastparse.parse, _fastparse.blocked_reply)


def blocked(data: bytes, profile: Profile, answers: BlockAnswers, codec: Codec = PURE
            ) -> tuple[bytes, tuple[str, str, str, str]] | None:
    """(reply, stats key) when `data` is a plain query for a name a list rule blocks;
    `codec` (from `choose`) says whether Python or C reads and writes the bytes. None for a
    network with a query log: dns/chain.py's full path logs each of its queries."""
    if profile.log is not None:
        return None
    shape = codec.parse(data)
    if shape is None:
        return None
    key, end, qtype, edns, do = shape
    matches = profile.index.match(key)
    if not matches:
        return None
    plans = profile.plans
    if len(matches) == 1:
        sig: Any = id(matches[0][1])
    else:
        sig = tuple([id(rules) for _, rules in matches])
    found = plans.get(sig)
    if found is None:
        if len(plans) >= _PLANS_LIMIT:
            plans.clear()  # feed overlays hold a tuple per entry; index combos are few
        # The rule tuples are kept with their plan, so their ids cannot be reused meanwhile.
        levels = tuple(rules for _, rules in matches)
        found = plans[sig] = (levels, _plan(profile, levels))
    plan = found[1]
    if plan is None:
        return None
    level, checked, answer, ede, prefix, suffix, stats_key = plan
    if checked and ((profile.bypass and bypass_verdict(key) is not None)
                    or suffix_match(profile.deny, key) >= 0
                    or suffix_match(profile.allow, key) >= 0):
        return None  # a bypass name, or the network's own deny/allow lists decide
    off = matches[level][0]
    c_reply = codec.reply
    if c_reply is not None:
        parts = answers.parts.get((answer, qtype, edns, do)) \
            or answers.parts_for(qtype, edns, do, answer)
        return c_reply(data, end, parts, edns, off, ede, prefix, key, suffix), stats_key
    return reply(data, end, answers, qtype, edns, do, answer, off, ede, prefix, key,
                 suffix), stats_key


def reply(data: bytes, end: int, answers: BlockAnswers, qtype: int, edns: bool, do: bool,
          answer: str, off: int, ede: int, prefix: bytes, key: bytes, suffix: bytes) -> bytes:
    """The blocked reply to `data` (question ending at `end`), with EDE text prefix + the
    matched entry + suffix: the reference for _fastparse.blocked_reply."""
    text = prefix + key[off:] + suffix if ede else b""
    flags, counts, records = answers.blocked_body(qtype, edns, do, answer, off, ede, text)
    flags |= ((data[2] << 8) | data[3]) & (wire.RD | wire.CD)  # the client's RD and CD
    return data[:2] + flags.to_bytes(2, "big") + counts + data[12:end] + records


def _plan(profile: Profile, levels: tuple[tuple[Any, ...], ...]) -> Plan:
    """decide.py's outcome for a name whose matching levels hold `levels`, when it is a block
    by a list rule; None otherwise (allowed, passthru, or left to the full path).

    The verdict is decide.py's own, made for a stand-in entry (`_MARK`): its EDE text, split
    at the stand-in, gives the text around the matched entry.
    """
    mandatory, best = rank(profile, list(enumerate(levels)))
    if mandatory is not None:
        level = mandatory[0]
        verdict = mandatory_block(profile, _MARK, (0, *mandatory[1:]))
        checked = False  # before bypass names and deny/allow lists: nothing lifts it
    elif best is not None:
        level = best[0]
        verdict = category_block(profile, _MARK, (0, *best[1:]))
        if profile.filtered:  # as decide.decide: the subscriber's own filtering is EDE 17
            verdict = dataclasses.replace(verdict, ede=EDE_FILTERED)
        # Bypass names and the deny/allow lists come between mandatory and category blocks:
        # they depend on the name, so they are checked per query (set probes), when present.
        checked = profile.bypass or bool(profile.deny) or bool(profile.allow)
    else:
        return _NO_PLAN
    around = verdict.ede_text().encode().split(_MARK)
    if len(around) != 2:
        return _NO_PLAN  # a NUL in a category or feed id: the full path writes that text
    prefix, suffix = around
    return (level, checked, verdict.answer, verdict.ede, prefix, suffix,
            ("blocked", verdict.category, profile.tier, "udp"))
