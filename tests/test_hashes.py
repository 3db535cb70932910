"""Image hash matching (gateway/proxy/hashes.py) on synthetic images the tests draw themselves."""

from __future__ import annotations

import asyncio
import hashlib
import io
import random
import struct
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageDraw

from gateway.feedformat.document import make_entry
from gateway.proxy.hashes import (
    HashEntry,
    HashIndex,
    HashMatch,
    HashSettings,
    PdqSearch,
    decode_rgb,
    entries_from_feed_entries,
    pdq_hashes,
    pdq_words,
)

BASIS = {"authority": "Authority of Example", "decision": "12/QD", "date": "2026-11-20"}


# ------------------------------------------------------------------ synthetic images

def scene(seed: int, size: tuple[int, int] = (640, 480), noise: float = 12.0) -> Image.Image:
    """A smooth random colour field with ellipses and grain: a PDQ quality of 100."""
    w, h = size
    rng = np.random.default_rng(seed)
    base = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8))
    img = base.resize((w, h), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(img)
    for _ in range(6):
        x, y = int(rng.integers(0, w - 60)), int(rng.integers(0, h - 60))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        draw.ellipse([x, y, x + int(rng.integers(30, 200)), y + int(rng.integers(30, 200))],
                     fill=colour)
    if not noise:
        return img
    grain = rng.normal(0, noise, (h, w, 3))
    return Image.fromarray(np.clip(np.asarray(img) + grain, 0, 255).astype(np.uint8))


def encode(img: Image.Image, fmt: str = "PNG", **options: Any) -> bytes:
    out = io.BytesIO()
    img.save(out, fmt, **options)
    return out.getvalue()


def pdq_of(data: bytes) -> tuple[str, int]:
    pixels = decode_rgb(data, 10**8)
    assert pixels is not None
    (value,), quality = pdq_hashes(pixels, dihedral=False)
    return value, quality


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def entry(value: str, etype: str = "pdq", eid: str = "E-1", mandatory: bool = True,
          category: str = "csam") -> HashEntry:
    return HashEntry(eid, etype, value, category, mandatory)


def flip(value: str, bits: list[int]) -> str:
    """`value` with the given bit positions (0 = most significant) inverted."""
    n = int(value, 16)
    for b in bits:
        n ^= 1 << (255 - b)
    return f"{n:064x}"


ORIGINAL = encode(scene(1))
ORIGINAL_PDQ, ORIGINAL_QUALITY = pdq_of(ORIGINAL)


# ------------------------------------------------------------------ SHA-256

def test_sha256_exact_match_reports_the_entry() -> None:
    e = entry(sha(ORIGINAL), "sha256", "SHA-1", mandatory=True)
    index = HashIndex.from_entries([e])
    assert index.match(ORIGINAL, "image/png") == HashMatch(e, "sha256", 0, 100)
    assert len(index) == 1


def test_sha256_matches_any_bytes_but_one_changed_byte_does_not() -> None:
    blob = b"not an image at all, still listed by hash"
    e = entry(sha(blob), "sha256", "SHA-2", mandatory=False, category="adult")
    index = HashIndex.from_entries([e])
    assert index.match(blob, "application/octet-stream") == HashMatch(e, "sha256", 0, 100)
    assert index.match(blob[:-1] + b"!", "application/octet-stream") is None


def test_sha256_takes_precedence_over_pdq() -> None:
    by_sha = entry(sha(ORIGINAL), "sha256", "SHA-3")
    by_pdq = entry(ORIGINAL_PDQ, "pdq", "PDQ-3")
    index = HashIndex.from_entries([by_pdq, by_sha])
    assert index.match(ORIGINAL) == HashMatch(by_sha, "sha256", 0, 100)


# ------------------------------------------------------------------ PDQ

def test_synthetic_scene_has_full_quality() -> None:
    assert ORIGINAL_QUALITY == 100


def test_pdq_same_image_matches_at_distance_zero() -> None:
    e = entry(ORIGINAL_PDQ, eid="PDQ-1")
    assert HashIndex.from_entries([e]).match(ORIGINAL, "image/png") == HashMatch(e, "pdq", 0, 100)


@pytest.mark.parametrize(("label", "variant"), [
    ("jpeg q30", lambda img: encode(img, "JPEG", quality=30)),
    ("half size jpeg q60", lambda img: encode(img.resize((320, 240)), "JPEG", quality=60)),
    ("double size webp", lambda img: encode(img.resize((1280, 960)), "WEBP", quality=50)),
    ("cropped 2% gif", lambda img: encode(img.crop((6, 5, 634, 475)).convert("P"), "GIF")),
])
def test_pdq_reencoded_and_resized_copies_still_match(label: str, variant: Any) -> None:
    e = entry(ORIGINAL_PDQ, eid="PDQ-1")
    index = HashIndex.from_entries([e])
    copy = variant(scene(1))
    assert sha(copy) != sha(ORIGINAL)
    got = index.match(copy, "image/jpeg")
    assert got is not None, label
    assert (got.entry, got.type, got.quality) == (e, "pdq", 100)
    assert got.distance <= 31, (label, got.distance)


def test_pdq_unrelated_images_do_not_match() -> None:
    index = HashIndex.from_entries([entry(ORIGINAL_PDQ)])
    for seed in range(2, 12):
        data = encode(scene(seed), "JPEG", quality=85)
        assert pdq_of(data)[1] == 100
        assert index.match(data, "image/jpeg") is None, seed


def test_pdq_flat_image_is_ignored_unless_quality_threshold_is_lowered() -> None:
    flat = encode(Image.new("RGB", (300, 200), (120, 30, 200)))
    value, quality = pdq_of(flat)
    assert quality == 0
    e = entry(value, eid="FLAT")
    assert HashIndex.from_entries([e]).match(flat, "image/png") is None
    lenient = HashIndex.from_entries([e], HashSettings(pdq_min_quality=0))
    assert lenient.match(flat, "image/png") == HashMatch(e, "pdq", 0, 0)


def test_pdq_quality_threshold_is_inclusive() -> None:
    ramp = np.tile(np.linspace(0, 255, 300).astype(np.uint8), (200, 1))
    gradient = encode(Image.fromarray(ramp).convert("RGB"))
    value, quality = pdq_of(gradient)
    assert quality == 44
    e = entry(value, eid="RAMP")
    assert HashIndex.from_entries([e]).match(gradient) is None
    at = HashIndex.from_entries([e], HashSettings(pdq_min_quality=44))
    assert at.match(gradient) == HashMatch(e, "pdq", 0, 44)
    above = HashIndex.from_entries([e], HashSettings(pdq_min_quality=45))
    assert above.match(gradient) is None


def test_pdq_distance_threshold_is_inclusive() -> None:
    index = HashIndex.from_entries([entry(flip(ORIGINAL_PDQ, list(range(0, 256, 8))))])
    got = index.match(ORIGINAL)          # 32 bits apart: one more than the default
    assert got is None
    loose = HashIndex.from_entries([entry(flip(ORIGINAL_PDQ, list(range(0, 256, 8))))],
                                   HashSettings(pdq_distance=32))
    got = loose.match(ORIGINAL)
    assert got is not None and got.distance == 32
    near = HashIndex.from_entries([entry(flip(ORIGINAL_PDQ, list(range(0, 248, 8))))])
    got = near.match(ORIGINAL)
    assert got is not None and got.distance == 31


def test_pdq_mirrored_copy_matches_only_with_dihedral() -> None:
    mirrored = encode(scene(1).transpose(Image.Transpose.FLIP_LEFT_RIGHT))
    e = entry(ORIGINAL_PDQ, eid="PDQ-1")
    assert HashIndex.from_entries([e]).match(mirrored) is None
    got = HashIndex.from_entries([e], HashSettings(pdq_dihedral=True)).match(mirrored)
    assert got is not None and (got.entry, got.type, got.quality) == (e, "pdq", 100)
    assert got.distance <= 31


def test_nearest_entry_wins_and_ties_go_to_mandatory_then_lowest_id() -> None:
    far = entry(flip(ORIGINAL_PDQ, [0, 1, 2]), eid="A-far")
    near = entry(flip(ORIGINAL_PDQ, [0]), eid="Z-near", mandatory=False)
    got = HashIndex.from_entries([far, near]).match(ORIGINAL)
    assert got is not None and (got.entry.id, got.distance) == ("Z-near", 1)
    tie_a = entry(flip(ORIGINAL_PDQ, [5]), eid="B", mandatory=False)
    tie_b = entry(flip(ORIGINAL_PDQ, [9]), eid="C", mandatory=True)
    tie_c = entry(flip(ORIGINAL_PDQ, [7]), eid="A", mandatory=False)
    got = HashIndex.from_entries([tie_a, tie_b, tie_c]).match(ORIGINAL)
    assert got is not None and (got.entry.id, got.distance) == ("C", 1)


def test_duplicate_hash_values_keep_the_mandatory_entry() -> None:
    value = sha(ORIGINAL)
    index = HashIndex.from_entries([
        entry(value, "sha256", "local-1", mandatory=False, category="adult"),
        entry(value.upper(), "sha256", "order-9", mandatory=True),
        entry(ORIGINAL_PDQ, "pdq", "p-2", mandatory=False),
        entry(ORIGINAL_PDQ, "pdq", "p-1", mandatory=False),
    ])
    assert len(index) == 2
    got = index.match(ORIGINAL)
    assert got is not None and (got.entry.id, got.entry.category) == ("order-9", "csam")
    pdq_only = HashIndex.from_entries([entry(ORIGINAL_PDQ, "pdq", i, False) for i in "zyx"])
    got = pdq_only.match(ORIGINAL)
    assert got is not None and got.entry.id == "x"


def test_no_pdq_entries_means_no_decoding() -> None:
    index = HashIndex.from_entries([entry("00" * 32, "sha256")])
    assert index.match(ORIGINAL) is None
    assert len(HashIndex.from_entries([])) == 0
    assert HashIndex.from_entries([]).match(ORIGINAL) is None


# ------------------------------------------------------------------ limits and bad input

def test_size_cap_is_honoured_for_both_hash_types() -> None:
    entries = [entry(sha(ORIGINAL), "sha256", "S"), entry(ORIGINAL_PDQ, "pdq", "P")]
    exact = HashIndex.from_entries(entries, HashSettings(max_bytes=len(ORIGINAL)))
    got = exact.match(ORIGINAL)
    assert got is not None and got.entry.id == "S"
    small = HashIndex.from_entries(entries, HashSettings(max_bytes=len(ORIGINAL) - 1))
    assert small.match(ORIGINAL) is None


def test_pixel_cap_refuses_decompression_bombs() -> None:
    index = HashIndex.from_entries([entry(ORIGINAL_PDQ)], HashSettings(max_pixels=640 * 480 - 1))
    assert index.match(ORIGINAL) is None
    assert HashIndex.from_entries([entry(ORIGINAL_PDQ)],
                                  HashSettings(max_pixels=640 * 480)).match(ORIGINAL) is not None


def png_header_only(width: int, height: int) -> bytes:
    """A PNG claiming `width` x `height` with a few bytes of data: a decompression bomb's head."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body)))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


BAD_INPUTS = [
    ("empty", b""),
    ("text", b"<html><body>hello</body></html>"),
    ("random bytes", random.Random(5).randbytes(4096)),
    ("png signature only", b"\x89PNG\r\n\x1a\n"),
    ("truncated png", ORIGINAL[: len(ORIGINAL) // 2]),
    ("truncated jpeg", encode(scene(1), "JPEG")[:3000]),
    ("png bomb header 100k x 100k", png_header_only(100_000, 100_000)),
    ("png 20k x 20k with no data", png_header_only(20_000, 20_000)),
    ("svg", b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>'),
    ("tiff (not a web format)", encode(scene(1), "TIFF")),
    ("corrupted jpeg body", (lambda j: j[:600] + bytes(b ^ 0x5A for b in j[600:]))(
        encode(scene(1), "JPEG"))),
]


@pytest.mark.parametrize(("label", "data"), BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
@pytest.mark.parametrize("content_type", ["", "image/png", "image/jpeg"])
def test_bad_bytes_never_raise(label: str, data: bytes, content_type: str) -> None:
    index = HashIndex.from_entries([entry(ORIGINAL_PDQ)], HashSettings(pdq_min_quality=0))
    assert index.match(data, content_type) is None, label


@pytest.mark.parametrize(("content_type", "matched"), [
    ("image/png", True), ("IMAGE/PNG; charset=binary", True), ("", True),
    ("application/octet-stream", True), ("image/svg+xml", False), ("text/html", False),
])
def test_content_type_gates_pdq_decoding(content_type: str, matched: bool) -> None:
    index = HashIndex.from_entries([entry(ORIGINAL_PDQ)])
    assert (index.match(ORIGINAL, content_type) is not None) is matched


# ------------------------------------------------------------------ entries and settings

def test_entries_from_feed_entries_keeps_block_hash_entries() -> None:
    raw_entries = [
        {"id": "F-1", "type": "pdq", "value": ORIGINAL_PDQ.upper(), "categories": ["csam", "x"],
         "mandatory": True, "legal_basis": BASIS},
        {"id": "F-2", "type": "sha256", "value": sha(ORIGINAL), "categories": ["adult"]},
        {"id": "F-3", "type": "domain", "value": "bad.example", "categories": ["adult"]},
        {"id": "F-4", "type": "sha256", "value": "ab" * 32, "categories": ["adult"],
         "action": "warn"},
    ]
    feed = [make_entry({**r, "issued_at": "2026-11-23T10:00:00Z"}) for r in raw_entries]
    assert entries_from_feed_entries(feed) == [
        HashEntry("F-1", "pdq", ORIGINAL_PDQ, "csam", True),
        HashEntry("F-2", "sha256", sha(ORIGINAL), "adult", False),
    ]


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"type": "md5"}, "hash entry 'E-9': type must be sha256 or pdq, got 'md5'"),
    ({"value": "ab" * 31}, "hash entry 'E-9': value must be 64 hexadecimal characters"),
    ({"value": "zz" * 32}, "hash entry 'E-9': value must be 64 hexadecimal characters"),
])
def test_bad_hash_entry_names_the_entry(kwargs: dict[str, str], message: str) -> None:
    fields = {"id": "E-9", "type": "pdq", "value": "ab" * 32, "category": "csam",
              "mandatory": False, **kwargs}
    with pytest.raises(ValueError) as err:
        HashEntry(**fields)  # type: ignore[arg-type]
    assert str(err.value) == message


def test_hash_entry_value_is_normalised() -> None:
    assert HashEntry("E", "sha256", " " + "AB" * 32 + "\n", "c", False).value == "ab" * 32


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"pdq_distance": 64}, "pdq_distance must be 0..63"),
    ({"pdq_distance": -1}, "pdq_distance must be 0..63"),
    ({"pdq_min_quality": 101}, "pdq_min_quality must be 0..100"),
    ({"max_bytes": 0}, "max_bytes must be at least 1"),
    ({"max_pixels": 0}, "max_pixels must be at least 1"),
])
def test_bad_settings_are_refused(kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError) as err:
        HashSettings(**kwargs)  # type: ignore[arg-type]
    assert str(err.value) == message


# ------------------------------------------------------------------ the multi-index search

def brute_force(hashes: list[str], query: str, radius: int) -> list[tuple[int, int]]:
    q = int(query, 16)
    out = [(i, (int(h, 16) ^ q).bit_count()) for i, h in enumerate(hashes)]
    return [(i, d) for i, d in out if d <= radius]


@pytest.mark.parametrize("radius", [0, 15, 16, 31, 47, 63])
def test_multi_index_search_equals_brute_force(radius: int) -> None:
    rng = random.Random(radius)
    hashes = [f"{rng.getrandbits(256):064x}" for _ in range(3000)]
    search = PdqSearch(hashes, radius)
    queries = []
    for k in range(0, 70, 3):
        base = rng.choice(hashes)
        queries.append(flip(base, rng.sample(range(256), k)))
        # The hard case for a multi-index: the flips spread as evenly as possible over chunks.
        queries.append(flip(base, [(j % 16) * 16 + j // 16 for j in range(k)]))
    queries += [f"{rng.getrandbits(256):064x}" for _ in range(20)]
    found = 0
    for q in queries:
        got = sorted(search.within(pdq_words(q)))
        assert got == brute_force(hashes, q, radius), q
        found += len(got)
    assert found >= 2       # the search did find neighbours (a test that cannot fail is none)


def test_empty_search_finds_nothing() -> None:
    assert PdqSearch([], 31).within(pdq_words("ab" * 32)) == []


# ------------------------------------------------------------------ off the event loop

async def test_check_runs_off_the_event_loop() -> None:
    big = encode(scene(3, (3000, 2000), noise=0), "PNG", compress_level=1)
    value, _ = pdq_of(big)
    e = entry(value, eid="BIG")
    index = HashIndex.from_entries([e], HashSettings(max_bytes=len(big)))
    ticks = 0
    done = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not done.is_set():
            await asyncio.sleep(0.002)
            ticks += 1

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=1) as pool:
        got = await index.check(big, "image/png", executor=pool)
    elapsed = time.perf_counter() - start
    done.set()
    await task
    assert got == HashMatch(e, "pdq", 0, 100)
    # Hashing took tens of ms; had it run on the loop, the ticker could not have run at all.
    assert elapsed > 0.03
    assert ticks >= 5, (ticks, elapsed)
    assert await index.check(b"junk", "image/png") is None       # default executor


async def test_concurrent_checks_in_a_pool_give_each_its_own_answer() -> None:
    e = entry(ORIGINAL_PDQ, eid="PDQ-1")
    index = HashIndex.from_entries([e])
    copies = [encode(scene(1), "JPEG", quality=q) for q in (40, 60, 80, 95)]
    others = [encode(scene(seed), "JPEG", quality=80) for seed in (20, 21, 22, 23)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        got = await asyncio.gather(*(index.check(d, "image/jpeg", executor=pool)
                                     for pair in zip(copies, others, strict=True) for d in pair))
    assert [g is not None and g.entry == e for g in got] == [True, False] * 4
