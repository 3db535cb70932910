"""Many simulated gateways in one process: the REAL feed client, ledger and ack outbox.

Each SimGateway has its own identity, token, state directory (ledger.sqlite3, the feed's chain
on disk) and runs gateway.feeds.client.FeedClient (by serial, long-polling the head) and
gateway.feeds.acks.AckSender exactly as a gateway does. Only the DNS side is simulated: the
"self-probe" looks the entry up in the overlay the client put in force (the rules a real
gateway would answer from) and records the result through Ledger.record_probes, which
enqueues the verified ack in the same transaction as in a real gateway.

All gateways of a process share two aiohttp sessions (one connector for the long polls, sized
to the number of gateways; one for acks, bounded), so descriptors stay bounded: one socket per
waiting gateway plus the ack pool, plus three per ledger (database, WAL, shared memory).

Run as a worker: python -m bench.fleetsim --first 0 --count 500 --url URL --public-key PUB
--state DIR; it prints one JSON line per second: {"serials": {serial: gateways}, "pending":
acks in outboxes, "rejected": {reason: n}, "acks_sent": n}.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import resource
import signal
import sys
import time
from collections import Counter
from pathlib import Path

import aiohttp
from prometheus_client import CollectorRegistry

from gateway.config.feeds import FeedConfig, FeedGuardConfig
from gateway.feedformat.head import HEAD_PATH, parse_head, snapshot_path
from gateway.feedformat.signing import SIGNATURE_HEADER, Verifier
from gateway.feeds.acks import AckSender, AckTarget, acks_url
from gateway.feeds.byserial import feed_base
from gateway.feeds.client import FeedClient
from gateway.feeds.ledger import Ledger, LedgerEntry, ProbeRecord
from gateway.feeds.stats import FeedMetrics
from gateway.lists.overlay import Overlay

FEED = "central"
ACK_POOL = 64           # concurrent ack POSTs per process


def gateway_id(n: int) -> str:
    return f"gw-{n:05d}"


def gateway_token(n: int) -> str:
    return f"fleet-token-{n:05d}-0123456789abcdef"


class SimGateway:
    """One gateway's feed side: feed client, ledger, ack sender; the overlay it enforces."""

    def __init__(self, n: int, url: str, public_key: Path, state_dir: Path,
                 feed_session: aiohttp.ClientSession, ack_session: aiohttp.ClientSession,
                 metrics: FeedMetrics, long_poll: float = 30.0, by_serial: bool = True) -> None:
        self.id = gateway_id(n)
        self.overlay: Overlay | None = None
        self.ledger = Ledger(state_dir / "ledger.sqlite3")
        self.target = AckTarget(acks_url(url), self.id, FEED)
        cfg = FeedConfig(FEED, url, public_keys=(public_key,), acks=True, long_poll=long_poll,
                         by_serial=by_serial)
        guard = FeedGuardConfig((), 1.0, 1_000_000)   # the fleet applies every update
        self.client = FeedClient(cfg, guard, self, feed_session, self.ledger, metrics,
                                 state_dir, self.target, on_applied=self._probe)
        self.sender = AckSender(self.ledger, self.target, gateway_token(n), ack_session,
                                metrics.outbox_pending)
        self.tasks: list[asyncio.Task[None]] = []

    def set_overlay(self, name: str, overlay: Overlay | None) -> int:
        self.overlay = overlay
        return 0

    def _probe(self, feed: str, entries: list[LedgerEntry]) -> None:
        """The self-probe: is the entry's name matched by the rules now in force?"""
        now = time.time()
        overlay = self.overlay
        records = [ProbeRecord(feed, e.entry_id,
                               "blocked" if overlay is not None and overlay.match(
                                   e.value.encode()) else "not_blocked",
                               now, False, self.target, self.client.serial) for e in entries]
        if records:
            self.ledger.record_probes(records)

    def start(self) -> None:
        self.client.load_local()
        self.tasks = [asyncio.create_task(self.client.run()),
                      asyncio.create_task(self.sender.run())]

    async def stop(self) -> None:
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.ledger.close()


def raise_nofile(wanted: int) -> int:
    """Raise the soft descriptor limit towards `wanted`, within the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(hard, max(soft, wanted)) if hard != resource.RLIM_INFINITY else max(soft, wanted)
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return target


def sessions(count: int) -> tuple[aiohttp.ClientSession, aiohttp.ClientSession]:
    """(long-poll session with a socket per gateway, bounded ack session)."""
    feed = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=count + 16,
                                                                force_close=False))
    acks = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=ACK_POOL))
    return feed, acks


def status(gateways: list[SimGateway], metrics: FeedMetrics) -> dict[str, object]:
    serials = Counter(g.client.serial for g in gateways)
    rejected: dict[str, float] = {}
    for metric in metrics.rejected.collect():
        for s in metric.samples:
            if s.name.endswith("_total") and s.value:
                reason = s.labels["reason"]
                rejected[reason] = rejected.get(reason, 0) + s.value
    return {"serials": {str(k): v for k, v in sorted(serials.items())},
            "pending": sum(g.ledger.outbox_pending() for g in gateways),
            "acks_sent": sum(g.sender.sent for g in gateways),
            "rejected": rejected}


async def run_worker(args: argparse.Namespace) -> None:
    raise_nofile(args.count * 4 + 256)
    feed_session, ack_session = sessions(args.count)
    metrics = FeedMetrics(CollectorRegistry())   # shared: one feed name, summed over gateways
    gateways = []
    for n in range(args.first, args.first + args.count):
        g = SimGateway(n, args.url, args.public_key, args.state / gateway_id(n), feed_session,
                       ack_session, metrics, args.long_poll)
        gateways.append(g)
    for g in gateways:
        g.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    try:
        while not stop.is_set():
            print(json.dumps(status(gateways, metrics)), flush=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), args.report_every)
    finally:
        for g in gateways:
            await g.stop()
        await feed_session.close()
        await ack_session.close()


async def join_one(session: aiohttp.ClientSession, base: str, verifier: Verifier,
                   gate: asyncio.Semaphore) -> int:
    """A gateway joining with no state: the head, then the snapshot it names, both verified
    as gateway/feeds/byserial.py does (the signature over the exact bytes); returns bytes."""
    async with session.get(base + HEAD_PATH) as resp:
        body = await resp.read()
        verifier.verify(body, resp.headers.get(SIGNATURE_HEADER))
        head = parse_head(body)
    # Bodies are held whole to verify them: bound the memory (not when the joiners start).
    async with gate, session.get(base + snapshot_path(head.serial)) as resp:
        body = await resp.read()
        verifier.verify(body, resp.headers.get(SIGNATURE_HEADER))
    return len(body)


async def run_joiners(args: argparse.Namespace) -> None:
    """--join: args.count gateways fetch the head and the snapshot at once (verify only)."""
    raise_nofile(args.count * 2 + 256)
    verifier = Verifier.from_files([args.public_key])
    base = feed_base(args.url)
    gate = asyncio.Semaphore(args.in_flight)
    started = time.time()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(
            limit=args.count + 16)) as session:
        sizes = await asyncio.gather(*(join_one(session, base, verifier, gate)
                                       for _ in range(args.count)), return_exceptions=True)
    ok = [s for s in sizes if isinstance(s, int)]
    errors = Counter(type(s).__name__ for s in sizes if not isinstance(s, int))
    print(json.dumps({"joined": len(ok), "bytes": sum(ok), "errors": dict(errors),
                      "seconds": time.time() - started}), flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--first", type=int, default=0)
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--url", required=True, help="the feed URL (…/v1/feed) through the cache")
    ap.add_argument("--public-key", type=Path, required=True)
    ap.add_argument("--state", type=Path, required=True)
    ap.add_argument("--long-poll", type=float, default=30.0)
    ap.add_argument("--report-every", type=float, default=1.0)
    ap.add_argument("--join", action="store_true",
                    help="join once (head + snapshot, verified) instead of running gateways")
    ap.add_argument("--in-flight", type=int, default=8,
                    help="--join: snapshots held in memory at once per process")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.ERROR, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(message)s")
    work = run_joiners(args) if args.join else run_worker(args)
    profile = os.environ.get("FLEET_PROFILE")   # a path: cProfile this worker into it
    if profile:
        import cProfile
        profiler = cProfile.Profile()
        profiler.enable()
        try:
            asyncio.run(work)
        finally:
            profiler.disable()
            profiler.dump_stats(f"{profile}.{os.getpid()}")
        return 0
    try:
        import uvloop
    except ImportError:
        uvloop = None
    try:
        if uvloop is not None:
            uvloop.run(work)
        else:
            asyncio.run(work)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
