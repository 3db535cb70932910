"""CPU time of a cached answer's hit, in-process: the UDP reply memo's hit path and a TCP hit
(which renders from the cache entry each time). docs/memory.md quotes it.

Run: `.venv/bin/python bench/cached_hit_timing.py [TREE]` (TREE: another checkout to time, e.g.
an older commit's `git archive`; the default is this one). Best of 5 rounds of 300k queries
over 1,000 names, the clock stepping 0.25 s every 20k queries so TTLs tick as in real traffic.
"""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path

TREE = Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TREE))

import dns.message  # noqa: E402
import dns.rrset  # noqa: E402

from gateway.config.dns import CacheConfig  # noqa: E402
from gateway.dns import cache as cache_mod  # noqa: E402
from gateway.dns import wire  # noqa: E402
from tests.support.builders import make_profile, make_resolver  # noqa: E402

NAMES = 1000


def time_hits(protocol: str) -> float:
    now = [1000.0]
    profile = make_profile([])
    res = make_resolver(profile, cache=cache_mod.AnswerCache(CacheConfig(size=20_000)),
                        clock=lambda: now[0])
    names = [f"n{i}.cached.example" for i in range(NAMES)]
    for name in names:
        reply = dns.message.make_response(dns.message.make_query(name, "A"))
        reply.answer.append(dns.rrset.from_text(name + ".", 3600, "IN", "A", "192.0.2.1"))
        entry = cache_mod.entry_from_reply(reply.to_wire(), res.cache.cfg, now[0])
        make_key = getattr(cache_mod, "cache_key", None)  # older trees: a 4-tuple key
        key = make_key(name.encode(), 1, 1, 0) if make_key else (name.encode(), 1, 1, 0)
        res.cache.put(key, entry)  # type: ignore[arg-type]
    rng = random.Random(1)
    queries = [wire.build_query(rng.randrange(65536), wire.key_to_wire(
        names[rng.randrange(NAMES)].encode()) + b"\x00\x01\x00\x01", do=False, cd=False)
        for _ in range(300_000)]
    for data in queries[:5000]:
        assert isinstance(res.handle(data, "127.0.0.1", protocol), bytes)
    best = float("inf")
    for _ in range(5):
        t0 = time.process_time()
        for i, data in enumerate(queries):
            if i % 20_000 == 0:
                now[0] += 0.25
            res.handle(data, "127.0.0.1", protocol)
        best = min(best, (time.process_time() - t0) / len(queries) * 1e6)
    return best


if __name__ == "__main__":
    print(f"{TREE}: UDP memo hit {time_hits('udp'):.2f} us, TCP hit {time_hits('tcp'):.2f} us"
          " (CPU per query, best of 5)")
