"""Microbenchmark: what a random source port costs per upstream query (gateway/dns/upstream_udp.py).

Compares the socket work around one UDP exchange, against a loopback echo server:
  fresh   a new socket per query (socket, connect = kernel-chosen random port, add_reader,
          send, receive, remove_reader, close)
  pool    a socket picked at random from a small pool, replaced after a few uses
Run: python bench/upstream_sockets.py [queries]   (a few seconds; uvloop when installed)
"""

from __future__ import annotations

import asyncio
import random
import socket
import sys
import time


def echo_server() -> tuple[socket.socket, int]:
    srv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    srv.bind(("127.0.0.1", 0))
    srv.setblocking(False)
    return srv, srv.getsockname()[1]


def new_socket(port: int) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setblocking(False)
    s.connect(("127.0.0.1", port))
    return s


async def exchange(loop: asyncio.AbstractEventLoop, s: socket.socket) -> None:
    fut: asyncio.Future[bytes] = loop.create_future()
    loop.add_reader(s.fileno(), lambda: fut.done() or fut.set_result(s.recv(512)))
    s.send(b"x" * 40)
    await fut
    loop.remove_reader(s.fileno())


async def run(n: int) -> None:
    loop = asyncio.get_running_loop()
    srv, port = echo_server()
    loop.add_reader(srv.fileno(), lambda: srv.sendto(*srv.recvfrom(512)))

    start = time.perf_counter()
    for _ in range(n):
        s = new_socket(port)
        await exchange(loop, s)
        s.close()
    fresh = (time.perf_counter() - start) / n

    pool = [new_socket(port) for _ in range(8)]
    uses = [0] * len(pool)
    start = time.perf_counter()
    for _ in range(n):
        i = random.randrange(len(pool))
        await exchange(loop, pool[i])
        uses[i] += 1
        if uses[i] >= 16:
            pool[i].close()
            pool[i], uses[i] = new_socket(port), 0
    pooled = (time.perf_counter() - start) / n
    for s in pool:
        s.close()
    srv.close()
    print(f"fresh socket per query: {fresh * 1e6:.1f} us/query")
    print(f"pool of 8, 16 uses each: {pooled * 1e6:.1f} us/query")
    print(f"difference: {(fresh - pooled) * 1e6:.1f} us/query")


if __name__ == "__main__":
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    try:
        import uvloop
        uvloop.run(run(count))
    except ImportError:
        asyncio.run(run(count))
