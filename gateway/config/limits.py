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
    tls_idle_timeout: float = 30.0       # a tls:// or https:// upstream connection with nothing
                                         # asked: closed
    https_connections: int = 4           # keep-alive connections open to one https:// upstream
                                         # (queries beyond wait for one, within their timeout)


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
    # lists.yaml `url:` sources: the shortest `refresh:` honoured (a shorter one is raised to
    # it), and the wait before retrying a failed download. A list publisher is not asked more
    # often than this by any gateway; tests lower it.
    list_refresh_min: float = 300.0


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
class QuotaLimits:
    """Game-time quotas (docs/quotas.md): `limits.quota`."""

    # Client addresses counted today (each ~0.4 KB). A new address past this gets no counter:
    # its lookups of quota-limited categories are blocked (fail closed: a child loses game time,
    # never gains unlimited time), counted in safegate_quota_untracked_total.
    clients: int = 16_384
    save_interval: float = 30.0          # seconds between saves of the counters to state_dir


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
    # Province tier (docs/national-layout.md). At the ministry: school gateways one province
    # may report; each is a set of per-gateway /metrics series, so a province cannot grow
    # /metrics without bound (acks for further schools are refused, reason province_full).
    province_gateways: int = 5000
    # At a province: national diffs kept to serve schools a step at a time (older serials
    # get the mirrored snapshot), and school acks waiting for the ministry; past that the
    # province answers 503 and the schools keep the acks in their own outboxes.
    mirror_diffs: int = 64
    upstream_pending: int = 100_000
    # At a province: of those, acks one school may have waiting. A school's outbox holds a
    # handful (one per feed update it applied); without a share, one school token (a
    # compromised Pi, a loop) could fill upstream_pending and every other school would get
    # 503 (safegate_publisher_national_acks_deferred_total{reason="school_pending_full"}).
    upstream_pending_per_school: int = 1000
    # Acks forwarded to the ministry in one POST /v1/provinces/acks (province: most it sends;
    # ministry: most it takes, more is 413), and the province's bound on that POST's body
    # (keep it under the ministry's ack_bytes). 45,000 schools acking one POST each is the
    # ministry's load without batching.
    upstream_batch_acks: int = 500
    upstream_batch_bytes: int = 1 * MIB
    # One national document fetched by the province (a 100k-entry snapshot is ~25 MB).
    upstream_document_bytes: int = 256 * MIB
    # Enrollment codes neither used nor expired (`safegate feed gateways add --code`): each is
    # a row; issuing more is refused until some are used, expire or are revoked.
    enroll_codes: int = 10_000
    # Wrong codes sent to POST /v1/enroll in any 60 s, per publisher process; past it every
    # attempt gets 429 (safegate_publisher_enroll_attempts_total{result="rate_limited"}).
    enroll_failures_per_minute: int = 10
    # Zone transfer (zone_transfer: in publisher.yaml, gateway/publisher/xfr.py). Integers:
    # this section is parsed as whole numbers.
    xfr_connections: int = 32            # open TCP connections from allowed secondaries; more
                                         # are closed at accept
    xfr_outside: int = 4                 # of those, from addresses outside zone_transfer.allow
                                         # (held only long enough to answer REFUSED), apart so
                                         # a stranger cannot starve the secondaries
    xfr_transfers: int = 8               # AXFR/IXFR answers being sent at once; a request
                                         # waits up to xfr_idle_timeout for a slot, then SERVFAIL
    xfr_idle_timeout: int = 10           # seconds a connection may sit without a whole request,
                                         # or a reply write may stall (client not reading)
    xfr_message_bytes: int = 16 * KIB    # largest transfer message sent, and request accepted
    xfr_send_buffer: int = 256 * KIB     # kernel send buffer (SO_SNDBUF) of a transfer
                                         # connection: what a secondary that stops reading pins
                                         # (else autotuned up to 4 MB each); ~5 MB/s at 50 ms
    xfr_journal_records: int = 1_000_000  # RR changes kept for IXFR (older: full answer)
    notify_retries: int = 5              # NOTIFY resends per secondary and serial (1 s, 2 s,
                                         # 4 s ... apart) before giving up until the next serial

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
class AdminLimits:
    """The admin page (`admin:` in gateway.yaml, gateway/admin/): `limits.admin`."""

    sessions: int = 64                   # logged-in sessions held; the oldest is dropped beyond
    session_lifetime: float = 8 * 3600.0  # a session ends this long after its login
    lockout_failures: int = 5            # wrong passwords from one address before it is locked
    lockout_seconds: float = 900.0       # how long a locked address may not try again
    lockout_table: int = 1024            # addresses whose failures are remembered (oldest go)
    form_bytes: int = 16 * KIB           # one POSTed form
    top_names: int = 100                 # blocked names counted per network and hour (the
                                         # "most blocked" table, dns/tally.py)


@dataclass(frozen=True)
class QueryLogLimits:
    """The query log of networks with `query_log:` (gateway/querylog/): `limits.query_log`."""

    rows: int = 1_000_000                # rows kept in all (~100 MB); the oldest go first
    pending: int = 20_000                # rows waiting for the writer; beyond, rows are dropped
    flush_interval: float = 1.0          # the writer's batch period (never a write per query)


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
    quota: QuotaLimits = field(default_factory=QuotaLimits)
    admin: AdminLimits = field(default_factory=AdminLimits)
    query_log: QueryLogLimits = field(default_factory=QueryLogLimits)
