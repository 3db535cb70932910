"""`safegate proxy`: mitmproxy as a library in this process, SafeGate's addon, reload, metrics.

The process is separate from the resolver's on purpose: mitmproxy keeps global state (its
`ctx`, its event loop hooks), and a stuck TLS handshake must never delay a DNS answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CollectorRegistry

from gateway.config.gateway import GatewayConfig
from gateway.config.proxy import ProxyConfig
from gateway.errors import ConfigError, ConfigErrors, SafeGateError
from gateway.feeds.proxyprobe import remove_verdicts, write_verdicts
from gateway.http.health import metrics_app
from gateway.proxy import sources
from gateway.proxy.addon import SafeGateAddon
from gateway.proxy.intercept import write_intercept_file
from gateway.proxy.metrics import ProxyMetrics
from gateway.proxy.page import BlockPages
from gateway.proxy.resolve import UpstreamResolver
from gateway.proxy.scan import build_index
from gateway.proxy.selfprobe import HashProbe, probe_feeds
from gateway.util.fingerprint import Fingerprint

if TYPE_CHECKING:
    from mitmproxy.tools.dump import DumpMaster

    from gateway.hotline.store import ReportStore
    from gateway.proxy.hashes import HashIndex, HashMatch

log = logging.getLogger(__name__)

STEER_TARGET = "steered.invalid"   # placeholder destination; the SNI / Host header replaces it


def mode_specs(proxy: ProxyConfig) -> list[str]:
    """mitmproxy mode specs: the explicit proxy, and a reverse listener per steered scheme
    (its target is a placeholder: each connection's SNI or Host header names the real one)."""
    host, port = proxy.listen
    specs = [f"regular@{host}:{port}"]
    ports = dict(proxy.origin_ports)
    for scheme, (shost, sport) in proxy.intercept_listen:
        specs.append(f"reverse:{scheme}://{STEER_TARGET}:{ports[scheme]}@{shost}:{sport}")
    return specs


def options_for(config: GatewayConfig) -> dict[str, Any]:
    """mitmproxy options; why each one is set is said beside it."""
    proxy = config.proxy
    opts: dict[str, Any] = {
        "mode": mode_specs(proxy),
        "confdir": str(proxy.ca_dir),            # the CA lives (and is generated) here
        "connection_strategy": "lazy",           # steered: the destination is known from SNI
        "keep_host_header": True,                # steered: never rewrite Host to the placeholder
        "block_global": False,                   # who may use the proxy: our networks decide
        "stream_large_bodies": str(max(2 * proxy.max_image_bytes, 8 * 1024 * 1024)),
        "http3": False,                          # QUIC is not intercepted: browsers fall back
    }
    if proxy.upstream_ca is not None:
        opts["ssl_verify_upstream_trusted_ca"] = str(proxy.upstream_ca)
    return opts


class ProxyProcess:
    """Owns the master, the addon, the rule reloads and the metrics listener."""

    def __init__(self, config_path: Path, registry: CollectorRegistry | None = None) -> None:
        self.config_path = config_path
        self.registry = registry or CollectorRegistry()
        self.metrics = ProxyMetrics(self.registry)
        self.loaded: sources.ProxyState | None = None
        self.addon: SafeGateAddon | None = None
        self.master: DumpMaster | None = None
        self.reports: ReportStore | None = None
        self._watched: Fingerprint = ()
        self._ready = False
        self._intercept: tuple[Path, list[str], str] | None = None
        self._generation = 0
        self._tasks: set[asyncio.Task[bool]] = set()   # SIGHUP reloads in flight
        self.hash_probe = HashProbe()
        self._reports: set[asyncio.Task[None]] = set()

    def ready(self) -> bool:
        return self._ready

    def mark_ready(self) -> None:
        self._ready = True
        self._publish_intercept()
        if self.loaded is not None and self.addon is not None:
            task = asyncio.get_running_loop().create_task(
                self.report_verdicts(self.loaded, self.addon.hash_index))
            self._reports.add(task)
            task.add_done_callback(self._reports.discard)

    def _publish_intercept(self) -> None:
        """Tell the resolver what to steer here, but only once the listeners are bound: a
        name steered to a proxy that does not listen yet would fail to connect."""
        if self._ready and self._intercept is not None:
            state_dir, hosts, why = self._intercept
            write_intercept_file(state_dir, hosts, why)

    async def build(self) -> tuple[sources.ProxyState, HashIndex | None]:
        """Build aside (a worker thread): lists, feeds, policies, the hash index."""
        self._generation += 1
        loaded = await asyncio.to_thread(sources.build, self.config_path, self._generation)
        index = await asyncio.to_thread(build_index, loaded.rules.hash_entries,
                                        loaded.config.proxy.max_image_bytes)
        return loaded, index

    def install(self, loaded: sources.ProxyState, index: HashIndex | None) -> None:
        """Swap the rules in and publish the intercept set for the resolver's DNS steering."""
        if self.addon is not None:
            self.addon.swap(loaded.rules, index)
        self.loaded = loaded
        self._watched = sources.watch_state(loaded)
        hosts = sources.intercept_set(loaded)
        self._intercept = (loaded.config.state_dir, hosts,
                           f"generation {loaded.rules.generation}")
        self._publish_intercept()
        self.metrics.rules_generation.set(loaded.rules.generation)
        self.metrics.url_entries.set(loaded.rules.urls.size)
        self.metrics.intercept_hosts.set(len(hosts))
        log.info("proxy rules generation %d: %d URL entries, %d hash entries, %d names to "
                 "intercept", loaded.rules.generation, loaded.rules.urls.size,
                 len(loaded.rules.hash_entries), len(hosts))

    async def reload(self, why: str) -> bool:
        log.info("proxy: reloading rules (%s)", why)
        try:
            loaded, index = await self.build()
        except (ConfigError, ConfigErrors, SafeGateError, OSError, ValueError) as exc:
            for line in str(exc).splitlines():
                log.error("proxy reload failed, keeping the rules in force: %s", line)
            self._reload_failed()
            return False
        except Exception:
            # Whatever else: the rules in force stay, and so does the watcher that calls us.
            log.exception("proxy reload failed unexpectedly, keeping the rules in force")
            self._reload_failed()
            return False
        self.install(loaded, index)
        if self._ready:   # else mark_ready reports, once the listeners are bound
            await self.report_verdicts(loaded, index)
        return True

    async def report_verdicts(self, loaded: sources.ProxyState, index: HashIndex | None) -> None:
        """Self-probe the feed entries of the rule set just swapped in (a worker thread: pure
        lookups) and tell the gateway (gateway/feeds/proxyprobe.py)."""
        try:
            verdicts = await asyncio.to_thread(probe_feeds, loaded.rules, loaded.tiers, index,
                                               loaded.feeds, self.hash_probe)
            write_verdicts(loaded.config.state_dir, loaded.rules.generation, verdicts)
        except Exception:   # the rules are in force either way; the gateway probes again
            log.exception("proxy self-probe of feed entries failed")

    def _reload_failed(self) -> None:
        self.metrics.reload_failures.inc()
        if self.loaded is not None:
            self._watched = sources.watch_state(self.loaded)  # wait for the next change

    async def watch(self, stop: asyncio.Event) -> None:
        """Poll the mtimes of every file the rules came from (lists, feeds, policies)."""
        while not stop.is_set():
            interval = self.loaded.config.watch_interval if self.loaded else 2.0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)
            try:
                if self.loaded is not None and sources.watch_state(self.loaded) != self._watched:
                    await self.reload("files changed")
            except Exception:
                log.exception("proxy file watcher: reload failed; still watching")
                self.metrics.reload_failures.inc()

    def on_match(self, url: str, match: HashMatch) -> None:
        """An image matched: a report record (URL, entry id), never the image."""
        log.warning("image matched %s entry %s; replaced", match.type, match.entry.id)
        if self.reports is None or self.loaded is None:
            return
        from gateway.feedformat.hotline import KINDS, MAX_TARGET, from_form

        cfg = self.loaded.config
        form = {"kind": "match", "target": url[:MAX_TARGET], "category": match.entry.category,
                "entry_id": match.entry.id}
        try:
            report = from_form(form, gateway=cfg.gateway_id, now=datetime.now(UTC), kinds=KINDS)
            self.reports.add(report, cfg.reports.forward_to)
        except Exception as exc:  # sqlite busy or disk full: the image is replaced anyway
            log.error("hash match report not stored: %s", exc)

    async def run(self) -> int:
        from mitmproxy import options
        from mitmproxy.tools.dump import DumpMaster

        from gateway.hotline.guard import CsrfTokens, load_secret
        from gateway.hotline.store import FILENAME, ReportStore

        loaded, index = await self.build()
        config = loaded.config
        config.proxy.ca_dir.mkdir(parents=True, exist_ok=True)
        self.reports = ReportStore(config.state_dir / FILENAME)
        tokens = CsrfTokens(load_secret(config.state_dir), config.limits.reports.token_lifetime)
        resolver = UpstreamResolver.from_config(config)
        self.addon = SafeGateAddon(loaded.rules, resolver, self.metrics,
                                   BlockPages(config, tokens.issue),
                                   dict(config.proxy.origin_ports),
                                   config.proxy.max_image_bytes, self.on_match, index)
        self.install(loaded, index)
        # The same connection limits as the gateway's listeners (gateway/http/guard.py).
        from gateway.http.guard import ConnectionGuard, GuardedSite, WebMetrics

        app = metrics_app(self.registry, self.ready)
        guard = ConnectionGuard(config.limits.web, WebMetrics(self.registry, ("metrics",)),
                                "metrics")
        guard.install(app)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        host, port = config.proxy.metrics_listen
        await GuardedSite(runner, host, port, guard).start()
        master = DumpMaster(options.Options(), with_termlog=False, with_dumper=False)
        master.options.update(**options_for(config))  # type: ignore[no-untyped-call]
        master.addons.add(self.addon, _Ready(self))  # type: ignore[no-untyped-call]
        self.master = master
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, master.shutdown)
        loop.add_signal_handler(signal.SIGHUP, lambda: self._spawn_reload(loop))
        watcher = loop.create_task(self.watch(stop))
        try:
            await master.run()
        finally:
            stop.set()
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            await runner.cleanup()
            remove_verdicts(config.state_dir)
            resolver.close()
            self.reports.close()
        return 0

    def _spawn_reload(self, loop: asyncio.AbstractEventLoop) -> None:
        task = loop.create_task(self.reload("SIGHUP"))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


class _Ready:
    """mitmproxy calls `running` once every listener is bound: then /readyz says ready."""

    def __init__(self, process: ProxyProcess) -> None:
        self.process = process

    def running(self) -> None:
        self.process.mark_ready()
        log.info("SafeGate proxy ready: %s", ", ".join(
            mode_specs(self.process.loaded.config.proxy) if self.process.loaded else []))


def run(config_path: Path) -> int:
    """Run until SIGTERM/SIGINT."""
    return asyncio.run(ProxyProcess(config_path).run())
