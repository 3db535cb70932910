"""The fast path's byte work, C vs Python, on uniform blocked draws (issue #12 item 2).

Not a test: run by hand (`python bench/fastpath_codec.py`; build the C parts first with
`make compile`). It compiles one index of N synthetic names `b{i}.blk{i % 1000}.test` (one
adult rule each), builds Q plain A queries for uniform draws from it, and times, in CPU time
(process_time), best of R rounds:
  parse    fastpath.parse vs _fastparse.parse per query
  handle   Resolver.handle per query with the fast path's codec pure-Python, C parse with the
           Python reply, and C parse + C reply (the list lookup is C in every case when built)
The draws repeat a name now and then (the reply memo answers those), as real traffic would.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gateway.dns import fastpath, wire  # noqa: E402
from gateway.lists import SCOPE_BOTH, Action, Rule  # noqa: E402
from gateway.lists.index import ListIndex  # noqa: E402
from gateway.lists.index_builder import IndexBuilder  # noqa: E402
from tests.support.builders import make_profile, make_resolver  # noqa: E402


def parse_us(parse: Callable[[bytes], Any], queries: list[bytes]) -> float:
    start = time.process_time()
    for q in queries:
        parse(q)
    return (time.process_time() - start) / len(queries) * 1e6


def handle_us(handle: Callable[..., Any], queries: list[bytes]) -> float:
    start = time.process_time()
    for q in queries:
        handle(q, "127.0.0.1", "udp")
    return (time.process_time() - start) / len(queries) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--names", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    c = fastpath.choose(pure=False)
    if c is fastpath.PURE:
        sys.exit("gateway.dns._fastparse is not built: run `make compile` first")
    codecs = {"pure-Python": fastpath.PURE,
              "C parse": fastpath.Codec("C parse", c.parse, None),
              "C parse + reply": c}
    builder = IndexBuilder()
    names = [f"b{i}.blk{i % 1000}.test".encode() for i in range(args.names)]
    builder.add_many(names, Rule("adult", SCOPE_BOTH, Action.DEFAULT, False))
    index = ListIndex.from_bytes(builder.to_bytes())
    rng = random.Random(1)
    queries = [wire.build_query(rng.randrange(65536), wire.key_to_wire(rng.choice(names))
                                + b"\x00\x01\x00\x01", do=False, cd=False)
               for _ in range(args.queries)]
    print(f"{args.names} names ({'C' if index.accelerated else 'pure-Python'} list lookup), "
          f"{args.queries} queries, best of {args.rounds} (CPU us per query)")
    best: dict[tuple[str, str], float] = {}
    for _ in range(args.rounds):
        for name, codec in codecs.items():
            resolver = make_resolver(make_profile(["adult"], index=index))
            resolver.fast = codec
            for what, took in (("parse", parse_us(codec.parse, queries)),
                               ("handle", handle_us(resolver.handle, queries))):
                best[name, what] = min(best.get((name, what), took), took)
    print(f"{'codec':16} {'parse':>7} {'handle':>7}")
    for name in codecs:
        print(f"{name:16} {best[name, 'parse']:7.3f} {best[name, 'handle']:7.2f}")


if __name__ == "__main__":
    main()
