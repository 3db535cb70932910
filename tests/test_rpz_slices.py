"""RPZ files compiled in slices parse exactly as if whole, and a big zone compiles in bounded
memory: a national list published as RPZ must load on a 1 GB machine."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.lists import ParsedRule
from gateway.lists.catalog import load_catalog
from gateway.lists.compile import compile_catalog
from gateway.lists.index import PREFIX, ListIndex, align8
from gateway.lists.rpz import RpzState, parse_rpz
from gateway.lists.slices import decode_lines, slice_tasks

ROOT = Path(__file__).resolve().parents[1]
RPZ_DIR = Path("/work/shared/data/rpz")
REAL = sorted(RPZ_DIR.glob("*.rpz")) if RPZ_DIR.is_dir() else []

Item = tuple[object, ...]

# Every construct that carries state across lines, plus the ones that only look like it.
EDGE = (
    "\ufeff$TTL 3600\n"
    "x.example CNAME .\n"                     # before any $ORIGIN or SOA: zone-relative
    "$ORIGIN rpz.test.\n"
    "@ 300 IN SOA ns.rpz.test. hostmaster.rpz.test. (\n"
    "   1 ; serial ( a paren in a comment\n"
    "   3600 3600 86400 60 )\n"
    "  NS ns.rpz.test.\n"
    "a.example CNAME .\n"
    '  TXT "a ; quoted ( semicolon"\n'       # inherits a.example
    "  CNAME .\n"
    "*.a.example CNAME .\n"
    "b.example CNAME . ; comment with ( paren\n"
    't.example TXT ( "a ( b"\n'              # a quoted string inside parentheses
    ' "c ) d" )\n'
    'c.example TXT "unterminated ( quote\n'
    "d.example CNAME rpz-passthru.\r\n"
    "$ORIGIN sub.rpz.test.\n"
    "e CNAME .\n"
    "  CNAME *.\n"
    "f.example.sub.rpz.test. CNAME .\n"
    "g.example (\n"
    " CNAME\n"
    "\n"
    " . )\n"
    "h.example CNAME . )\n"                   # unbalanced: sets no owner
    " CNAME *.\n"                            # so this one inherits g.example
    "soa CNAME .\n"                          # names that look like SOA
    "soap.example CNAME .\n"
    "i.example SOA ns. h. 1 2 3 4 5\n"       # a second SOA changes nothing
    "$INCLUDE other.zone\n"
    "bad\xff.example CNAME .\n"              # not UTF-8: blanked, sets no owner
    "  CNAME .\n"
    "$origin lower.test.\n"
    "k CNAME rpz-drop.\n"
    ") stray\n"
    "  CNAME .\n"
    "last.example CNAME ."                    # no newline at the end
)
# The zone's name known only from an SOA met late, spelt with U+017F (whose upper case is S)
LATE_SOA = (
    "y.zone.test. CNAME .\n"
    "zone.test. IN \u017foa ns. h. 1 2 3 4 5\n"
    "z.zone.test. CNAME .\n"
    "$ORIGIN other.test.\n"
    "v CNAME .\n"
    "u.zone.test. CNAME .\n"
)
# No line names its owner after the first, so plain slices cannot end at one; and owners
# written with parentheses on one line.
INHERIT = "first.example CNAME .\n" + "".join(
    f"  {'CNAME .' if i % 3 else 'A 192.0.2.1'}\n" for i in range(60)) + "\tCNAME *.\n" + \
    "".join(f"p{i}.example IN ( CNAME . )\n  CNAME *.\n" for i in range(10))
NO_ORIGIN = "@ SOA ns. h. 1 2 3 4 5\nq.example CNAME .\n  CNAME *.\nr.example. CNAME .\n"


def _encode(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape").replace(b"\xc3\xbf", b"\xff")


def _items(lines: list[str], bad: list[int], offset: int,
           state: RpzState | None = None) -> list[Item]:
    out: list[Item] = [("bad", no + offset) for no in bad]
    for item in parse_rpz(lines, state):
        if type(item) is ParsedRule:
            out.append(("rule", item.line + offset, item.key, item.scope, item.action))
        else:
            out.append(("skip", item.line + offset, item.text, item.reason))
    return sorted(out, key=repr)


def _whole(data: bytes) -> list[Item]:
    """Today's reference: the whole file decoded and parsed at once."""
    lines, bad = decode_lines(data, True)
    return _items(lines, bad, 0)


def _sliced(tmp_path: Path, data: bytes, slice_bytes: int) -> tuple[list[Item], int]:
    """What the workers see: each slice parsed alone from the state the cut gave it."""
    zone = tmp_path / "zone.rpz"
    zone.write_bytes(data)
    catalog = tmp_path / "lists.yaml"
    catalog.write_text("categories:\n  adult:\n    - {path: zone.rpz, format: rpz}\n")
    tasks = list(slice_tasks(load_catalog(catalog), slice_bytes))
    out: list[Item] = []
    pos = 0
    for task in tasks:
        assert task.start == pos and task.rpz is not None
        assert task.first_line == data.count(b"\n", 0, task.start) + 1
        lines, bad = decode_lines(data[task.start:task.stop], task.start == 0)
        out += _items(lines, bad, task.first_line - 1, RpzState(*task.rpz))
        pos = task.stop
    assert pos == len(data)
    return sorted(out, key=repr), len(tasks)


@pytest.mark.parametrize("text", [EDGE, EDGE.replace("\n", "\r\n"), LATE_SOA, NO_ORIGIN,
                                  INHERIT],
                         ids=["edge", "edge-crlf", "late-soa", "no-origin", "inherit"])
def test_every_cut_position_parses_as_whole(tmp_path: Path, text: str) -> None:
    # slice_bytes from 1 to the file size puts a cut after every line: inside the SOA's
    # parentheses, before inherited owners, after $ORIGIN changes, inside quoted strings.
    data = _encode(text)
    whole = _whole(data)
    assert any(i[0] == "rule" for i in whole) and any(i[0] == "skip" for i in whole)
    counts = set()
    for slice_bytes in range(1, len(data) + 2):
        sliced, n = _sliced(tmp_path, data, slice_bytes)
        assert sliced == whole, slice_bytes
        counts.add(n)
    assert max(counts) >= 3  # really cut, not read whole


def _brief(items: list[Item]) -> list[tuple[object, ...]]:
    return [(i[1], i[2]) if i[0] == "rule" else (i[1], i[3]) if i[0] == "skip" else i
            for i in sorted(items, key=lambda i: i[1])]


def test_edge_zones_reference() -> None:
    # What the whole-file parse says about the edge cases, so the equality above is not
    # equality of two wrong answers.
    assert _brief(_whole(_encode(EDGE))) == [
        (2, b"x.example"), (8, b"a.example"), (9, "local data (TXT) is not supported"),
        (10, b"a.example"), (11, b"a.example"), (12, b"b.example"),
        (13, "local data (TXT) is not supported"), (15, "local data (TXT) is not supported"),
        (16, b"d.example"), (18, b"e.sub"), (19, b"e.sub"), (20, b"f.example.sub"),
        (21, b"g.example.sub"), (25, "unbalanced parentheses"), (26, b"g.example.sub"),
        (27, b"soa.sub"), (28, b"soap.example.sub"), (30, "unsupported directive $INCLUDE"),
        ("bad", 31), (32, b"i.example.sub"), (34, "owner outside the zone rpz.test."),
        (35, "unbalanced parentheses"), (36, "owner outside the zone rpz.test."),
        (37, "owner outside the zone rpz.test."),
    ]
    assert _brief(_whole(_encode(LATE_SOA))) == [
        (1, "absolute owner but the zone name is unknown (no $ORIGIN)"), (3, b"z"),
        (5, "owner outside the zone zone.test."), (6, b"u"),
    ]


@pytest.mark.skipif(not REAL, reason="no RPZ lists in /work/shared/data/rpz")
@pytest.mark.parametrize("path", REAL, ids=[p.name for p in REAL])
def test_real_lists_in_small_slices_parse_as_whole(tmp_path: Path, path: Path) -> None:
    data = path.read_bytes()
    whole = _whole(data)
    sliced, n = _sliced(tmp_path, data, 4096)
    assert n > len(data) // 8192  # many cuts
    assert sliced == whole


def _body(data: bytes) -> tuple[dict[str, object], bytes]:
    """An index's header without build metadata (it has a timestamp), and its arrays."""
    idx = ListIndex.from_bytes(data)
    header = {k: v for k, v in idx.header.items() if k != "build"}
    start = PREFIX.size + PREFIX.unpack_from(data)[1]
    return header, data[align8(start):]


def test_sliced_parallel_compile_equals_whole(tmp_path: Path) -> None:
    # The index, skipped lines (with their numbers) and per-source counts of a compile in
    # 4 KB slices by two workers equal those of a compile reading each file whole.
    files = {"edge.rpz": _encode(EDGE), "late.rpz": _encode(LATE_SOA)}
    files |= {p.name: p.read_bytes() for p in REAL}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    catalog_path = tmp_path / "lists.yaml"
    catalog_path.write_text("categories:\n" + "".join(
        f"  c{i}:\n    - {{path: {name}, format: rpz}}\n" for i, name in enumerate(files)))
    catalog = load_catalog(catalog_path)
    whole = compile_catalog(catalog, None, slice_bytes=1 << 30)
    sliced = compile_catalog(catalog, None, jobs=2, slice_bytes=4096)
    assert isinstance(whole.index, bytes) and isinstance(sliced.index, bytes)
    assert _body(sliced.index) == _body(whole.index)
    assert sliced.skipped == whole.skipped
    assert [vars(s) for s in sliced.sources] == [vars(s) for s in whole.sources]
    assert sliced.skipped_count == whole.skipped_count > 0
    bad = [(s.line, s.text) for s in whole.skipped if s.reason == "not valid UTF-8"]
    assert bad == [(31, "bad\ufffd.example CNAME .")]


MEMORY = """
import json, resource, sys
from gateway.lists.catalog import load_catalog
from gateway.lists.compile import compile_catalog
catalog = load_catalog(sys.argv[1])
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
result = compile_catalog(catalog, sys.argv[2], jobs=1, slice_bytes=1 << 18, run_entries=50_000)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"growth_kb": peak - base, "entries": result.entries}))
"""


def test_big_rpz_compiles_in_bounded_memory(tmp_path: Path) -> None:
    # 400k names in an 11 MB zone. Read whole, the zone's text, its lines and their strings
    # grew the compiler by ~70 MB (several times the file); in 256 KB slices, with the
    # builder spilling every 50k names, growth stays near a slice's worth whatever the size.
    names = 400_000
    zone = tmp_path / "national.rpz"
    with open(zone, "w") as f:
        f.write("$TTL 3600\n@ SOA localhost. root.localhost. (\n 1 2 3 4 5 )\n  NS localhost.\n")
        for i in range(names):
            f.write(f"n{i:x}.host{i % 997}.test CNAME .\n")
    assert zone.stat().st_size > 10 << 20
    lists = tmp_path / "lists.yaml"
    lists.write_text("categories:\n  adult:\n    - {path: national.rpz, format: rpz}\n")
    out = tmp_path / "state" / "lists.sgidx"
    out.parent.mkdir()
    proc = subprocess.run([sys.executable, "-c", MEMORY, str(lists), str(out)],
                          capture_output=True, text=True, timeout=600, check=True,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    result = json.loads(proc.stdout)
    assert result["entries"] == names
    assert result["growth_kb"] < 32 * 1024, result
    with ListIndex.open(out) as idx:
        assert idx.probe(b"n0.host0.test") and idx.probe(b"n%x.host%d.test" % (names - 1,
                                                                                 (names - 1) % 997))


def test_slices_stay_small_without_owner_lines(tmp_path: Path) -> None:
    # A zone where every record after the first inherits its owner has nowhere a plain cut
    # may go; the parent parses on and cuts anyway, so no slice is much over 2 x asked.
    body = "".join(f"  CNAME {'.' if i % 2 else '*.'}\n" for i in range(20_000))
    data = ("first.example CNAME .\n" + body).encode()
    zone = tmp_path / "zone.rpz"
    zone.write_bytes(data)
    catalog = tmp_path / "lists.yaml"
    catalog.write_text("categories:\n  adult:\n    - {path: zone.rpz, format: rpz}\n")
    tasks = list(slice_tasks(load_catalog(catalog), 4096))
    assert len(tasks) > len(data) // (3 * 4096)
    assert max(t.stop - t.start for t in tasks) <= 2 * 4096 + 64
    assert _sliced(tmp_path, data, 4096)[0] == _whole(data)
