"""Response rate limiting for UDP, in the style of BIND and Knot RRL (`limits.rrl`).

Why: a UDP source address can be forged, so without a limit the gateway is an amplifier (37
bytes of TXT query in, 1,089 out) and answers 20,000 queries a second from one source. TCP,
DoT and DoH prove the source and are never limited.

How: one token bucket per (source prefix, response), where a response is
    positive   identical answers: the question's name (case folded) and type
    negative   NXDOMAIN / NODATA: the zone, the owner of the SOA in the authority section
               (random names under one zone share it), else the question's name
    error      REFUSED, SERVFAIL, FORMERR, NOTIMP ...: one bucket per prefix
A bucket earns `responses_per_second` (errors: `errors_per_second`) tokens a second and banks at
most `window` seconds of them; a new bucket starts full. A response finding no token is limited:
every `slip`-th one (the first, then every slip-th after) goes out as a bare TC=1 reply (header
and question), so a real client behind a forged-looking prefix retries over TCP and is answered;
the rest are dropped. Sources in `exempt` and the view's trusted front ends (they carry many
clients) are never limited.

The table holds at most `table_size` buckets; a full table drops the oldest-created bucket,
except that a bucket that is limiting right now moves to the young end, so a flood of forged
sources evicts idle buckets before it evicts an active abuser's.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from gateway.config.limits import RrlLimits
from gateway.dns import wire
from gateway.policy.netindex import PrefixMap

_UNKNOWN: Any = object()  # a source not looked up yet
_NEGATIVE = b"-"
# Bucket keys by their length: (source, name + type) positive, (source, "-", zone) negative,
# (source,) errors.
Key = tuple[bytes, ...]
_HEADER = struct.Struct(">HHH")


class Rrl:
    """The per-datagram check; `check` returns what to send: the reply, a slip, or None.

    Cost: most sources never come near a limit, so each prefix first has one gate bucket for
    all its responses at the lowest class rate. While the gate has credit no response bucket
    can be empty, and the reply goes out without building a bucket key (~0.4 µs a call instead
    of ~1.2). Once the gate runs dry the prefix is counted per response, until its gate has
    filled up again (a quiet `window`). The price: a flood's bucket starts full when the gate
    runs dry, so the flood gets `window` seconds of credit at the lowest rate on top of its
    own, once per episode.
    """

    def __init__(self, limits: RrlLimits, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.slipped = 0
        self.dropped = 0
        self._buckets: OrderedDict[Key, list[float]] = OrderedDict()
        # client address -> its prefix's gate [prefix, balance, last], None when exempt
        self._sources: OrderedDict[str, list[Any] | None] = OrderedDict()
        self._gates: OrderedDict[bytes, list[Any]] = OrderedDict()
        self._frontends: object = None
        self.configure(limits)

    def configure(self, limits: RrlLimits) -> None:
        """(Re)apply `limits.rrl` (at start and on reload); buckets start afresh."""
        self.enabled = limits.enabled
        self.limits = limits
        self._rate = float(limits.responses_per_second)
        self._error_rate = float(limits.errors_per_second)
        window = max(limits.window, 0)
        self._cap = max(self._rate * window, 1.0)
        self._error_cap = max(self._error_rate * window, 1.0)
        rates = [r for r in (self._rate, self._error_rate) if r > 0]
        self._gate_rate = min(rates) if rates else 0.0
        self._gate_cap = max(self._gate_rate * window, 1.0)
        self._slip = limits.slip
        self._size = max(limits.table_size, 1)
        self._v4_shift = 32 - min(max(limits.ipv4_prefix, 0), 32)
        self._v6_shift = 128 - min(max(limits.ipv6_prefix, 0), 128)
        self._exempt: PrefixMap[bool] = PrefixMap(
            [(ipaddress.ip_network(net, strict=False), True) for net in limits.exempt])
        self._buckets.clear()
        self._sources.clear()
        self._gates.clear()

    def __len__(self) -> int:
        """Buckets tracked now, gates included (the safegate_rrl_buckets gauge)."""
        return len(self._buckets) + len(self._gates)

    def check(self, client: str, reply: bytes, frontends: PrefixMap[bool] | None = None
              ) -> bytes | None:
        """What to send `client` instead of `reply`: `reply` itself, a TC=1 slip, or None.

        `frontends`: the current view's trusted front ends (exempt; a new view re-reads them).
        """
        if not self.enabled:
            return reply
        if frontends is not self._frontends:
            self._frontends = frontends
            self._sources.clear()
        gate = self._sources.get(client, _UNKNOWN)
        if gate is _UNKNOWN:
            gate = self._source(client, frontends)
        if gate is None:
            return reply
        now = self.clock()
        balance = gate[1] + (now - gate[2]) * self._gate_rate
        gate[2] = now
        if balance >= 1.0 and not gate[3]:
            gate[1] = (balance if balance < self._gate_cap else self._gate_cap) - 1.0
            return reply
        return self._counted(client, gate, balance, reply, now)

    def _counted(self, client: str, gate: list[Any], balance: float, reply: bytes, now: float
                 ) -> bytes | None:
        """The prefix is past its gate: each reply is counted in its own bucket."""
        if balance >= self._gate_cap:
            gate[1] = self._gate_cap - 1.0   # quiet for a window: back to the gate alone
            gate[3] = False
            return reply
        gate[1] = balance if balance < 1.0 else balance - 1.0
        gate[3] = True
        # A source being limited keeps its state while forged ones churn the tables.
        self._sources.move_to_end(client)
        if gate[0] in self._gates:
            self._gates.move_to_end(gate[0])
        return self._per_response(gate[0], reply, now)

    def _per_response(self, source: bytes, reply: bytes, now: float) -> bytes | None:
        """The prefix is past its gate: count this reply in its own bucket."""
        rcode = reply[3] & 0xF
        if rcode == wire.NOERROR and (reply[7] or reply[6]):
            # A positive answer: its name and type, case folded so 0x20 randomisation does not
            # spread it over many buckets (the type's bytes too: two types may share a bucket,
            # never an answer get two). The name ends at its first zero byte, unless a label
            # holds one: then the key is shorter but just as fixed for that question.
            end = reply.find(b"\x00", 12)
            key: Key = (source, reply[12:end + 3].lower())
            rate, cap = self._rate, self._cap
        elif rcode == wire.NOERROR or rcode == wire.NXDOMAIN:
            key = _negative_key(source, reply)
            rate, cap = self._rate, self._cap
        else:
            key = (source,)
            rate, cap = self._error_rate, self._error_cap
        if rate <= 0.0:
            return reply  # 0 per second: this kind of response is not limited
        buckets = self._buckets
        bucket = buckets.get(key)
        if bucket is None:
            if len(buckets) >= self._size:
                buckets.popitem(last=False)
            bucket = buckets[key] = [cap, now, 0.0]
        balance = bucket[0] + (now - bucket[1]) * rate
        bucket[1] = now
        if balance >= 1.0:
            bucket[0] = (balance if balance < cap else cap) - 1.0
            return reply
        bucket[0] = balance
        return self._limited(key, bucket, reply)

    def _limited(self, key: Key, bucket: list[float], reply: bytes) -> bytes | None:
        self._buckets.move_to_end(key)  # an abuser's bucket outlives idle ones
        slip = self._slip
        if slip > 0:
            turn = int(bucket[2])
            bucket[2] = float((turn + 1) % slip)
            if turn == 0:
                self.slipped += 1
                return slip_reply(reply)
        self.dropped += 1
        return None

    def _source(self, client: str, frontends: PrefixMap[bool] | None) -> list[Any] | None:
        """The gate of `client`'s prefix (b"4"/b"6" + masked address), None when exempt."""
        gate: list[Any] | None = None
        if not (self._exempt.lookup(client)
                or (frontends is not None and frontends.lookup(client))):
            try:
                if ":" in client:
                    n = int.from_bytes(socket.inet_pton(socket.AF_INET6, client.partition("%")[0]))
                    prefix = b"6" + (n >> self._v6_shift).to_bytes(16)
                else:
                    n = int.from_bytes(socket.inet_pton(socket.AF_INET, client))
                    prefix = b"4" + (n >> self._v4_shift).to_bytes(4)
            except (OSError, ValueError):
                prefix = b""  # not an address (no UDP peer is): nothing to key on
            if prefix:
                gates = self._gates
                gate = gates.get(prefix)
                if gate is None:
                    if len(gates) >= self._size:
                        gates.popitem(last=False)  # the oldest idle prefix
                    gate = gates[prefix] = [prefix, self._gate_cap, self.clock(), False]
        sources = self._sources
        if len(sources) >= self._size:
            sources.popitem(last=False)
        sources[client] = gate
        return gate


def _question_end(reply: bytes) -> int:
    """Offset just past the question (name, type, class); -1 when there is none readable."""
    if reply[4:6] == b"\x00\x00":
        return -1
    pos = 12
    n = len(reply)
    while pos < n:
        length = reply[pos]
        if length == 0:
            return pos + 5 if pos + 5 <= n else -1
        if length > 63:
            return -1
        pos += length + 1
    return -1


def _negative_key(source: bytes, reply: bytes) -> Key:
    """The bucket of NXDOMAIN / NODATA: the zone, i.e. the SOA owner (see the module doc)."""
    end = _question_end(reply)
    if end < 0:
        return (source,)
    _qdcount, ancount, nscount = _HEADER.unpack_from(reply, 4)
    if nscount and not ancount:
        first = reply[end] if end < len(reply) else 0
        if first >= 0xC0 and end + 1 < len(reply):
            at = ((first & 0x3F) << 8) | reply[end + 1]
            if 12 <= at < end - 4:  # the SOA owner is a suffix of the question's name
                return (source, _NEGATIVE, reply[at:end - 4].lower())
        try:
            return (source, _NEGATIVE, wire.key_to_wire(wire.read_name(reply, end)[0]))
        except (wire.WireError, IndexError):
            pass
    return (source, _NEGATIVE, reply[12:end - 4].lower())


def slip_reply(reply: bytes) -> bytes:
    """A bare TC=1 reply for `reply`'s query: header and question, nothing else (RRL slip)."""
    qid, flags = struct.unpack_from(">HH", reply)
    end = _question_end(reply)
    flags = (flags & (wire.OPCODE_MASK | wire.RD | wire.CD | wire.RA)) | wire.QR | wire.TC
    if end < 0:
        return wire.header(qid, flags, 0, 0, 0, 0)
    return wire.header(qid, flags, 1, 0, 0, 0) + reply[12:end]
