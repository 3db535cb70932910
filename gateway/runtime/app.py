"""`safegate run`: start listeners, load policies and lists, reload on SIGHUP or file change."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CollectorRegistry

from gateway.dns import fastpath
from gateway.dns.chain import Resolver
from gateway.dns.doh import DohHandler
from gateway.dns.dot import DotServer, ReloadableContext
from gateway.dns.rrl import Rrl
from gateway.dns.server import DnsServer
from gateway.http.guard import LISTENERS, ConnectionGuard, GuardedSite, Networks, WebMetrics
from gateway.http.health import metrics_app
from gateway.policy.identify import identify
from gateway.policy.quota_table import charged
from gateway.proxy.pac import pac_mount
from gateway.proxy.supervisor import ProxySupervisor, proxy_command
from gateway.runtime.metrics import Metrics, register_collectors
from gateway.runtime.querylog import QueryLogService
from gateway.runtime.quotas import QuotaKeeper
from gateway.runtime.reload import Reloading
from gateway.runtime.resolver import build_dns_server, build_resolver
from gateway.runtime.sdnotify import Notifier
from gateway.runtime.state import (
    Builder,
    Loaded,
    remove_stale_indexes,
    watched_files,
)
from gateway.runtime.web import Site, blockpage_app, gateway_url
from gateway.util.fingerprint import fingerprint

if TYPE_CHECKING:
    from gateway.blockpage.model import BlockInfo
    from gateway.compliance.selfprobe import ProbeResult
    from gateway.config.gateway import GatewayConfig
    from gateway.feeds.manager import FeedManager
    from gateway.hotline.service import ReportService
    from gateway.lists.catalog import Source
    from gateway.policy.subscribers import Subscribers
    from gateway.runtime.worker_stats import Deltas
    from gateway.runtime.workers import WorkerPool

log = logging.getLogger(__name__)


class Gateway(Reloading):
    """The running gateway: owns the resolver, listeners and the reload loop."""

    def __init__(self, config_path: Path, registry: CollectorRegistry | None = None,
                 notifier: Notifier | None = None) -> None:
        self.config_path = config_path
        self.notifier = notifier or Notifier()   # systemd Type=notify (a no-op elsewhere)
        self.registry = registry or CollectorRegistry()
        self.metrics = Metrics(self.registry)
        self.web_metrics = WebMetrics(self.registry, (*LISTENERS, "admin"))
        self.builder = Builder(config_path)
        self.loaded: Loaded | None = None
        self.resolver: Resolver | None = None
        self.rrl: Rrl | None = None             # UDP response rate limiting (limits.rrl)
        self.dns: DnsServer | None = None
        self.dot: DotServer | None = None
        self.web_tls: ReloadableContext | None = None
        self.runners: list[web.AppRunner] = []
        self._reload_lock = asyncio.Lock()
        self._watched: tuple[tuple[str, int, int, int], ...] = ()
        self._stop = asyncio.Event()
        self._ready = False
        self.feeds: FeedManager | None = None   # issue #3: central feeds (gateway/feeds/)
        self.reports: ReportService | None = None   # issue #5: block page reports
        self.background: list[asyncio.Task[None]] = []   # pollers stopped with the gateway
        self.workers: WorkerPool | None = None   # dns.workers > 1 (gateway/runtime/workers.py)
        self.worker_cache: dict[str, int] = {}
        self.proxy: ProxySupervisor | None = None   # issue #5: the proxy child process
        self.quotas: QuotaKeeper | None = None
        self.query_log: QueryLogService | None = None   # issue #14: networks' query_log

    def ready(self) -> bool:
        """Ready once lists are loaded and every listener is up (for /readyz)."""
        return self._ready

    async def start(self) -> None:
        """Metrics first (so /healthz answers while lists load), then lists, then DNS."""
        from gateway.config.gateway import load_config

        config = load_config(self.config_path)
        await self._serve_http(metrics_app(self.registry, self.ready), config.metrics_listen,
                               ConnectionGuard(config.limits.web, self.web_metrics, "metrics"))
        self.query_log = QueryLogService(config.state_dir, config.limits.query_log,
                                         self.registry, self._stop, self._log_retention,
                                         self.background)
        self.builder.query_log = self.query_log.hook
        loaded = await self.builder.build(None)
        self.quotas = QuotaKeeper(loaded.config, self.registry)   # game time (docs/quotas.md)
        self.background.append(asyncio.get_running_loop().create_task(
            self.quotas.run(self._stop)))
        self.resolver = build_resolver(loaded.config, loaded.view, self.metrics.dns,
                                       self.metrics.upstream_observer(), self.quotas.table)
        forwarder = self.resolver.forwarder
        self.metrics.init_upstreams([u.label for u in forwarder.upstreams]
                                    + self.resolver.zones.labels(), forwarder.open_sockets)
        workers = loaded.config.workers
        self.dns, rrl = build_dns_server(loaded.config, self.resolver,
                                         list(loaded.config.dns_listen), self.metrics.streams,
                                         reuse_port=workers > 1)
        self.rrl = rrl
        # dns.workers: the other processes' cache and RRL counters are added in (worker_cache)
        register_collectors(self.registry, self.metrics, self.resolver, rrl, self.worker_cache,
                            lambda: self.loaded)
        self._install(loaded)
        await self._start_feeds(loaded)
        self._start_subscribers_feed(loaded)
        self._start_list_refresh(loaded)
        await self.dns.start()
        if workers > 1:
            await self._start_workers(loaded)
        if loaded.config.dot is not None:
            dot = loaded.config.dot
            self.dot = DotServer(self.resolver, list(dot.listen),
                                 ReloadableContext(dot.cert, dot.key, ("dot",)),
                                 loaded.config.limits.dot, self.metrics.streams)
            await self.dot.start()
        doh = DohHandler(self.resolver,
                         lambda: self.loaded.config.trusted_frontends if self.loaded else ())
        if loaded.config.web_tls is not None:
            self.web_tls = ReloadableContext(loaded.config.web_tls.cert,
                                             loaded.config.web_tls.key, ("http/1.1",))
        pac = pac_mount(lambda: self.loaded.config if self.loaded else None)  # GET /proxy.pac
        guard = ConnectionGuard(loaded.config.limits.web, self.web_metrics, "web",
                                self._frontends,
                                self.web_tls.outer if self.web_tls is not None else None)
        await self._serve_http(blockpage_app(doh.add_routes, pac, site=await self._site(doh)),
                               loaded.config.web_listen, guard)
        await self._start_admin(loaded)
        if loaded.config.proxy.enabled:
            self.proxy = ProxySupervisor(proxy_command(self.config_path))
            self.proxy.start()
        # Everything loaded so far lives as long as the process: keep the cyclic GC from
        # walking it on every full collection (pauses of tens of ms under load otherwise).
        gc.collect()
        gc.freeze()
        self._ready = True
        self.notifier.ready(self._status())
        self.metrics.ready.set(1)
        log.info("SafeGate ready: %d networks, %d list entries (%s list lookup), %s fast path",
                 len(loaded.policy.networks), loaded.index.size,
                 "C" if loaded.index.accelerated else "pure-Python",
                 (self.resolver.fast if self.resolver else fastpath.PURE).name)

    def _log_retention(self) -> dict[str, int]:
        """Networks' query_log.retention_hours in the running policy."""
        networks = self.loaded.policy.networks if self.loaded else []
        return {n.name: n.query_log_hours for n in networks if n.query_log_hours}

    async def _start_admin(self, loaded: Loaded) -> None:
        """admin: the admin page on its own listener (gateway/admin/); a restart applies a
        change of admin.listen."""
        if loaded.config.admin is None:
            return
        from gateway.admin.app import admin_app
        from gateway.dns.tally import BlockedTally
        from gateway.runtime.admin_host import GatewayAdminHost, TallyCollector, harvest

        assert self.resolver is not None
        tally = BlockedTally(loaded.config.limits.admin.top_names)
        self.resolver.tally = tally
        self.registry.register(TallyCollector(tally))
        self.background.append(asyncio.get_running_loop().create_task(
            harvest(tally, self.resolver, self._stop)))
        host = GatewayAdminHost(self, self.ready, self.query_log, tally)
        await self._serve_http(admin_app(host, self.registry),
                               loaded.config.admin.listen,
                               ConnectionGuard(loaded.config.limits.web, self.web_metrics,
                                               "admin"))

    async def _start_workers(self, loaded: Loaded) -> None:
        """dns.workers > 1: the other resolver processes (gateway/runtime/workers.py)."""
        from gateway.runtime.worker_stats import add_deltas
        from gateway.runtime.workers import WorkerPool, snapshot_of

        def on_deltas(d: Deltas) -> None:
            add_deltas(self.metrics.dns, self.worker_cache, self.metrics, d)

        self.workers = WorkerPool(loaded.config.workers, self.config_path,
                                  list(loaded.config.dns_listen), on_deltas)
        await self.workers.start(snapshot_of(loaded, self.builder.overlays))

    def _publish(self) -> None:
        """Hand the state just swapped in to the workers (reload, feed update, schedule)."""
        if self.workers is not None and self.loaded is not None:
            from gateway.runtime.workers import snapshot_of

            self.workers.publish(snapshot_of(self.loaded, self.builder.overlays))

    def _start_subscribers_feed(self, loaded: Loaded) -> None:
        """Poll `subscribers.url` (issue #4); the file watch reloads what it validated."""
        source, path = loaded.config.subscribers_source, loaded.config.subscribers
        if source is None or path is None:
            return
        from gateway.runtime.subscribers_poll import SubscribersFeed, SubscribersFeedMetrics

        def tiers() -> list[str]:
            return list(self.loaded.policy.tiers) if self.loaded else []

        def prime(subs: Subscribers) -> None:
            self.builder.primed_subscribers = subs

        feed = SubscribersFeed(source, path, tiers, prime, SubscribersFeedMetrics(self.registry),
                               limits=loaded.config.limits.files)
        self.background.append(asyncio.get_running_loop().create_task(feed.run(self._stop)))

    def _start_list_refresh(self, loaded: Loaded) -> None:
        """Download lists.yaml `url:` sources (issue #14); the file watch reloads each copy."""
        from gateway.runtime.list_refresh import ListRefresher, ListRefreshMetrics

        def sources() -> list[Source]:
            return self.loaded.catalog.remote() if self.loaded else []

        metrics = ListRefreshMetrics(self.registry)
        for source in loaded.catalog.remote():
            metrics.init_list(source.name)
        refresher = ListRefresher(sources, metrics, loaded.config.limits.files)
        self.background.append(asyncio.get_running_loop().create_task(
            refresher.run(self._stop)))

    async def _start_feeds(self, loaded: Loaded) -> None:
        """Feeds' last-known-good copies go in force before DNS listens and readiness."""
        if loaded.config.feeds:
            from gateway.feeds.manager import FeedManager

            self.feeds = FeedManager(loaded.config, self, self.registry, self.metrics.dns)
            await self.feeds.start()

    async def _site(self, doh: DohHandler) -> Site:
        """The block page, reports and CA page, reading the running configuration."""
        from gateway.hotline.service import ReportService

        assert self.loaded is not None
        first = self.loaded

        def config() -> GatewayConfig:
            return (self.loaded or first).config

        self.reports = ReportService(config, self.registry)
        await self.reports.start()
        cfg = first.config
        url = gateway_url(cfg.blockpage_addresses[0] if cfg.blockpage_addresses
                          else cfg.web_listen[0][0], cfg.web_listen[0][1],
                          cfg.web_tls is not None)
        return Site(explain=self.explain_host, client_address=doh.client_address,
                    report_url=lambda: url + "/report", timezone=lambda: config().timezone,
                    ca_dir=lambda: config().proxy.ca_dir, desk=self.reports.desk)

    def explain_host(self, client: str, host: str) -> BlockInfo | None:
        """Why `host` is blocked for `client` right now (the block page's "why"): the query
        path's identify() and decide; "not blocked" when they let it through, None if unknown.
        """
        from gateway.blockpage.model import from_verdict, not_blocked
        from gateway.util.names import normalize_name

        if self.loaded is None:
            return None
        profile = identify(self.loaded.view, client).profile
        try:
            key = normalize_name(host)
        except ValueError:
            return None
        if profile is None:
            return None
        verdict = profile.decide(key)
        if verdict.reason == "quota" and self.quotas is not None:   # used up for this client?
            verdict = charged(self.quotas.table, profile, verdict, client, peek=True)
        basis = None
        if verdict.ref and self.feeds is not None:
            basis = self.feeds.ledger.legal_basis(verdict.ref)
        return from_verdict(host, verdict, profile.tier, basis) or not_blocked(host, profile.tier)

    def _install(self, loaded: Loaded) -> None:
        assert self.resolver is not None
        self.resolver.swap(loaded.view)
        if self.quotas is not None:
            self.quotas.configure(loaded.config, loaded.policy)
        if self.rrl is not None and (self.loaded is None
                                     or self.loaded.config.limits.rrl != loaded.config.limits.rrl):
            self.rrl.configure(loaded.config.limits.rrl)
        self.loaded = loaded
        self._watched = fingerprint(watched_files(self.config_path, loaded))
        self.metrics.reloads.labels("success").inc()
        self.metrics.last_reload_success.set(time.time())
        self.metrics.last_reload_ok.set(1)
        self._publish()
        remove_stale_indexes(loaded.config.state_dir, loaded.index_path)

    def _frontends(self) -> Networks:
        """dns.trusted_frontends of the running configuration (exempt from per-client caps)."""
        return self.loaded.config.trusted_frontends if self.loaded else ()

    async def _serve_http(self, app: web.Application, listen: tuple[tuple[str, int], ...],
                          guard: ConnectionGuard) -> None:
        """An aiohttp app on every `listen` address under limits.web (connection caps and
        deadlines; TLS if the guard has a context). One guard for all of them: a client's
        connections over IPv4 and IPv6 count against the same caps."""
        guard.install(app)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        self.runners.append(runner)     # cleaned up by stop() even if a later bind fails
        for host, port in listen:
            site = GuardedSite(runner, host, port, guard)
            await site.start()
            log.info("%s listening on %s/", guard.listener, site.name)   # where to browse

    async def probe(self, name: str) -> ProbeResult:
        """Ask the live query path about `name` from one client address of every network."""
        assert self.loaded is not None and self.resolver is not None
        if self.workers is not None:
            # Enforced means enforced by every process answering on this node.
            generation = self.loaded.view.generation
            if not await self.workers.wait_applied(generation):
                log.warning("not every DNS worker serves generation %d yet", generation)
        # Imported here: only feeds' self-probes ask, and it brings dnslib (~0.5 MB of RSS).
        from gateway.compliance.selfprobe import probe_name

        return await probe_name(self.resolver, self.loaded.policy, name)

    async def run_forever(self) -> None:
        loop = asyncio.get_running_loop()
        reloads: set[asyncio.Task[bool]] = set()

        def on_hup() -> None:
            task = loop.create_task(self.reload("SIGHUP"))
            reloads.add(task)
            task.add_done_callback(reloads.discard)

        loop.add_signal_handler(signal.SIGHUP, on_hup)
        loop.add_signal_handler(signal.SIGTERM, self._stop.set)
        loop.add_signal_handler(signal.SIGINT, self._stop.set)
        await self.start()
        watcher = loop.create_task(self.watch())
        timer = loop.create_task(self.schedule_timer())
        watchdog = loop.create_task(self.notifier.watchdog(self._stop))
        await self._stop.wait()
        log.info("shutting down")
        self.notifier.stopping()
        watcher.cancel()
        timer.cancel()
        await asyncio.gather(watcher, timer, watchdog, *reloads, return_exceptions=True)
        await self.stop()

    async def stop(self) -> None:
        self._stop.set()
        if self.workers is not None:
            await self.workers.stop()
            self.workers = None
        if self.proxy is not None:
            await self.proxy.stop()
            self.proxy = None
        await asyncio.gather(*self.background, return_exceptions=True)
        self.background.clear()
        if self.feeds is not None:
            await self.feeds.stop()
            self.feeds = None
        if self.dns is not None:
            await self.dns.stop()
        if self.dot is not None:
            await self.dot.stop()
        if self.resolver is not None:
            self.resolver.close()
        for runner in self.runners:
            await runner.cleanup()
        if self.reports is not None:
            await self.reports.stop()
            self.reports = None
        if self.loaded is not None:
            remove_stale_indexes(self.loaded.config.state_dir, None)


def run(config_path: Path) -> int:
    """Run until SIGTERM/SIGINT; uvloop when installed (about 2x the QPS of plain asyncio)."""
    gateway = Gateway(config_path)
    try:
        import uvloop
    except ImportError:
        asyncio.run(gateway.run_forever())
    else:
        uvloop.run(gateway.run_forever())
    return 0
