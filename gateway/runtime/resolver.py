"""The query path's parts, assembled the same way by the primary and by every DNS worker."""

from __future__ import annotations

import os

from gateway.config.gateway import GatewayConfig
from gateway.config.upstreams import UpstreamSpec
from gateway.dns.cache import AnswerCache
from gateway.dns.chain import Resolver
from gateway.dns.local import LocalAnswers
from gateway.dns.rrl import Rrl
from gateway.dns.server import DnsServer
from gateway.dns.stats import DnsStats, StreamStats
from gateway.dns.udp_batch import batched_udp_io
from gateway.dns.upstream import Forwarder
from gateway.dns.upstream_base import UpstreamObserver, upstreams_from
from gateway.dns.view import View
from gateway.dns.zones import ZoneForwarders
from gateway.policy.quota_table import QuotaTable


def build_resolver(config: GatewayConfig, view: View, stats: DnsStats,
                   observer: UpstreamObserver, quotas: QuotaTable | None = None) -> Resolver:
    """Cache + forwarder (dns.upstreams under limits.upstream) + the chain, serving `view`;
    dns.local_records answered locally, each dns.forward_zones zone with its own forwarder
    (built the same way as the main one)."""
    def forwarder(specs: tuple[UpstreamSpec, ...]) -> Forwarder:
        return Forwarder(upstreams_from(specs), config.forwarder, observer,
                         limits=config.limits.upstream)

    local = LocalAnswers(config.local_records, config.block_ttl) if config.local_records \
        else None
    zones = ZoneForwarders({z.zone.encode(): forwarder(z.servers) for z in config.forward_zones})
    cache = AnswerCache(config.cache, config.limits.memory.cache_probation)
    return Resolver(view, cache, forwarder(config.upstreams), stats, local=local, zones=zones,
                    quotas=quotas)


def build_dns_server(config: GatewayConfig, resolver: Resolver, listen: list[tuple[str, int]],
                     streams: StreamStats, *, reuse_port: bool) -> tuple[DnsServer, Rrl]:
    """UDP/TCP listeners on `resolver`, with their own response rate limiting (limits.rrl:
    each process limits the sources the kernel hands it) and TCP limits (limits.tcp). UDP is
    batched (recvmmsg/sendmmsg, limits.udp) where the C extension serves, unless SAFEGATE_PURE=1
    asks for the pure-Python paths everywhere."""
    rrl = Rrl(config.limits.rrl)
    pure = os.environ.get("SAFEGATE_PURE", "") not in ("", "0")
    return DnsServer(resolver, listen, config.limits.tcp, streams, reuse_port=reuse_port,
                     rrl=rrl, udp_limits=config.limits.udp,
                     udp_io=batched_udp_io(pure)), rrl
