"""Micro-benchmark of image hash matching (gateway/proxy/hashes.py).

Not a test: run by hand (`python bench/hash_bench.py`) and paste the tables into
docs/performance.md. It measures
  1. `HashIndex.match` latency per image size and format (decode + shrink + PDQ + search),
     on synthetic images (smooth random colour fields with grain; nothing real);
  2. PDQ search time per query against 1k, 10k and 100k random hashes: the multi-index search
     the proxy uses, a numpy linear scan and a pure-Python `int.bit_count` scan, for queries
     near a stored hash (a hit within distance 31) and for unrelated ones (a miss);
  3. index build time and the search arrays' size.
"""

from __future__ import annotations

import argparse
import io
import random
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image

from gateway.proxy.hashes import HashEntry, HashIndex, HashSettings, PdqSearch, pdq_words

IMAGE_SIZES = ((320, 240), (640, 480), (1280, 960), (1920, 1080), (4000, 3000))


def synthetic(width: int, height: int, seed: int) -> Image.Image:
    """Upsampled random colours plus grain: PDQ quality 100, JPEG-compressible like a photo."""
    rng = np.random.default_rng(seed)
    field = Image.fromarray(rng.integers(0, 256, (9, 12, 3), dtype=np.uint8))
    smooth = np.asarray(field.resize((width, height), Image.Resampling.BICUBIC), dtype=np.int16)
    grain = rng.integers(-10, 11, (height, width, 1), dtype=np.int16)
    return Image.fromarray(np.clip(smooth + grain, 0, 255).astype(np.uint8))


def median_ms(repeat: int, fn: Callable[..., Any], *args: Any) -> float:
    return statistics.median(timed(fn, *args) for _ in range(repeat)) / 1000


def bench_images(repeat: int) -> None:
    print("### match() latency per image (median ms; one PDQ entry, so every image is decoded)")
    print()
    print("| image | format | bytes | match | match, dihedral | sha256 only |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for w, h in IMAGE_SIZES:
        img = synthetic(w, h, seed=w)
        for fmt, opts in (("JPEG", {"quality": 85}), ("PNG", {"compress_level": 6})):
            out = io.BytesIO()
            img.save(out, fmt, **opts)
            data = out.getvalue()
            settings = HashSettings(max_bytes=max(len(data), 1))
            pdq_index = HashIndex.from_entries(
                [HashEntry("P", "pdq", "ab" * 32, "csam", True)], settings)
            dihedral = HashIndex.from_entries(
                [HashEntry("P", "pdq", "ab" * 32, "csam", True)],
                HashSettings(max_bytes=settings.max_bytes, pdq_dihedral=True))
            sha_index = HashIndex.from_entries(
                [HashEntry("S", "sha256", "cd" * 32, "csam", True)], settings)
            pdq_index.match(data)   # warm up decoders
            t_pdq = median_ms(repeat, pdq_index.match, data)
            t_dih = median_ms(repeat, dihedral.match, data)
            t_sha = median_ms(repeat, sha_index.match, data)
            print(f"| {w}x{h} | {fmt} | {len(data):,} | {t_pdq:.1f} | {t_dih:.1f} "
                  f"| {t_sha:.2f} |")
    print()


def python_scan(values: list[int], query: int, radius: int) -> list[int]:
    return [i for i, v in enumerate(values) if (v ^ query).bit_count() <= radius]


def numpy_scan(words: Any, query: Any, radius: int) -> Any:
    return np.flatnonzero(np.bitwise_count(words ^ query).sum(axis=1) <= radius)


def bench_search(sizes: list[int], queries: int) -> None:
    print("### PDQ search per query (median µs; radius 31)")
    print()
    print("| hashes | build ms | arrays MB | multi-index hit | multi-index miss "
          "| numpy scan | Python scan |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    rng = random.Random(1)
    for n in sizes:
        hashes = [f"{rng.getrandbits(256):064x}" for _ in range(n)]
        t = time.perf_counter()
        search = PdqSearch(hashes, 31)
        build = (time.perf_counter() - t) * 1000
        size = search.nbytes / 2**20
        near = []
        for _ in range(queries):
            bits = 0
            for b in rng.sample(range(256), rng.randrange(32)):
                bits |= 1 << b
            near.append(pdq_words(f"{int(rng.choice(hashes), 16) ^ bits:064x}"))
        far_hex = [f"{rng.getrandbits(256):064x}" for _ in range(queries)]
        far = [pdq_words(h) for h in far_hex]
        hit = statistics.median(timed(search.within, q) for q in near)
        miss = statistics.median(timed(search.within, q) for q in far)
        scan = statistics.median(timed(numpy_scan, search.words, q, 31) for q in far[:50])
        values = [int(h, 16) for h in hashes]
        pyq = [int(h, 16) for h in far_hex[:10]]
        pyscan = statistics.median(timed(python_scan, values, q, 31) for q in pyq)
        assert all(search.within(q) for q in near), "a near query found nothing"
        print(f"| {n:,} | {build:.0f} | {size:.1f} | {hit:.0f} | {miss:.0f} | {scan:.0f} "
              f"| {pyscan:.0f} |")
    print()


def timed(fn: Callable[..., Any], *args: Any) -> float:
    """Microseconds one call of fn(*args) takes."""
    t = time.perf_counter()
    fn(*args)
    return (time.perf_counter() - t) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    bench_images(args.repeat)
    bench_search(args.sizes, args.queries)


if __name__ == "__main__":
    main()
