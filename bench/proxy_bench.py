"""Proxy overhead: passthrough TLS connections vs direct, and intercepted HTTPS requests/s.

Same loopback origin (aiohttp, HTTP/1.1, TLS) and upstream (unbound) as tests/test_proxy_e2e.py.
Four runs, each `--concurrency` clients for `--duration` seconds:

  direct-conn       new TLS connection + one GET per request, straight to the origin
  passthrough-conn  the same through the DNS-steered HTTPS listener for a name outside the
                    intercept set (the proxy reads the SNI, resolves upstream, splices bytes)
  direct-keepalive  keep-alive GETs straight to the origin
  intercepted       keep-alive GETs through the steering listener for a name in the intercept
                    set (decrypted, URL rules checked, re-encrypted to the origin)

Run: `.venv/bin/python bench/proxy_bench.py [--duration 5] [--concurrency 16]`.
Prints a table and writes JSON to bench/out/proxy_bench.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import ssl
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.test_proxy_e2e import Proxy, run_proxy, serve_origin

Request = Callable[[], Awaitable[None]]


async def get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str,
              path: str, close: bool) -> None:
    """One HTTP/1.1 GET; the body is read by Content-Length."""
    conn = "close" if close else "keep-alive"
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: {conn}\r\n\r\n".encode())
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(head[:80].decode(errors="replace"))
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    await reader.readexactly(length)


def new_connection(port: int, host: str, ctx: ssl.SSLContext) -> Request:
    async def one() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx,
                                                       server_hostname=host)
        try:
            await get(reader, writer, host, "/bench", close=True)
        finally:
            writer.close()
    return one


def keepalive(port: int, host: str, ctx: ssl.SSLContext) -> Callable[[], Request]:
    """A factory: each client gets its own persistent connection."""
    def make() -> Request:
        conn: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

        async def one() -> None:
            if not conn:
                conn.append(await asyncio.open_connection("127.0.0.1", port, ssl=ctx,
                                                          server_hostname=host))
            await get(*conn[0], host, "/post/43", close=False)
        return one
    return make


async def run(make: Callable[[], Request], concurrency: int, duration: float
              ) -> dict[str, float]:
    latencies: list[float] = []
    errors = 0
    end = time.perf_counter() + duration

    async def client() -> None:
        nonlocal errors
        one = make()
        while time.perf_counter() < end:
            t = time.perf_counter()
            try:
                await asyncio.wait_for(one(), 10.0)
            except (OSError, RuntimeError, asyncio.IncompleteReadError, TimeoutError):
                errors += 1
                one = make()          # a fresh connection after a failure
                continue
            latencies.append(time.perf_counter() - t)

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    latencies.sort()
    return {"requests_per_s": len(latencies) / elapsed, "errors": errors,
            "p50_ms": 1000 * statistics.median(latencies),
            "p99_ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))]}


def contexts(origin_ca: Path, proxy: Proxy) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    direct = ssl.create_default_context(cafile=str(origin_ca))
    intercepted = ssl.create_default_context(cafile=str(proxy.state / "ca" /
                                                        "mitmproxy-ca-cert.pem"))
    return direct, intercepted


async def bench(origin_port: int, origin_ca: Path, proxy: Proxy, duration: float,
                concurrency: int) -> dict[str, dict[str, float]]:
    direct_ctx, proxy_ctx = contexts(origin_ca, proxy)
    steer = proxy.steer_https
    runs: dict[str, Callable[[], Request]] = {
        "direct-conn": lambda: new_connection(origin_port, "plain.test", direct_ctx),
        "passthrough-conn": lambda: new_connection(steer, "plain.test", direct_ctx),
        "direct-keepalive": keepalive(origin_port, "news.test", direct_ctx),
        "intercepted": keepalive(steer, "news.test", proxy_ctx),
    }
    out = {}
    for name, make in runs.items():
        await run(make, concurrency, min(1.0, duration))      # warm-up
        out[name] = await run(make, concurrency, duration)
        r = out[name]
        print(f"{name:18} {r['requests_per_s']:8.0f} req/s  p50 {r['p50_ms']:6.2f} ms  "
              f"p99 {r['p99_ms']:6.2f} ms  errors {r['errors']:.0f}", flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--concurrency", type=int, default=16)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        for sub in ("origin", "unbound", "proxy"):
            (base / sub).mkdir()
        with serve_origin(base / "origin") as (org, origin_ca), \
                run_proxy((org, origin_ca), base / "unbound", base / "proxy",
                          log_level="warning") as proxy:
            results = asyncio.run(bench(org.https_port, origin_ca, proxy, args.duration,
                                        args.concurrency))
    out = Path(__file__).parent / "out"
    out.mkdir(exist_ok=True)
    (out / "proxy_bench.json").write_text(json.dumps(
        {"machine": platform.platform(), "cpus": os.cpu_count(), "python": sys.version,
         "duration": args.duration, "concurrency": args.concurrency, "results": results},
        indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
