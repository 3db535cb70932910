"""`dns.workers: N`: N resolver processes on one node, sharing the DNS sockets (SO_REUSEPORT).

The primary process keeps the whole control plane (reloads, list compiles, feeds, the web and
metrics listeners, DoT/DoH) and runs one resolver itself; it starts N-1 DNS-only workers. What
a worker serves is pushed to it over a pipe as a `Snapshot` (config, policy, subscribers,
intercept set, feed overlays and the path of the compiled list index), and the worker builds
the same View the primary built: the index file is mmap'd read-only by every process, so the
page cache holds it once. Each snapshot carries the view generation; a worker acknowledges a
generation once it serves it, and the primary does not report an entry enforced (self-probe,
ack to the publisher) before every worker has acknowledged it.

Workers send their counters (queries, latency, cache, upstream) to the primary every second
as deltas, which the primary adds to its own: /metrics shows the node, not one process.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import multiprocessing
import multiprocessing.connection
import signal
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from gateway.config.gateway import GatewayConfig
from gateway.config.limits import RrlLimits
from gateway.dns.cache import AnswerCache
from gateway.dns.chain import Resolver
from gateway.dns.rrl import Rrl
from gateway.dns.server import DnsServer
from gateway.dns.stats import DnsStats, StreamStats
from gateway.dns.upstream import Forwarder
from gateway.dns.upstream_base import UpstreamObserver, upstreams_from
from gateway.lists.index import ListIndex
from gateway.lists.overlay import Overlay
from gateway.policy.policyfile import Policy
from gateway.policy.subscribers import Subscribers

log = logging.getLogger(__name__)

STATS_INTERVAL = 1.0


@dataclass
class Snapshot:
    """Everything a worker needs to build the primary's current View."""

    generation: int
    config: GatewayConfig
    policy: Policy
    index_path: Path
    overlays: dict[str, Overlay]
    intercept: frozenset[bytes]
    built_at: datetime
    subscribers: Subscribers | None = None   # None with `same_subscribers`: keep the last one
    same_subscribers: bool = False


@dataclass
class Deltas:
    """What a worker counted since its last report."""

    queries: dict[tuple[str, str, str, str], int] = field(default_factory=dict)
    buckets: list[int] = field(default_factory=list)
    duration_sum: float = 0.0
    cache: dict[str, int] = field(default_factory=dict)
    upstream_queries: dict[tuple[str, str], int] = field(default_factory=dict)
    upstream_errors: dict[tuple[str, str], int] = field(default_factory=dict)
    upstream_latency: list[tuple[str, float]] = field(default_factory=list)
    upstream_mismatched: dict[tuple[str, str], int] = field(default_factory=dict)
    upstream_dropped: dict[str, int] = field(default_factory=dict)
    worker: int = 0
    upstream_sockets: int = 0                # open now (a gauge, not a delta)
    rrl: dict[str, int] = field(default_factory=dict)   # slipped, dropped, buckets (as deltas)
    streams: dict[str, dict[Any, int]] = field(default_factory=dict)  # StreamStats changes


class _Observer(UpstreamObserver):
    """A worker's upstream counters, drained into Deltas each second."""

    def __init__(self) -> None:
        self.queries: defaultdict[tuple[str, str], int] = defaultdict(int)
        self.errors: defaultdict[tuple[str, str], int] = defaultdict(int)
        self.latencies: list[tuple[str, float]] = []
        self.mismatched: defaultdict[tuple[str, str], int] = defaultdict(int)
        self.dropped_: defaultdict[str, int] = defaultdict(int)

    def query(self, upstream: str, protocol: str) -> None:
        self.queries[(upstream, protocol)] += 1

    def error(self, upstream: str, reason: str) -> None:
        self.errors[(upstream, reason)] += 1

    def latency(self, upstream: str, seconds: float) -> None:
        if len(self.latencies) < 10_000:   # bounded between reports
            self.latencies.append((upstream, seconds))

    def mismatch(self, upstream: str, reason: str) -> None:
        self.mismatched[(upstream, reason)] += 1

    def dropped(self, reason: str) -> None:
        self.dropped_[reason] += 1


# ---------------------------------------------------------------- the primary's side


class WorkerPool:
    """The primary's handle on its N-1 worker processes."""

    def __init__(self, count: int, config_path: Path, listen: list[tuple[str, int]],
                 on_deltas: Callable[[Deltas], None]) -> None:
        self.count = count
        self.config_path = config_path
        self.listen = listen
        self.on_deltas = on_deltas
        self.ctx = multiprocessing.get_context("spawn")
        self.procs: list[Any] = []
        self.conns: list[multiprocessing.connection.Connection] = []
        self.applied: list[int] = []
        self._changed = asyncio.Event()
        self._last_subscribers: Subscribers | None = None
        self._snapshot: Snapshot | None = None
        self._stopping = False
        self._restarts: set[asyncio.Task[None]] = set()

    async def start(self, snapshot: Snapshot, timeout: float = 60.0) -> None:
        """Start the workers on `snapshot`; returns once every one serves it."""
        for i in range(1, self.count):
            self.procs.append(None)
            self.conns.append(None)  # type: ignore[arg-type]
            self.applied.append(0)
            self._spawn(i - 1)
        self.publish(snapshot)
        await self.wait_applied(snapshot.generation, timeout)
        log.info("%d DNS worker processes serving generation %d", self.count - 1,
                 snapshot.generation)

    def _spawn(self, i: int) -> None:
        parent, child = self.ctx.Pipe()
        proc = self.ctx.Process(target=worker_main, name=f"safegate-worker-{i + 1}",
                                args=(child, i + 1, self.listen),
                                daemon=True)
        proc.start()
        child.close()
        self.procs[i] = proc
        self.conns[i] = parent
        self.applied[i] = 0
        asyncio.get_running_loop().add_reader(parent.fileno(), self._receive, i)

    def publish(self, snapshot: Snapshot) -> None:
        """Send a new state to every worker (subscribers only when they changed)."""
        self._snapshot = snapshot
        if snapshot.subscribers is self._last_subscribers and snapshot.subscribers is not None:
            snapshot = dataclasses.replace(snapshot, subscribers=None, same_subscribers=True)
        else:
            self._last_subscribers = snapshot.subscribers
        for conn in self.conns:
            self._send(conn, snapshot)

    def _send(self, conn: multiprocessing.connection.Connection, snapshot: Snapshot) -> None:
        try:
            conn.send(("state", snapshot))
        except (BrokenPipeError, OSError) as exc:
            log.error("a DNS worker is gone: %s", exc)

    async def _restart(self, i: int) -> None:
        """A worker died: its socket went with it (the others keep answering); start anew."""
        await asyncio.sleep(1.0)
        if self._stopping or self._snapshot is None:
            return
        log.warning("restarting DNS worker %d", i + 1)
        self._spawn(i)
        self._send(self.conns[i], self._snapshot)   # whole state, subscribers included

    def _receive(self, i: int) -> None:
        conn = self.conns[i]
        try:
            kind, payload = conn.recv()
        except (EOFError, OSError):
            loop = asyncio.get_running_loop()
            loop.remove_reader(conn.fileno())
            conn.close()
            self.procs[i].join(1)
            if not self._stopping:
                log.error("DNS worker %d exited (exit code %s)", i + 1, self.procs[i].exitcode)
                task = loop.create_task(self._restart(i))
                self._restarts.add(task)
                task.add_done_callback(self._restarts.discard)
            self.applied[i] = -1
            self._changed.set()
            return
        if kind == "applied":
            self.applied[i] = int(payload)
            self._changed.set()
        elif kind == "stats":
            self.on_deltas(payload)
        elif kind == "error":
            log.error("DNS worker %d: %s", i + 1, payload)

    def all_applied(self, generation: int) -> bool:
        return all(g >= generation for g in self.applied)

    async def wait_applied(self, generation: int, timeout: float = 10.0) -> bool:
        """Until every worker serves `generation` (True), or `timeout` (False). A worker
        being restarted counts as not serving it yet."""
        deadline = time.monotonic() + timeout
        while not self.all_applied(generation):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)
        return True

    async def stop(self) -> None:
        self._stopping = True
        for task in list(self._restarts):
            task.cancel()
        loop = asyncio.get_running_loop()
        for conn in self.conns:
            with contextlib.suppress(Exception):
                loop.remove_reader(conn.fileno())
            with contextlib.suppress(OSError, ValueError):
                conn.send(("stop", None))
        deadline = time.monotonic() + 5
        for proc in self.procs:
            while proc.is_alive() and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            if proc.is_alive():
                proc.kill()
            proc.join(1)
        for conn in self.conns:
            with contextlib.suppress(OSError):
                conn.close()


def add_deltas(stats: DnsStats, cache_extra: dict[str, int], upstream: Any, d: Deltas) -> None:
    """Fold a worker's counts into the primary's (`upstream`: a gateway.runtime.metrics.Metrics)."""
    q = stats.queries
    for key, n in d.queries.items():
        q[key] = q.get(key, 0) + n
    for i, n in enumerate(d.buckets):
        stats.buckets[i] += n
    stats.duration_sum += d.duration_sum
    for name, count in d.cache.items():
        cache_extra[name] = cache_extra.get(name, 0) + count
    for (label, protocol), n in d.upstream_queries.items():
        upstream.upstream_queries.labels(label, protocol).inc(n)
    for (label, reason), n in d.upstream_errors.items():
        upstream.upstream_errors.labels(label, reason).inc(n)
    for label, seconds in d.upstream_latency:
        upstream.upstream_latency.labels(label).observe(seconds)
    for (label, reason), n in d.upstream_mismatched.items():
        upstream.upstream_mismatched.labels(label, reason).inc(n)
    for reason, n in d.upstream_dropped.items():
        upstream.upstream_dropped.labels(reason).inc(n)
    if d.worker:
        upstream.worker_upstream_sockets[d.worker] = d.upstream_sockets
    for name, n in d.rrl.items():   # the buckets gauge too: the sum of its deltas is its value
        cache_extra[f"rrl_{name}"] = cache_extra.get(f"rrl_{name}", 0) + n
    upstream.streams.add(d.streams)


# ---------------------------------------------------------------- the worker's side


def worker_main(conn: multiprocessing.connection.Connection, worker_id: int,
                listen: list[tuple[str, int]]) -> None:
    """Entry point of a worker process (spawned: a fresh interpreter)."""
    logging.basicConfig(level=logging.INFO,
                        format=f"%(asctime)s %(levelname)s worker-{worker_id} %(name)s: "
                               "%(message)s")
    signal.signal(signal.SIGINT, signal.SIG_IGN)    # the primary decides when we stop
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        import uvloop
        runner: Callable[[Any], Any] = uvloop.run
    except ImportError:
        runner = asyncio.run
    runner(_Worker(conn, worker_id, listen).run())


class _Worker:
    def __init__(self, conn: multiprocessing.connection.Connection, worker_id: int,
                 listen: list[tuple[str, int]]) -> None:
        self.conn = conn
        self.id = worker_id
        self.listen = listen
        self.streams = StreamStats()
        self.stop = asyncio.Event()
        self.resolver: Resolver | None = None
        self.rrl: Rrl | None = None
        self.rrl_limits: RrlLimits | None = None
        self.observer = _Observer()
        self.subscribers: Subscribers | None = None
        self.indexes: dict[Path, ListIndex] = {}
        self.reported: dict[str, Any] = {}

    async def run(self) -> None:
        from gateway.runtime.state import build_view

        loop = asyncio.get_running_loop()
        kind, snapshot = self.conn.recv()
        assert kind == "state"
        view = self._view(snapshot, build_view)
        config = snapshot.config
        forwarder = Forwarder(upstreams_from(config.upstreams), config.forwarder, self.observer,
                              limits=config.limits.upstream)
        self.resolver = Resolver(view, AnswerCache(config.cache), forwarder, DnsStats())
        # Each worker limits the sources the kernel hands it (by 4-tuple hash), in its own table;
        # TCP limits hold per process too: the kernel spreads connections over the workers.
        self.rrl = Rrl(config.limits.rrl)
        self.rrl_limits = config.limits.rrl
        server = DnsServer(self.resolver, self.listen, config.limits.tcp, self.streams,
                           reuse_port=True, rrl=self.rrl)
        await server.start()
        self.conn.send(("applied", snapshot.generation))
        loop.add_reader(self.conn.fileno(), self._receive, build_view)
        reporter = loop.create_task(self._report())
        await self.stop.wait()
        reporter.cancel()
        await server.stop()

    def _view(self, snapshot: Snapshot, build_view: Any) -> Any:
        from gateway.runtime.state import layered

        if not snapshot.same_subscribers:
            self.subscribers = snapshot.subscribers
        index = self.indexes.get(snapshot.index_path)
        if index is None:
            # An unlinked old index stays valid while mapped; keep only the current one.
            self.indexes = {snapshot.index_path: ListIndex.open(snapshot.index_path)}
            index = self.indexes[snapshot.index_path]
        view, _ = build_view(snapshot.config, snapshot.policy,
                             layered(index, snapshot.overlays), snapshot.generation,
                             at=snapshot.built_at, subscribers=self.subscribers,
                             intercept=snapshot.intercept)
        return view

    def _receive(self, build_view: Any) -> None:
        try:
            kind, payload = self.conn.recv()
        except (EOFError, OSError):
            self.stop.set()      # the primary is gone: so are we
            return
        if kind == "stop":
            self.stop.set()
        elif kind == "state" and self.resolver is not None:
            try:
                self.resolver.swap(self._view(payload, build_view))
                rrl_limits = payload.config.limits.rrl
                if self.rrl is not None and rrl_limits != self.rrl_limits:
                    self.rrl.configure(rrl_limits)
                    self.rrl_limits = rrl_limits
            except Exception as exc:  # keep serving the old view; the primary logs it
                with contextlib.suppress(OSError):
                    self.conn.send(("error", f"generation {payload.generation}: {exc!r}"))
                return
            self.conn.send(("applied", payload.generation))

    async def _report(self) -> None:
        """Every second: what was counted since the last report."""
        last_q: dict[tuple[str, str, str, str], int] = {}
        last_b: list[int] = []
        last_sum = 0.0
        last_cache: dict[str, int] = {}
        last_sockets = -1
        last_rrl: dict[str, int] = {}
        last_streams = self.streams.snapshot()
        while True:
            await asyncio.sleep(STATS_INTERVAL)
            assert self.resolver is not None and self.rrl is not None
            now_rrl = {"slipped": self.rrl.slipped, "dropped": self.rrl.dropped,
                       "buckets": len(self.rrl)}
            rrl = {k: v - last_rrl.get(k, 0) for k, v in now_rrl.items()
                   if v != last_rrl.get(k, 0)}
            last_rrl = now_rrl
            stats, cache = self.resolver.stats, self.resolver.cache
            queries = {k: v - last_q.get(k, 0) for k, v in stats.queries.items()
                       if v != last_q.get(k, 0)}
            buckets = [v - (last_b[i] if i < len(last_b) else 0)
                       for i, v in enumerate(stats.buckets)]
            now_cache = {"hits": cache.hits, "misses": cache.misses,
                         "evictions": cache.evictions, "stale_served": cache.stale_served}
            d = Deltas(queries, buckets, stats.duration_sum - last_sum,
                       {k: v - last_cache.get(k, 0) for k, v in now_cache.items()},
                       dict(self.observer.queries), dict(self.observer.errors),
                       self.observer.latencies, dict(self.observer.mismatched),
                       dict(self.observer.dropped_), self.id,
                       self.resolver.forwarder.open_sockets(), rrl)
            self.observer.queries.clear()
            self.observer.errors.clear()
            self.observer.latencies = []
            self.observer.mismatched.clear()
            self.observer.dropped_.clear()
            now_streams = self.streams.snapshot()
            d.streams = {name: {k: v - last_streams[name][k] for k, v in part.items()
                                if v != last_streams[name][k]}
                         for name, part in now_streams.items()}
            last_streams = now_streams
            last_q, last_b, last_sum, last_cache = (dict(stats.queries), list(stats.buckets),
                                                    stats.duration_sum, now_cache)
            sockets_changed = d.upstream_sockets != last_sockets
            last_sockets = d.upstream_sockets
            if queries or d.upstream_queries or d.upstream_errors or any(d.cache.values()) \
                    or d.upstream_mismatched or d.upstream_dropped or sockets_changed or rrl \
                    or any(d.streams.values()):
                try:
                    self.conn.send(("stats", d))
                except (BrokenPipeError, OSError):
                    self.stop.set()
                    return


def snapshot_of(loaded: Any, overlays: dict[str, Overlay]) -> Snapshot:
    """The Snapshot of a gateway.runtime.state.Loaded (the primary's current state)."""
    assert loaded.index_path is not None, "workers need the compiled index on disk"
    return Snapshot(loaded.view.generation, loaded.config, loaded.policy, loaded.index_path,
                    dict(overlays), loaded.intercept, loaded.view.built_at,
                    loaded.subscribers)

