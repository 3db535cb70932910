"""Resource limits: every bound a client could push on, with its default, in one place.

Plain dataclasses, no imports from the rest of the gateway: the transports, the query path, the
web listener and the config parser all read them. A default lives only here; gateway.yaml's
`limits:` section (config.py) overrides field by field, and README "Limits and abuse" lists
each limit with its metric.
"""

from __future__ import annotations

from dataclasses import dataclass, field

KIB = 1024
MIB = 1024 * KIB


@dataclass(frozen=True)
class StreamLimits:
    """DNS over TCP (`limits.tcp`) or over TLS (`limits.dot`): one table per transport."""

    connections: int = 1024              # open connections, all clients together
    per_client: int = 16                 # open connections from one address (IPv6: one /64)
    queries_per_connection: int = 64     # pipelined queries in flight on one connection
    queued_bytes: int = 256 * KIB        # reply bytes waiting for a client that does not read
    idle_timeout: float = 10.0           # no query for this long: closed
    frame_timeout: float = 5.0           # a started frame (or TLS handshake) must end by then


@dataclass(frozen=True)
class WebLimits:
    """The web listener (block page, DoH, reports, /ca): `limits.web`."""

    connections: int = 512               # open connections, all clients together (refused beyond)
    per_client: int = 64                 # from one address (IPv6: a /64); not trusted front ends
    header_timeout: float = 10.0         # request line and headers must arrive within this
    request_timeout: float = 30.0        # then the body must arrive and the answer be ready
    idle_timeout: float = 30.0           # keep-alive connection with no request: closed


@dataclass(frozen=True)
class UpstreamLimits:
    """Forwarding: `limits.upstream`."""

    inflight: int = 1024                 # distinct questions waiting on all upstreams at once
    inflight_per_zone: int = 64          # of those, under one parent zone (random-subdomain floods)


@dataclass(frozen=True)
class MemoryLimits:
    """Caches the query path fills from client input: `limits.memory`."""

    reply_memo: int = 16_384             # memoized UDP replies per profile
    verdict_memo: int = 50_000           # memoized decisions per profile
    blocked_bodies: int = 4_096          # prebuilt blocked-reply bodies (qtype x EDNS x DO), all


@dataclass(frozen=True)
class FileLimits:
    """Files read whole: `limits.files` (a list of names streams, so it gets a larger bound)."""

    config_bytes: int = 4 * MIB          # gateway.yaml, policy files, lists.yaml, subscribers
    list_bytes: int = 2048 * MIB         # one blocklist file
    feed_bytes: int = 256 * MIB          # one downloaded feed document or list


@dataclass(frozen=True)
class ReportLimits:
    """The block page's report form: `limits.reports`."""

    per_v4_24: int = 10                  # reports per hour from one IPv4 /24
    per_v6_56: int = 10                  # reports per hour from one IPv6 /56
    token_lifetime: float = 3600.0       # a form token, bound to the address it was issued to
    prefixes: int = 16_384               # /24s and /56s the rate limit tracks (stalest forgotten)
    spent_tokens: int = 65_536           # used tokens remembered until they expire (single use)


@dataclass(frozen=True)
class RrlLimits:
    """Response rate limiting in the style of BIND/Knot RRL: `limits.rrl` (UDP only)."""

    enabled: bool = True
    responses_per_second: int = 50       # identical responses per second to one source prefix
    errors_per_second: int = 10          # NXDOMAIN/REFUSED/SERVFAIL/FORMERR per second, likewise
    window: int = 5                      # seconds of credit a source may bank
    slip: int = 2                        # every Nth limited reply goes out as TC=1 (0: drop all)
    ipv4_prefix: int = 24
    ipv6_prefix: int = 56
    exempt: tuple[str, ...] = ()         # networks never limited (trusted front ends are, too)
    table_size: int = 65_536             # tracked (prefix, response) buckets


@dataclass(frozen=True)
class Limits:
    """`limits:` in gateway.yaml."""

    tcp: StreamLimits = field(default_factory=StreamLimits)
    dot: StreamLimits = field(default_factory=StreamLimits)
    web: WebLimits = field(default_factory=WebLimits)
    upstream: UpstreamLimits = field(default_factory=UpstreamLimits)
    memory: MemoryLimits = field(default_factory=MemoryLimits)
    files: FileLimits = field(default_factory=FileLimits)
    reports: ReportLimits = field(default_factory=ReportLimits)
    rrl: RrlLimits = field(default_factory=RrlLimits)
