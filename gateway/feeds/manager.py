"""Runs the gateway's feeds: clients, self-probes, ack senders, hourly stats, confirmations.

Created by Gateway.start() once the lists are loaded and before readiness is reported, so the
last-known-good copy of every feed is enforced before the gateway says it is ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
from prometheus_client import CollectorRegistry

from gateway.config.gateway import GatewayConfig
from gateway.feeds.acks import AckOutcomes, AckSender, AckTarget, acks_url
from gateway.feeds.client import FeedClient
from gateway.feeds.context import OverlayTarget
from gateway.feeds.hold import held_paths
from gateway.feeds.ledger import DNS_TYPES, Ledger, LedgerEntry, ProbeRecord
from gateway.feeds.proxyprobe import PENDING, ProxyVerdicts
from gateway.feeds.stats import FeedMetrics, HourlyStats, QueryCounts
from gateway.feeds.verdict import PolicyInForce, SelfProbeOutcome, probe_verdict

log = logging.getLogger(__name__)

# Delays before each retry of a probe that did not see the entry blocked (10 tries in all).
RETRY_DELAYS = (0.2, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)
FAILED_RECHECK = 300.0       # after the tries: probe a failed entry again every 5 min
REVERIFY_EVERY = 600.0       # re-probe verified mandatory entries (a regression must show)
HOUSEKEEPING_EVERY = 1.0     # confirmation markers; gauges every GAUGES_EVERY
GAUGES_EVERY = 30.0
PROBE_BATCH = 256            # due probes stored per ledger transaction
PROBE_YIELD_EVERY = 32       # probes between turns given to the event loop


class GatewayLike(OverlayTarget, Protocol):
    """What the manager needs from the running Gateway."""

    @property
    def loaded(self) -> PolicyInForce | None: ...

    async def probe(self, name: str) -> SelfProbeOutcome: ...


@dataclass(order=True)
class _Job:
    due: float
    seq: int
    feed: str
    entry_id: str
    attempt: int


class Prober:
    """Schedules self-probes of applied DNS entries and records what they saw."""

    def __init__(self, gateway: GatewayLike, ledger: Ledger, metrics: FeedMetrics,
                 acks: dict[str, AckTarget | None], serials: Callable[[str], int],
                 clock: Callable[[], float] = time.time,
                 retry_delays: tuple[float, ...] = RETRY_DELAYS,
                 recheck: float = FAILED_RECHECK, proxy: ProxyVerdicts | None = None) -> None:
        self.gateway = gateway
        self.proxy = proxy            # URL/hash entries: the proxy's verdicts (proxyprobe.py)
        self.ledger = ledger
        self.metrics = metrics
        self.acks = acks
        self.serials = serials
        self.clock = clock
        self.retry_delays = retry_delays
        self.recheck = recheck
        self._heap: list[_Job] = []
        self._current: dict[tuple[str, str], int] = {}
        self._seq = 0
        self.wake = asyncio.Event()

    def schedule(self, feed: str, entries: list[LedgerEntry], delay: float = 0.0) -> None:
        now = self.clock()
        for e in entries:
            self._push(feed, e.entry_id, 0, now + delay)
        self.wake.set()

    def _push(self, feed: str, entry_id: str, attempt: int, due: float) -> None:
        self._seq += 1
        self._current[(feed, entry_id)] = self._seq
        heapq.heappush(self._heap, _Job(due, self._seq, feed, entry_id, attempt))

    def next_delay(self, attempt: int) -> tuple[float, bool]:
        """(seconds to the next probe after a failed `attempt`, whether we have given up)."""
        if attempt < len(self.retry_delays):
            return self.retry_delays[attempt], False
        return self.recheck, True

    async def run(self) -> None:
        while True:
            while self._heap and self._current.get(
                    (self._heap[0].feed, self._heap[0].entry_id)) != self._heap[0].seq:
                heapq.heappop(self._heap)     # superseded by a newer schedule
            timeout = self._heap[0].due - self.clock() if self._heap else 3600.0
            if timeout > 0:
                self.wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), timeout)
                continue
            now = self.clock()
            batch: list[_Job] = []
            while self._heap and len(batch) < PROBE_BATCH and self._heap[0].due <= now:
                job = heapq.heappop(self._heap)
                if self._current.get((job.feed, job.entry_id)) == job.seq:
                    del self._current[(job.feed, job.entry_id)]
                    batch.append(job)
            await self.probe_batch(batch)
            # A blocked name is answered without awaiting anything: without this a 100k-entry
            # update would be probed in one go while no DNS query is served.
            await asyncio.sleep(0)

    async def probe(self, job: _Job) -> None:
        await self.probe_batch([job])

    async def probe_batch(self, jobs: list[_Job]) -> None:
        """Probe each job's entry, then store all results in one ledger transaction."""
        done: list[tuple[_Job, LedgerEntry, str]] = []
        for n, job in enumerate(jobs):
            entry = self.ledger.get(job.feed, job.entry_id)
            if entry is None or not entry.probed or entry.removed_at is not None:
                continue
            try:
                result = await self._verdict(job.feed, entry)
            except Exception:  # a probe must never stop the prober
                log.exception("probe of %s failed", entry.value)
                result = "error"
            if result is None:
                continue  # no network's tier blocks its categories: nothing to verify
            if result == PENDING:   # the proxy has not loaded it yet: ask again, record nothing
                self._push(job.feed, job.entry_id, job.attempt + 1,
                           self.clock() + self.next_delay(job.attempt)[0])
                continue
            done.append((job, entry, result))
            if n % PROBE_YIELD_EVERY == PROBE_YIELD_EVERY - 1:
                await asyncio.sleep(0)
        if not done:
            return
        now = self.clock()
        records = []
        for job, _entry, result in done:
            gave_up = False if result == "blocked" else self.next_delay(job.attempt)[1]
            records.append(ProbeRecord(job.feed, job.entry_id, result, now, gave_up,
                                       self.acks.get(job.feed), self.serials(job.feed)))
        outcomes = self.ledger.record_probes(records)
        for (job, entry, result), (new, latency) in zip(done, outcomes, strict=True):
            self._after_probe(job, entry, result, new, latency)

    async def _verdict(self, feed: str, entry: LedgerEntry) -> str | None:
        if entry.type in DNS_TYPES:
            return probe_verdict(await self.gateway.probe(entry.value), entry,
                                 self.gateway.loaded)
        if self.proxy is None:
            return "error"
        return self.proxy.verdict(feed, entry.entry_id, entry.serial)

    def _after_probe(self, job: _Job, entry: LedgerEntry, result: str, new: str | None,
                     latency: float | None) -> None:
        self.metrics.probes.labels(result).inc()
        if latency is not None:
            self.metrics.latency.labels(job.feed).observe(latency)
        if new == "failed":
            log.error("feed %s: entry %s (%s) is still not blocked after %d probes; probing "
                      "again every %.0fs", job.feed, job.entry_id, entry.value, job.attempt + 1,
                      self.recheck)
        elif new == "verified" and entry.verified_at is not None:
            log.warning("feed %s: entry %s (%s) is blocked again", job.feed, job.entry_id,
                        entry.value)
        elif result != "blocked" and entry.outcome == "verified":
            log.warning("feed %s: verified entry %s (%s) probed %s", job.feed, job.entry_id,
                        entry.value, result)
        if result != "blocked":
            self._push(job.feed, job.entry_id, job.attempt + 1,
                       self.clock() + self.next_delay(job.attempt)[0])

    def reverify(self, feeds: list[str]) -> int:
        """Queue every verified mandatory DNS entry for a fresh probe."""
        n = 0
        for feed in feeds:
            due = [e for e in self.ledger.entries(feed)
                   if e.mandatory and e.outcome == "verified" and e.probed]
            for e in due:
                if (feed, e.entry_id) not in self._current:
                    self._push(feed, e.entry_id, 0, self.clock())
                    n += 1
        self.wake.set()
        return n

    def pending(self) -> int:
        return len(self._current)


class FeedManager:
    """Owns every feed's background task; start() applies last-known-good copies first."""

    def __init__(self, config: GatewayConfig, gateway: GatewayLike, registry: CollectorRegistry,
                 dns_stats: QueryCounts | None = None,
                 session: aiohttp.ClientSession | None = None,
                 clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], Awaitable[None]] | None = None,
                 reverify_every: float = REVERIFY_EVERY) -> None:
        self.config = config
        self.gateway = gateway
        self.metrics = FeedMetrics(registry)
        self.dns_stats = dns_stats
        self.clock = clock
        self.sleep = sleep
        self.reverify_every = reverify_every
        self._session = session
        self._own_session = session is None
        self.ledger = Ledger(config.state_dir / "ledger.sqlite3", clock)
        self.clients: dict[str, FeedClient] = {}
        self.senders: list[AckSender] = []
        self.tasks: list[asyncio.Task[Any]] = []
        self.stats: HourlyStats | None = None
        self.prober: Prober | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    async def start(self, background: bool = True) -> None:
        """Apply every feed's stored copy (no network), then start polling in the background.

        background=False sets everything up without starting tasks (tests drive them).
        """
        cfg = self.config
        acks: dict[str, AckTarget | None] = {}
        for f in cfg.feeds:
            acks[f.name] = AckTarget(acks_url(f.url), cfg.gateway_id, f.name,
                                     cfg.report_stats) if f.acks else None
        proxy = cfg.proxy.enabled
        self.prober = Prober(self.gateway, self.ledger, self.metrics, acks,
                             lambda feed: self.clients[feed].serial, self.clock,
                             proxy=ProxyVerdicts(cfg.state_dir) if proxy else None)
        for f in cfg.feeds:
            client = FeedClient(f, cfg.feed_guard, self.gateway, self.session, self.ledger,
                                self.metrics, cfg.state_dir, acks[f.name],
                                on_applied=self.prober.schedule, clock=self.clock,
                                sleep=self.sleep, max_bytes=cfg.limits.files.feed_bytes,
                                proxy=proxy)
            self.clients[f.name] = client
            client.load_local()
            target = acks[f.name]
            if target is not None:
                outcomes = AckOutcomes(self.metrics, cfg.state_dir)
                outcomes.init(f.name)
                self.senders.append(AckSender(self.ledger, target, cfg.gateway_token,
                                              self.session, self.metrics.outbox_pending,
                                              self.clock, on_result=outcomes))
        # Entries applied before a restart but never verified are probed again now.
        for name in self.clients:
            self.prober.schedule(name, [e for e in self.ledger.entries(name)
                                        if e.probed and e.verified_at is None])
        if self.dns_stats is not None:
            self.stats = HourlyStats(self.dns_stats, self.ledger, self.clock, self._hour_closed)
        if not background:
            return
        self._spawn(self.prober.run(), "prober")
        for client in self.clients.values():
            self._spawn(client.run(), f"feed {client.name}")
        for sender in self.senders:
            self._spawn(sender.run(), f"acks {sender.target.feed}")
        self._spawn(self._housekeeping(), "feed housekeeping")

    def _spawn(self, coro: Coroutine[Any, Any, None], what: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=what)
        task.add_done_callback(self._crashed)
        self.tasks.append(task)

    @staticmethod
    def _crashed(task: asyncio.Task[Any]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("%s stopped: %r", task.get_name(), task.exception(),
                      exc_info=task.exception())

    def _hour_closed(self, hour: int) -> None:
        targets = [(c.ack, c.serial) for c in self.clients.values()
                   if c.ack is not None and c.ack.report_stats]
        self.ledger.enqueue_stats(hour, [(t, s) for t, s in targets if t is not None])
        self.ledger.prune(self.clock())

    def check_confirmations(self) -> int:
        """Apply held updates whose confirm marker `safegate feeds confirm` wrote."""
        n = 0
        for client in self.clients.values():
            marker = held_paths(self.config.state_dir, client.name)[3]
            if client.busy or not marker.exists():
                continue   # busy: an update is being applied; the marker waits a second
            try:
                held_id = marker.read_text().strip()
            except OSError:
                continue
            with contextlib.suppress(OSError):
                marker.unlink()
            if client.confirm(held_id):
                n += 1
        return n

    def update_gauges(self) -> None:
        now = self.clock()
        for name in self.clients:
            self.metrics.overdue.labels(name).set(self.ledger.overdue(name, now))
        self.metrics.outbox_pending.set(self.ledger.outbox_pending())

    async def _housekeeping(self) -> None:
        sleep = self.sleep or asyncio.sleep
        last_gauges = last_reverify = self.clock()
        self.update_gauges()
        while True:
            await sleep(HOUSEKEEPING_EVERY)
            now = self.clock()
            self.check_confirmations()
            if now - last_gauges >= GAUGES_EVERY:
                self.update_gauges()
                last_gauges = now
            if now - last_reverify >= self.reverify_every and self.prober is not None:
                self.prober.reverify(list(self.clients))
                last_reverify = now
            if self.stats is not None:
                self.stats.tick()

    def config_changed(self, new: GatewayConfig) -> bool:
        """Feeds are set up at start: say so when a reload changes their configuration."""
        old = self.config
        changed = (old.feeds, old.feed_guard, old.gateway_id, old.gateway_token,
                   old.report_stats) != (new.feeds, new.feed_guard, new.gateway_id,
                                         new.gateway_token, new.report_stats)
        if changed:
            log.warning("feeds, feed_guard or gateway settings changed: restart SafeGate for "
                        "them to apply (the feeds keep running with the old settings)")
        return changed

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.tasks.clear()
        if self.stats is not None:
            with contextlib.suppress(Exception):
                self.stats.flush()   # the partial hour; added to on the next start
        if self._own_session and self._session is not None:
            await self._session.close()
        self.ledger.close()
