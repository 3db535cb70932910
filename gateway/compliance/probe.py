"""The outside probe behind `safegate probe` (gateway/cli/probe.py): does a resolver block?

Self-reports are not proof (docs/design.md): this fetches the signed central feed, samples its
current domain blocks and asks ANY resolver (SafeGate, or an ISP's Unbound/BIND fed the RPZ
export) for each, like a client would. Classifying an answer is a pure function; the rest is
the I/O around it and an optional long-running mode exporting Prometheus gauges.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import signal
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import dns.asyncquery
import dns.exception
import dns.message
import dns.rcode
import dns.rdatatype
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge
from prometheus_client.exposition import generate_latest

from gateway.errors import SafeGateError
from gateway.feedformat.document import Feed, FeedEntry, parse_feed
from gateway.feedformat.signing import SIGNATURE_HEADER, Verifier

log = logging.getLogger("safegate.probe")

RESULTS = ("blocked", "allowed", "error")
BLOCKED_EDES = frozenset({15, 16, 17})   # Blocked, Censored, Filtered (RFC 8914)
NULL_ADDRESSES = frozenset({"0.0.0.0", "::"})
PROBED_TYPES = ("domain", "domain-exact")
CONCURRENCY = 16
DEFAULT_METRICS_PORT = 9155


class ProbeError(SafeGateError):
    """The probe could not run at all (feed unreachable, bad key, bad arguments)."""


@dataclass(frozen=True)
class ProbeOutcome:
    id: str
    value: str
    result: str                  # one of RESULTS
    rcode: str                   # NOERROR, NXDOMAIN, ..., or TIMEOUT / NETWORK
    ede: int | None
    addresses: tuple[str, ...] = ()


# ---------------------------------------------------------------- pure parts


def classify(msg: dns.message.Message, blockpage: frozenset[str] = frozenset()
             ) -> tuple[str, int | None, tuple[str, ...]]:
    """(result, first EDE code, A addresses) of one answer to an A query.

    Blocked: NXDOMAIN, NOERROR without addresses or only unspecified/block-page ones, or any
    blocking EDE (15/16/17, whatever the rcode). Other NOERROR answers are allowed; every other
    rcode (SERVFAIL, REFUSED, ...) is an error: it proves nothing either way.
    """
    edes = [int(e.code) for e in msg.extended_errors()]
    ede = next((c for c in edes if c in BLOCKED_EDES), edes[0] if edes else None)
    addresses = tuple(rd.to_text() for rrset in msg.answer
                      if rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA) for rd in rrset)
    rcode = msg.rcode()
    if any(c in BLOCKED_EDES for c in edes) or rcode == dns.rcode.NXDOMAIN:
        return "blocked", ede, addresses
    if rcode != dns.rcode.NOERROR:
        return "error", ede, addresses
    if all(a in NULL_ADDRESSES or a in blockpage for a in addresses):
        return "blocked", ede, addresses
    return "allowed", ede, addresses


def probe_targets(feed: Feed) -> list[FeedEntry]:
    """The feed's domain blocks, in id order (what a DNS resolver can be asked about)."""
    return sorted((e for e in feed.entries if e.action == "block" and e.type in PROBED_TYPES),
                  key=lambda e: e.id)


def sample(entries: Sequence[FeedEntry], n: int | None, seed: int | None) -> list[FeedEntry]:
    """A random sample of `n` (all when n is None or larger); reproducible with a seed."""
    if n is None or n >= len(entries):
        return list(entries)
    return random.Random(seed).sample(list(entries), n)


def summarize(outcomes: Sequence[ProbeOutcome]) -> dict[str, Any]:
    counts = {r: sum(1 for o in outcomes if o.result == r) for r in RESULTS}
    ratio = counts["blocked"] / len(outcomes) if outcomes else None
    return {"sampled": len(outcomes), **counts, "blocked_ratio": ratio}


def exit_code(outcomes: Sequence[ProbeOutcome]) -> int:
    """0 when every sampled entry is blocked, 2 when some are not (allowed or unanswered)."""
    return 0 if all(o.result == "blocked" for o in outcomes) else 2


def render_text(outcomes: Sequence[ProbeOutcome], resolver: str) -> str:
    width = max([len(o.id) for o in outcomes] + [2])
    vwidth = max([len(o.value) for o in outcomes] + [5])
    lines = [f"{'ID':<{width}}  {'VALUE':<{vwidth}}  {'RESULT':<7}  {'RCODE':<8}  EDE"]
    for o in outcomes:
        ede = "" if o.ede is None else str(o.ede)
        extra = f"  ({', '.join(o.addresses)})" if o.result == "allowed" else ""
        lines.append(f"{o.id:<{width}}  {o.value:<{vwidth}}  {o.result:<7}  {o.rcode:<8}  "
                     f"{ede}{extra}")
    s = summarize(outcomes)
    if s["blocked_ratio"] is None:
        lines.append(f"{resolver}: the feed has no domain entries to probe")
    else:
        lines.append(f"{resolver}: blocked {s['blocked']}/{s['sampled']} "
                     f"({100 * s['blocked_ratio']:.1f}%), allowed {s['allowed']}, "
                     f"errors {s['error']}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- I/O


async def fetch_feed(url: str, verifier: Verifier, timeout: float) -> Feed:
    """GET the full feed, check its signature, parse it; ProbeError/FeedError on failure."""
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as s, \
                s.get(url) as resp:
            body = await resp.read()
            if resp.status != 200:
                raise ProbeError(f"{url}: HTTP {resp.status}")
            header = resp.headers.get(SIGNATURE_HEADER)
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise ProbeError(f"{url}: feed unreachable: {exc or type(exc).__name__}") from None
    verifier.verify(body, header)
    feed = parse_feed(body)
    if feed.is_diff:
        raise ProbeError(f"{url}: served a diff, not a full snapshot")
    return feed


async def probe_one(entry: FeedEntry, host: str, port: int, timeout: float,
                    blockpage: frozenset[str]) -> ProbeOutcome:
    """One A query with EDNS (so EDE can come back); TCP if the answer is truncated."""
    q = dns.message.make_query(entry.value, "A", use_edns=0, payload=1232)
    try:
        msg, _ = await dns.asyncquery.udp_with_fallback(q, host, timeout=timeout, port=port)
    except dns.exception.Timeout:
        return ProbeOutcome(entry.id, entry.value, "error", "TIMEOUT", None)
    except (dns.exception.DNSException, OSError) as exc:
        log.debug("probe of %s failed: %s", entry.value, exc)
        return ProbeOutcome(entry.id, entry.value, "error", "NETWORK", None)
    result, ede, addresses = classify(msg, blockpage)
    return ProbeOutcome(entry.id, entry.value, result, dns.rcode.to_text(msg.rcode()), ede,
                        addresses)


async def probe_all(entries: Iterable[FeedEntry], host: str, port: int, timeout: float,
                    blockpage: frozenset[str]) -> list[ProbeOutcome]:
    sem = asyncio.Semaphore(CONCURRENCY)

    async def bounded(e: FeedEntry) -> ProbeOutcome:
        async with sem:
            return await probe_one(e, host, port, timeout, blockpage)

    return list(await asyncio.gather(*(bounded(e) for e in entries)))


@dataclass(frozen=True)
class ProbeSettings:
    host: str
    port: int
    url: str
    verifier: Verifier
    sample: int | None
    seed: int | None
    timeout: float
    blockpage: frozenset[str]

    @property
    def resolver(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


async def run_once(cfg: ProbeSettings) -> tuple[Feed, list[ProbeOutcome]]:
    feed = await fetch_feed(cfg.url, cfg.verifier, cfg.timeout)
    chosen = sample(probe_targets(feed), cfg.sample, cfg.seed)
    return feed, await probe_all(chosen, cfg.host, cfg.port, cfg.timeout, cfg.blockpage)


# ---------------------------------------------------------------- service mode


class ProbeMetrics:
    """The probe's gauges, created against the registry passed in (never the global one)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.entries = Gauge("safegate_probe_entries", "Entries in the last probe run, by result",
                             ["result"], registry=registry)
        self.ratio = Gauge("safegate_probe_blocked_ratio",
                           "Share of sampled entries the resolver blocked in the last run",
                           registry=registry)
        self.last_run = Gauge("safegate_probe_last_run_timestamp_seconds",
                              "When the last complete probe run finished", registry=registry)
        self.runs = Counter("safegate_probe_runs", "Probe runs attempted", registry=registry)
        self.failed = Counter("safegate_probe_failed_runs",
                              "Probe runs that could not fetch or verify the feed",
                              registry=registry)
        for r in RESULTS:
            self.entries.labels(r)

    def record(self, outcomes: Sequence[ProbeOutcome], now: float) -> None:
        s = summarize(outcomes)
        for r in RESULTS:
            self.entries.labels(r).set(s[r])
        self.ratio.set(float("nan") if s["blocked_ratio"] is None else s["blocked_ratio"])
        self.last_run.set(now)


METRICS_KEY = web.AppKey("metrics", ProbeMetrics)
REGISTRY_KEY = web.AppKey("registry", CollectorRegistry)


async def _metrics_handler(request: web.Request) -> web.Response:
    body = generate_latest(request.app[REGISTRY_KEY])
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def probe_loop(cfg: ProbeSettings, metrics: ProbeMetrics, interval: float) -> None:
    """Re-probe forever; a failed run is logged and counted, the last good gauges stay."""
    while True:
        metrics.runs.inc()
        try:
            _, outcomes = await run_once(cfg)
        except (SafeGateError, ValueError) as exc:
            metrics.failed.inc()
            log.warning("probe run failed: %s", exc)
        else:
            metrics.record(outcomes, time.time())
            s = summarize(outcomes)
            log.info("probe: %s blocked %s/%s", cfg.resolver, s["blocked"], s["sampled"])
        await asyncio.sleep(interval)


def make_app(cfg: ProbeSettings, registry: CollectorRegistry, interval: float) -> web.Application:
    """The metrics endpoint plus the probe loop, started and stopped with the app."""
    app = web.Application()
    app[REGISTRY_KEY] = registry
    app[METRICS_KEY] = ProbeMetrics(registry)
    app.router.add_get("/metrics", _metrics_handler)

    async def loop_ctx(app: web.Application) -> Any:
        task = asyncio.create_task(probe_loop(cfg, app[METRICS_KEY], interval))
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    app.cleanup_ctx.append(loop_ctx)
    return app


async def serve(cfg: ProbeSettings, listen: tuple[str, int], interval: float) -> None:
    app = make_app(cfg, CollectorRegistry(), interval)
    runner = web.AppRunner(app)
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await web.TCPSite(runner, listen[0], listen[1]).start()
        log.info("probe metrics on http://%s:%d/metrics", *listen)
        await stop.wait()
    finally:
        await runner.cleanup()
