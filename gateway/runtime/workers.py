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
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from gateway.config.gateway import GatewayConfig
from gateway.config.limits import RrlLimits
from gateway.dns.chain import Resolver
from gateway.dns.rrl import Rrl
from gateway.dns.stats import DnsStats, StreamStats
from gateway.dns.view import View
from gateway.lists.index import ListIndex
from gateway.lists.overlay import Overlay
from gateway.policy.policyfile import Policy
from gateway.policy.subscribers import Subscribers
from gateway.runtime.resolver import build_dns_server, build_resolver
from gateway.runtime.state import Loaded, build_view, layered
from gateway.runtime.worker_stats import DeltaCounter, Deltas, WorkerObserver

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
        self.observer = WorkerObserver()
        self.subscribers: Subscribers | None = None
        self.indexes: dict[Path, ListIndex] = {}
        self.reported: dict[str, Any] = {}

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        kind, snapshot = self.conn.recv()
        assert kind == "state"
        config = snapshot.config
        self.resolver = build_resolver(config, self._view(snapshot), DnsStats(), self.observer)
        # Each worker limits the sources the kernel hands it (by 4-tuple hash), in its own table;
        # TCP limits hold per process too: the kernel spreads connections over the workers.
        server, self.rrl = build_dns_server(config, self.resolver, self.listen, self.streams,
                                            reuse_port=True)
        self.rrl_limits = config.limits.rrl
        await server.start()
        self.conn.send(("applied", snapshot.generation))
        loop.add_reader(self.conn.fileno(), self._receive)
        reporter = loop.create_task(self._report())
        await self.stop.wait()
        reporter.cancel()
        await server.stop()

    def _view(self, snapshot: Snapshot) -> View:
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

    def _receive(self) -> None:
        try:
            kind, payload = self.conn.recv()
        except (EOFError, OSError):
            self.stop.set()      # the primary is gone: so are we
            return
        if kind == "stop":
            self.stop.set()
        elif kind == "state" and self.resolver is not None:
            try:
                self.resolver.swap(self._view(payload))
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
        assert self.resolver is not None and self.rrl is not None
        counts = DeltaCounter(self.id, self.resolver, self.rrl, self.observer, self.streams)
        while True:
            await asyncio.sleep(STATS_INTERVAL)
            d = counts.take()
            if d is not None:
                try:
                    self.conn.send(("stats", d))
                except (BrokenPipeError, OSError):
                    self.stop.set()
                    return


def snapshot_of(loaded: Loaded, overlays: dict[str, Overlay]) -> Snapshot:
    """The Snapshot of the primary's current state."""
    assert loaded.index_path is not None, "workers need the compiled index on disk"
    return Snapshot(loaded.view.generation, loaded.config, loaded.policy, loaded.index_path,
                    dict(overlays), loaded.intercept, loaded.view.built_at,
                    loaded.subscribers)

