"""Image hash matching: SHA-256 exact and PDQ perceptual, against `sha256`/`pdq` feed entries.

The proxy hands over an image response's bytes; nothing of the image is kept or logged, only
the matching entry is returned. PDQ is Meta's published perceptual hash, computed by the
`pdqhash` C++ bindings; images are decoded with Pillow and shrunk to at most 512 pixels a side
first (PDQ works on a 64x64 luminance grid, so this changes a hash by a few bits at most and
makes a 12-megapixel JPEG ~40x cheaper to hash).

PDQ search is a multi-index hash: the 256 bits are cut into 16 chunks of 16 bits. If two hashes
differ in at most `d` bits, some chunk differs in at most `d // 16` bits (pigeonhole), so
probing every chunk's value and its neighbours within that radius (17 probes a chunk for the
default d = 31) finds every candidate; candidates are then checked on all 256 bits. The
buckets are one sorted numpy array (160 bytes a hash, not a dict of lists). At 100k hashes a
query takes ~0.3 ms against ~4 ms for a numpy linear scan (bench/hash_bench.py,
docs/performance.md).
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import re
from collections.abc import Iterable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pdqhash
from PIL import Image

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from gateway.feedformat.document import FeedEntry

SHA256, PDQ = "sha256", "pdq"
HASH_TYPES = (SHA256, PDQ)
CHUNKS = 16                      # PDQ multi-index: 16 chunks of 16 bits
MAX_PDQ_DISTANCE = 63            # radius 3 a chunk: 697 probes a chunk; beyond that PDQ is noise
HASH_SIDE = 512                  # images are shrunk to fit HASH_SIDE x HASH_SIDE before PDQ
# Formats Pillow may decode here: what browsers show as images. Naming them keeps Pillow's
# rarer decoders (a larger attack surface) out of the proxy.
IMAGE_FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP")
_HEX64 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class HashEntry:
    """One `sha256` or `pdq` feed entry, as the matcher needs it."""

    id: str
    type: str
    value: str
    category: str
    mandatory: bool

    def __post_init__(self) -> None:
        if self.type not in HASH_TYPES:
            raise ValueError(f"hash entry {self.id!r}: type must be sha256 or pdq, "
                             f"got {self.type!r}")
        value = self.value.strip().lower()
        if not _HEX64.fullmatch(value):
            raise ValueError(f"hash entry {self.id!r}: value must be 64 hexadecimal characters")
        object.__setattr__(self, "value", value)


@dataclass(frozen=True)
class HashMatch:
    """Which entry an image matched, and how closely (`distance` 0 and `quality` 100 for sha256)."""

    entry: HashEntry
    type: str
    distance: int
    quality: int


@dataclass(frozen=True)
class HashSettings:
    """Tunables; the defaults are ThreatExchange's recommended PDQ thresholds."""

    max_bytes: int = 5 * 1024 * 1024     # larger images are not hashed
    pdq_distance: int = 31               # match when Hamming distance <= this
    pdq_min_quality: int = 50            # ignore PDQ hashes of low-quality (flat) images
    max_pixels: int = 50_000_000         # a decompression bomb is not decoded
    pdq_dihedral: bool = False           # also match rotated / mirrored copies (8 hashes)

    def __post_init__(self) -> None:
        if self.max_bytes < 1:
            raise ValueError("max_bytes must be at least 1")
        if not 0 <= self.pdq_distance <= MAX_PDQ_DISTANCE:
            raise ValueError(f"pdq_distance must be 0..{MAX_PDQ_DISTANCE}")
        if not 0 <= self.pdq_min_quality <= 100:
            raise ValueError("pdq_min_quality must be 0..100")
        if self.max_pixels < 1:
            raise ValueError("max_pixels must be at least 1")


def _preferred(a: HashEntry, b: HashEntry) -> HashEntry:
    """Of two entries with the same hash, the one to report: mandatory first, then lowest id."""
    return min(a, b, key=lambda e: (not e.mandatory, e.id))


def entries_from_feed_entries(entries: Iterable[FeedEntry]) -> list[HashEntry]:
    """The `sha256`/`pdq` block entries of a feed, with their first (primary) category."""
    return [HashEntry(e.id, e.type, e.value, e.categories[0], e.mandatory)
            for e in entries
            if e.type in HASH_TYPES and e.action == "block" and e.categories]


def pdq_words(hex_value: str) -> NDArray[np.uint64]:
    """A 64-hex-digit PDQ hash as 4 native uint64 words (first word = first 16 digits)."""
    return np.frombuffer(bytes.fromhex(hex_value), dtype=">u8").astype(np.uint64)


def _chunk_masks(radius: int) -> NDArray[np.uint32]:
    """Every 16-bit XOR mask with at most `radius` bits set (the neighbours to probe)."""
    return np.array([m for m in range(1 << 16) if m.bit_count() <= radius], dtype=np.uint32)


class PdqSearch:
    """Multi-index PDQ search: every stored hash within `radius` bits of a query."""

    def __init__(self, hashes: Iterable[str], radius: int) -> None:
        raw = b"".join(bytes.fromhex(h) for h in hashes)
        self.radius = radius
        self.words: NDArray[np.uint64] = (
            np.frombuffer(raw, dtype=">u8").astype(np.uint64).reshape(-1, 4))
        chunks = np.frombuffer(raw, dtype=">u2").astype(np.uint32).reshape(-1, CHUNKS)
        # One sorted array of (chunk number << 16 | chunk value) keys for all 16 chunks,
        # with the row each key came from: 8 bytes a chunk, 128 bytes a hash (+32 of words).
        keys = (np.arange(CHUNKS, dtype=np.uint32) << 16 | chunks).ravel()
        order = np.argsort(keys, kind="stable")
        self._keys = keys[order]
        self._rows = (order // CHUNKS).astype(np.uint32)
        self._masks = _chunk_masks(radius // CHUNKS)
        self._chunk_base = (np.arange(CHUNKS, dtype=np.uint32) << 16)[:, None]

    def __len__(self) -> int:
        return int(self.words.shape[0])

    @property
    def nbytes(self) -> int:
        """Memory the search arrays take (what a large national list costs)."""
        return int(self.words.nbytes + self._keys.nbytes + self._rows.nbytes)

    def candidates(self, query: NDArray[np.uint64]) -> NDArray[np.intp]:
        """Rows sharing some chunk with `query` up to the per-chunk radius (a superset)."""
        qchunks = query.astype(">u8").view(">u2").astype(np.uint32)
        probes = (self._chunk_base | (qchunks[:, None] ^ self._masks[None, :])).ravel()
        lo = np.searchsorted(self._keys, probes, side="left")
        hi = np.searchsorted(self._keys, probes, side="right")
        counts = hi - lo
        total = int(counts.sum())
        if not total:
            return np.empty(0, dtype=np.intp)
        # Every position in every [lo, hi) range, without a Python loop over the ranges.
        starts = np.repeat(lo - (np.cumsum(counts) - counts), counts)
        return np.unique(self._rows[starts + np.arange(total)]).astype(np.intp)

    def within(self, query: NDArray[np.uint64]) -> list[tuple[int, int]]:
        """(row, distance) of every stored hash within `radius` bits of `query`."""
        if not len(self):
            return []
        rows = self.candidates(query)
        if not rows.size:
            return []
        dist = np.bitwise_count(self.words[rows] ^ query).sum(axis=1, dtype=np.int64)
        keep = dist <= self.radius
        return list(zip(rows[keep].tolist(), dist[keep].tolist(), strict=True))


def decode_rgb(data: bytes, max_pixels: int) -> NDArray[np.uint8] | None:
    """The image (first frame) as an RGB array at most HASH_SIDE a side, or None if unusable."""
    with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as img:
        width, height = img.size
        if width < 1 or height < 1 or width * height > max_pixels:
            return None
        img.draft("RGB", (HASH_SIDE, HASH_SIDE))   # JPEG: decode at 1/2..1/8 scale directly
        rgb = img.convert("RGB")
    # Area averaging, in one step: PDQ box-filters down to 64x64 anyway, and this is ~5x
    # cheaper than Pillow's default two-step bicubic.
    rgb.thumbnail((HASH_SIDE, HASH_SIDE), Image.Resampling.BOX, reducing_gap=None)
    return np.asarray(rgb, dtype=np.uint8)


def pdq_hashes(pixels: NDArray[np.uint8], dihedral: bool) -> tuple[list[str], int]:
    """PDQ hash(es) of an RGB array as 64-digit hex, and the image's quality (0-100)."""
    vectors: list[Any]
    if dihedral:
        vectors, quality = pdqhash.compute_dihedral(pixels)
    else:
        vector, quality = pdqhash.compute(pixels)
        vectors = [vector]
    return [np.packbits(np.asarray(v, dtype=np.uint8)).tobytes().hex() for v in vectors], \
        int(quality)


class HashIndex:
    """The hashes in force for one generation of feeds; immutable, rebuilt (aside) on change."""

    def __init__(self, sha: dict[bytes, HashEntry], pdq_entries: list[HashEntry],
                 settings: HashSettings) -> None:
        self.settings = settings
        self._sha = sha
        self._pdq_entries = pdq_entries
        self._pdq = PdqSearch((e.value for e in pdq_entries), settings.pdq_distance)

    @classmethod
    def from_entries(cls, entries: Iterable[HashEntry],
                     settings: HashSettings = HashSettings()) -> HashIndex:
        """Index entries: SHA-256 by digest, PDQ for multi-index search."""
        sha: dict[bytes, HashEntry] = {}
        pdq: dict[str, HashEntry] = {}
        for e in entries:
            table: dict[Any, HashEntry] = sha if e.type == SHA256 else pdq
            key: bytes | str = bytes.fromhex(e.value) if e.type == SHA256 else e.value
            old = table.get(key)
            table[key] = e if old is None else _preferred(old, e)
        return cls(sha, list(pdq.values()), settings)

    def __len__(self) -> int:
        return len(self._sha) + len(self._pdq_entries)

    def match(self, data: bytes, content_type: str = "") -> HashMatch | None:
        """The entry these image bytes match, or None (also for too-large or undecodable data).

        CPU-bound (decode + PDQ: ~5-40 ms); call `check` from the event loop.
        """
        if not data or len(data) > self.settings.max_bytes:
            return None
        hit = self.lookup_sha256(hashlib.sha256(data).digest())
        if hit is not None:
            return hit
        if not self._pdq_entries or not _may_be_raster(content_type):
            return None
        try:
            pixels = decode_rgb(data, self.settings.max_pixels)
            if pixels is None:
                return None
            hashes, quality = pdq_hashes(pixels, self.settings.pdq_dihedral)
        except Exception:   # hostile bytes: any decoder error means "no match"
            return None
        if quality < self.settings.pdq_min_quality:
            return None
        return self.nearest(hashes, quality)

    def lookup_sha256(self, digest: bytes) -> HashMatch | None:
        """The entry for a SHA-256 digest (match() and the proxy's self-probe both ask here)."""
        hit = self._sha.get(digest)
        return None if hit is None else HashMatch(hit, SHA256, 0, 100)

    def pdq_values(self) -> set[str]:
        """The PDQ hashes indexed (the self-probe skips values it already found)."""
        return {e.value for e in self._pdq_entries}

    def nearest(self, hashes: list[str], quality: int) -> HashMatch | None:
        """The closest PDQ entry to any of `hashes`; ties go to mandatory, then lowest id."""
        best: tuple[int, bool, str] | None = None
        found: HashEntry | None = None
        for h in hashes:
            for row, dist in self._pdq.within(pdq_words(h)):
                e = self._pdq_entries[row]
                rank = (dist, not e.mandatory, e.id)
                if best is None or rank < best:
                    best, found = rank, e
        if best is None or found is None:
            return None
        return HashMatch(found, PDQ, best[0], quality)

    async def check(self, data: bytes, content_type: str = "", *,
                    executor: Executor | None = None) -> HashMatch | None:
        """`match` in `executor` (default: the loop's thread pool), keeping the loop free.

        Pillow's decoders and numpy release the GIL, so a thread pool gives real parallelism.
        """
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(executor, self.match, data, content_type)


def _may_be_raster(content_type: str) -> bool:
    """Whether a response may hold a decodable image (an empty type: let the bytes tell)."""
    ctype = content_type.split(";", 1)[0].strip().lower()
    return not ctype or (ctype.startswith("image/") and ctype != "image/svg+xml") \
        or ctype == "application/octet-stream"
