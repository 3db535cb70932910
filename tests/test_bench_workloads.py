"""The pure parts of `make bench` (bench/workloads.py): list, Zipf stream and query files.

The benchmark's numbers are only as good as its inputs: the same names in every server's
syntax, a blocked share that comes from the real lists with the servers' suffix semantics, a
Zipf stream whose head really is the head, and "unique" names that never repeat across the
servers sharing one upstream. No dnsperf, no servers here.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from bench import workloads as wl


def test_read_names_takes_every_list_syntax_and_drops_what_no_server_takes(
    tmp_path: Path,
) -> None:
    src = tmp_path / "mixed.txt"
    src.write_text(
        "# comment\n! adblock comment\n[Adblock Plus]\n\n"
        "Plain.Example.COM\n"  # domains: lowercased
        "0.0.0.0 hosts-form.example.org\n"  # hosts
        "||adblock-form.example.net^\n"  # adblock anchor
        "7,csv-form.example.io\n"  # tranco csv
        "trailing-dot.example.com.\n"
        "singlelabel\n"  # a TLD alone: never a list entry
        "bad_underscore.example.com\n"  # not LDH
        "-leading-hyphen.example.com\n"
        "something.test\n"  # special-use TLD: unbound answers it itself
        "x.localhost\n"
        "0.0.0.0 inline.example.com # a comment\n"
        "cosmetic.example.com##.banner\n"
    )
    assert list(wl.read_names(src)) == [
        "plain.example.com",
        "hosts-form.example.org",
        "adblock-form.example.net",
        "csv-form.example.io",
        "trailing-dot.example.com",
        "inline.example.com",
    ]


def test_blocklist_is_real_names_first_then_synthetic_up_to_n(tmp_path: Path) -> None:
    real = tmp_path / "real.txt"
    real.write_text("a.example.com\nb.example.com\na.example.com\n")
    names = wl.build_blocklist(6, [real])
    assert names[:2] == ["a.example.com", "b.example.com"]  # deduplicated, file order
    assert names[2:] == [wl.blocked_name(i) for i in range(4)]
    assert len(set(names)) == 6
    assert wl.build_blocklist(1, [real]) == ["a.example.com"]  # small runs: real names only


def test_is_blocked_is_suffix_match_on_label_boundaries() -> None:
    listed = {"casino.example.com", "adult.example"}
    assert wl.is_blocked("casino.example.com", listed)
    assert wl.is_blocked("www.casino.example.com", listed)
    assert wl.is_blocked("a.b.adult.example", listed)
    assert not wl.is_blocked("notcasino.example.com", listed)
    assert not wl.is_blocked("example.com", listed)


def test_zipf_cumulative_weights_are_one_over_rank_to_the_s() -> None:
    assert wl.zipf_cum_weights(3, 1.0) == pytest.approx([1.0, 1.5, 1.5 + 1 / 3])
    assert wl.zipf_cum_weights(3, 2.0) == pytest.approx([1.0, 1.25, 1.25 + 1 / 9])


def test_zipf_stream_draws_by_rank_and_is_reproducible() -> None:
    ranked = [f"r{i}.example.com" for i in range(1, 1001)]
    stream = wl.zipf_stream(ranked, 100_000, s=1.0, seed=7)
    assert stream == wl.zipf_stream(ranked, 100_000, s=1.0, seed=7)
    assert set(stream) <= set(ranked)
    counts = Counter(stream)
    # P(rank r) = (1/r) / H(1000), H(1000) ~ 7.485: rank 1 ~13.4 %, rank 2 ~6.7 %.
    assert 0.12 < counts["r1.example.com"] / len(stream) < 0.15
    assert 1.7 < counts["r1.example.com"] / counts["r2.example.com"] < 2.3
    head = sum(counts[f"r{i}.example.com"] for i in range(1, 11))
    tail = sum(counts[f"r{i}.example.com"] for i in range(991, 1001))
    assert head > 50 * tail  # the first ten ranks dwarf the last ten (ratio ~ 290 expected)


def test_zipf_blocked_share_comes_from_the_list_with_suffix_semantics() -> None:
    ranked = ["popular.example.com", "www.casino.example.net", "other.example.org"]
    listed = {"casino.example.net"}
    stream = wl.zipf_stream(ranked, 10_000, seed=1)
    blocked = [n for n in stream if wl.is_blocked(n, listed)]
    assert set(blocked) == {"www.casino.example.net"}
    # rank 2 of 3 with s=1: (1/2) / (1 + 1/2 + 1/3) = 27 %
    assert 0.25 < len(blocked) / len(stream) < 0.30


def test_uniform_draws_cover_the_whole_list() -> None:
    names = [wl.blocked_name(i) for i in range(1000)]
    draws = wl.uniform_draws(names, 20_000)
    assert len(draws) == 20_000
    assert len(set(draws)) > 990  # P(a name never drawn) = e^-20: all but a handful at most


def test_mix_shares_and_unique_misses_per_tag() -> None:
    blocked = [wl.blocked_name(i) for i in range(500)]
    cached = [wl.cached_name(i) for i in range(100)]
    one = wl.mix_stream(blocked, cached, 10_000, "safegate-1")
    two = wl.mix_stream(blocked, cached, 10_000, "unbound-1")
    kinds = Counter(
        "cached" if n.endswith(wl.CACHED_ZONE) else "miss" if n.endswith(wl.MISS_ZONE) else "blk"
        for n in one
    )
    assert kinds == {"blk": 2000, "cached": 7500, "miss": 500}
    miss1 = {n for n in one if n.endswith(wl.MISS_ZONE)}
    miss2 = {n for n in two if n.endswith(wl.MISS_ZONE)}
    assert len(miss1) == 500  # never repeated within a run
    assert not miss1 & miss2  # nor across the servers sharing one upstream


def test_flood_names_are_unique_and_under_the_flood_zone() -> None:
    names = [wl.flood_name(i, "dnsmasq-abc") for i in range(50_000)]
    assert len(set(names)) == len(names)
    assert all(n.endswith(f".dnsmasq-abc.{wl.FLOOD_ZONE}") for n in names)


def test_every_server_gets_the_same_names(tmp_path: Path) -> None:
    names = ["casino.example.com", wl.blocked_name(3)]
    wl.write_safegate_list(tmp_path / "sg", names)
    wl.write_dnsmasq_conf(tmp_path / "dm", names)
    wl.write_unbound_zones(tmp_path / "ub", names)
    wl.write_queries(tmp_path / "q", names)
    assert (tmp_path / "sg").read_text().split() == names
    assert (tmp_path / "dm").read_text().splitlines() == [f"address=/{n}/" for n in names]
    assert (tmp_path / "ub").read_text().splitlines() == [
        "server:",
        *(f'  local-zone: "{n}." always_nxdomain' for n in names),
    ]
    assert (tmp_path / "q").read_text().splitlines() == [f"{n} A" for n in names]
