"""Resource limits: every bound a client could push on, with its default, in one place.

Plain dataclasses, no imports from the rest of the gateway: the transports, the query path, the
web listener and the config parser all read them. A default lives only here; gateway.yaml's
`limits:` section (config/limitsconf.py) overrides field by field, and README "Limits and
abuse" lists each limit with its metric.
"""

from __future__ import annotations

from dataclasses import dataclass, field

KIB = 1024
MIB = 1024 * KIB


@dataclass(frozen=True)
class StreamLimits:
    """DNS over TCP (`limits.tcp`) or over TLS (`limits.dot`): one table per transport and
    process (with dns.workers: N, each process holds its own TCP table)."""

    connections: int = 1024              # open connections, all clients together
    per_client: int = 16                 # open connections from one address (IPv6: one /64)
    outside: int = 128                   # of `connections`, held by clients outside every
                                         # network (they get REFUSED anyway): one such host
                                         # cannot starve the inside ones, who may evict them
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
    inflight_per_zone: int = 64          # of those, under one registrable domain (by the Public
                                         # Suffix List): a random-subdomain flood's share
    sockets: int = 8                     # UDP sockets (random source ports) open per upstream
    socket_uses: int = 16                # queries one UDP socket sends before it is replaced
    tls_idle_timeout: float = 30.0       # a tls:// upstream connection with nothing asked: closed


@dataclass(frozen=True)
class MemoryLimits:
    """Caches the query path fills from client input: `limits.memory`."""

    reply_memo: int = 16_384             # memoized UDP replies per profile
    verdict_memo: int = 16_384           # memoized decisions per profile (one uncached: ~1.6 µs)
    blocked_bodies: int = 4_096          # prebuilt blocked-reply bodies (qtype x EDNS x DO), all
    # Percent of dns.cache.size kept for answers asked once so far (the cache's probation
    # segment, dns/cache.py): a flood of unique names evicts only those, never the answers
    # asked again (the other 80 %). 1..100 (0 acts as 1, more as 100); 100 makes the cache
    # a plain LRU.
    cache_probation: int = 20


@dataclass(frozen=True)
class FileLimits:
    """Files read whole: `limits.files` (a list of names streams, so it gets a larger bound)."""

    config_bytes: int = 4 * MIB          # gateway.yaml, policy files, lists.yaml, subscribers YAML
    list_bytes: int = 2048 * MIB         # one blocklist file
    # A subscribers CSV streams like a list: an ISP's million prefixes are ~28 MB of text
    # (and ~100 MB of tables), far past config_bytes.
    subscribers_bytes: int = 256 * MIB
    feed_bytes: int = 256 * MIB          # one downloaded feed document or list (a 100k-entry
                                         # snapshot is ~25 MB; bigger is refused, LKG kept)


@dataclass(frozen=True)
class ReportLimits:
    """The block page's report form: `limits.reports`."""

    per_v4_24: int = 10                  # reports per hour from one IPv4 /24
    per_v6_56: int = 10                  # reports per hour from one IPv6 /56
    token_lifetime: float = 3600.0       # a form token, bound to the address it was issued to
    prefixes: int = 16_384               # /24s and /56s the rate limit tracks (stalest forgotten)
    spent_tokens: int = 65_536           # used tokens remembered until they expire (single use)


@dataclass(frozen=True)
class UdpLimits:
    """The batched UDP listener (dns/udp_batch.py, Linux with the C extension): `limits.udp`."""

    batch: int = 64                      # datagrams read (recvmmsg) per readable event: one batch,
                                         # then TCP, timers and upstream replies get their turn
    send_queue_bytes: int = 256 * KIB    # reply bytes held per socket while its send buffer is
                                         # full; replies beyond are dropped and counted


@dataclass(frozen=True)
class RrlLimits:
    """Response rate limiting in the style of BIND/Knot RRL: `limits.rrl` (UDP only)."""

    enabled: bool = True
    responses_per_second: int = 50       # identical answers (or NXDOMAIN/NODATA of one zone) per
                                         # second to one source prefix; 0: not limited
    errors_per_second: int = 10          # REFUSED/SERVFAIL/FORMERR/NOTIMP per second, likewise
    window: int = 5                      # seconds of credit a source may bank
    slip: int = 2                        # every Nth limited reply goes out as TC=1 (0: drop all)
    ipv4_prefix: int = 24
    ipv6_prefix: int = 56
    exempt: tuple[str, ...] = ()         # networks never limited (trusted front ends are, too)
    table_size: int = 65_536             # (prefix, response) buckets; prefixes, addresses likewise


@dataclass(frozen=True)
class PublisherLimits:
    """The feed publisher's ack endpoint: `limits:` in publisher.yaml (not gateway.yaml)."""

    # One POST /v1/acks body. A gateway's outbox sends at most 1000 entries (~200 KB) and a
    # bounded number of stats rows per POST, so this leaves room without letting one gateway
    # token make the publisher hold megabytes per request.
    ack_bytes: int = 4 * MIB
    # Distinct (category, tier) stats series kept per gateway: each becomes two /metrics
    # series, so an ack listing 5,000 invented categories must not grow /metrics by 10,000.
    # Rows for further pairs are dropped (safegate_publisher_ack_stats_dropped_total).
    stats_series: int = 256
    # Signed documents of the current serial kept built for the serial-addressed feed
    # (/v1/feed/snapshot|diff/...), least recently used dropped first. A 100k-entry snapshot
    # is ~25 MB; diffs from many bases are small. One document is always kept, however big.
    # safegate_publisher_document_cache_bytes shows the use.
    document_cache_bytes: int = 256 * MIB
    # Connections the kernel queues for the publisher while its event loop is busy (a /metrics
    # scrape at 10,000 gateways takes seconds). The listen() default of 128 overflowed in the
    # fleet bench: SYNs were dropped and nginx held thousands of connects for their timeout.
    listen_backlog: int = 4096


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
    udp: UdpLimits = field(default_factory=UdpLimits)
