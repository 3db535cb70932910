"""lists.yaml loading (errors say file:line) and compiling a catalog into an index."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.errors import ConfigError
from gateway.lists import SCOPE_BOTH, SCOPE_SELF, SCOPE_SUBS, Action, Rule
from gateway.lists.catalog import load_catalog
from gateway.lists.compile import (
    MAX_SKIPPED_EXAMPLES,
    compile_catalog,
    compile_subprocess,
    find_rule_lines,
)
from gateway.lists.index import PREFIX, ListIndex, align8

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, yaml_text: str, files: dict[str, str | bytes] | None = None) -> Path:
    for name, content in (files or {}).items():
        p = tmp_path / name
        if isinstance(content, bytes):
            p.write_bytes(content)
        else:
            p.write_text(content, encoding="utf-8")
    path = tmp_path / "lists.yaml"
    path.write_text(yaml_text, encoding="utf-8")
    return path


def test_load_catalog(tmp_path: Path) -> None:
    path = write(tmp_path, """\
categories:
  adult:
    - {path: adult.hosts, format: hosts}
    - path: sub/more.txt
      format: domains
      match: exact
      description: extra names
  csam:
    - {path: csam.rpz, format: rpz}
  empty-cat: []
""", {"adult.hosts": "", "csam.rpz": ""})
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub/more.txt").write_text("")
    cat = load_catalog(path)
    assert list(cat.categories) == ["adult", "csam", "empty-cat"]
    a1, a2 = cat.categories["adult"]
    assert (a1.path, a1.format, a1.mandatory, a1.match, a1.line) == (
        tmp_path / "adult.hosts", "hosts", False, "suffix", 3)
    assert (a2.path, a2.match, a2.description, a2.line) == (
        tmp_path / "sub/more.txt", "exact", "extra names", 4)
    assert cat.categories["csam"][0].mandatory  # csam is mandatory even without the flag
    assert cat.files() == [path, tmp_path / "adult.hosts", tmp_path / "sub/more.txt",
                           tmp_path / "csam.rpz"]


@pytest.mark.parametrize(
    ("yaml_text", "line", "message"),
    [
        ("categories:\n  adult:\n    - {path: a.txt, format: hosts, colour: red}\n",
         3, "unknown key 'colour' in a source of category 'adult' (expected one of: "),
        ("categories: {}\nlists: []\n", 2, "unknown key 'lists'"),
        ("categories:\n  adult:\n    - {path: a.txt, format: csv}\n", 3, "unknown format 'csv'"),
        ("categories:\n  adult:\n\n    - path: missing.txt\n      format: hosts\n",
         4, "list file not found: "),
        ("categories:\n  adult:\n    - format: hosts\n      url: https://lists.example/a\n"
         "      path: a.txt\n", 3, "either 'path' (a file) or 'url' (downloaded), not both"),
        ("categories:\n  Adult:\n    - {path: a.txt, format: hosts}\n",
         2, "category name 'Adult' must be lowercase"),
        ("categories:\n  adult:\n    - {path: a.txt, format: hosts, match: prefix}\n",
         3, "match must be one of: suffix, exact"),
        ("categories:\n  adult:\n    - {path: a.txt, format: hosts, mandatory: yes please}\n",
         3, "mandatory must be true or false"),
        ("categories:\n  adult:\n    - {format: hosts}\n", 3, "source needs 'path'"),
        ("categories:\n  adult:\n    - a.txt\n", 3, "must be a mapping"),
        ("categories:\n  adult:\n    - {path: a.txt, format: hosts}\n  adult: []\n",
         4, "duplicate key 'adult'"),
        ("categories: [adult]\n", 1, "categories must be a mapping"),
        ("categories:\n  adult: {path: a.txt\n", 3, "YAML syntax error"),
    ],
)
def test_catalog_errors(tmp_path: Path, yaml_text: str, line: int, message: str) -> None:
    path = write(tmp_path, yaml_text, {"a.txt": ""})
    with pytest.raises(ConfigError) as exc:
        load_catalog(path)
    assert exc.value.path == str(path)
    assert exc.value.line == line
    assert message in exc.value.message
    assert str(exc.value).startswith(f"{path}:{line}: ")


def test_missing_file_error_names_the_path(tmp_path: Path) -> None:
    path = write(tmp_path, "categories:\n  adult:\n    - {path: nope/a.hosts, format: hosts}\n")
    with pytest.raises(ConfigError, match=r"lists\.yaml:3: list file not found: .*nope/a\.hosts"):
        load_catalog(path)


def test_empty_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="expected a 'categories' mapping"):
        load_catalog(write(tmp_path, ""))


CATALOG = """\
categories:
  csam:
    - {path: csam.rpz, format: rpz}
  adult:
    - {path: adult.hosts, format: hosts}
    - {path: adult.txt, format: domains, match: exact}
  ads:
    - {path: ads.adblock, format: adblock}
"""
FILES: dict[str, str | bytes] = {
    "csam.rpz": "$ORIGIN rpz.test.\n@ SOA ns. h. 1 2 3 4 5\ncsam-test.invalid CNAME .\n"
                "*.csam-test.invalid CNAME .\n",
    "adult.hosts": "# header\n0.0.0.0 adult.example\n0.0.0.0 1.2.3.4\n0.0.0.0 shared.example\n",
    "adult.txt": "exact.example\nshared.example\n*.wild.example\n",
    "ads.adblock": "! comment\n||ads.example^\n@@||ok.ads.example^\nexample.com##.ad\n",
}


def test_compile_catalog(tmp_path: Path) -> None:
    result = compile_catalog(load_catalog(write(tmp_path, CATALOG, FILES)), None)
    assert isinstance(result.index, bytes)
    idx = ListIndex.from_bytes(result.index)
    assert result.entries_by_category == idx.entries_by_category == {
        "ads": 2, "adult": 4, "csam": 1}
    assert result.entries == idx.size == 7
    assert result.rules == 9
    assert result.total_lines == 4 + 4 + 3 + 4
    assert result.skipped_count == 2
    assert [(s.line, s.reason) for s in result.skipped] == [
        (3, "is an IP address, not a domain name"), (4, "cosmetic rule")]
    ads = tmp_path / "ads.adblock"
    assert str(result.skipped[1]) == f"{ads}:4: cosmetic rule: example.com##.ad"

    csam = Rule("csam", SCOPE_BOTH, Action.NXDOMAIN, True)
    assert idx.probe(b"csam-test.invalid") == (csam,)  # SELF and SUBS records merged
    assert idx.match(b"a.b.csam-test.invalid") == [(4, (csam,))]
    # exact: a domains-file name blocks only itself; the hosts file's copy still covers subs
    assert idx.match(b"www.exact.example") == []
    assert idx.probe(b"exact.example") == (Rule("adult", SCOPE_SELF, Action.DEFAULT, False),)
    assert idx.probe(b"shared.example") == (Rule("adult", SCOPE_BOTH, Action.DEFAULT, False),)
    assert idx.match(b"x.wild.example") == [
        (2, (Rule("adult", SCOPE_SUBS, Action.DEFAULT, False),))]
    assert idx.match(b"x.ok.ads.example") == [
        (2, (Rule("ads", SCOPE_BOTH, Action.PASSTHRU, False),)),
        (5, (Rule("ads", SCOPE_BOTH, Action.DEFAULT, False),)),
    ]
    sources = idx.build["sources"]
    assert [(s["category"], s["rules"], s["skipped"]) for s in sources] == [
        ("csam", 2, 0), ("adult", 2, 1), ("adult", 3, 0), ("ads", 2, 1)]


def test_compile_writes_file(tmp_path: Path) -> None:
    out = tmp_path / "out.sgidx"
    result = compile_catalog(load_catalog(write(tmp_path, CATALOG, FILES)), str(out))
    assert result.index == str(out)
    with ListIndex.open(out) as idx:
        assert idx.entries_by_category == result.entries_by_category
    summary = result.summary(examples=1)
    assert summary["index"] == str(out)
    assert summary["skipped_count"] == 2 and len(summary["skipped"]) == 1
    json.dumps(summary)  # JSON-able


def test_bad_utf8_lines_are_reported_not_fatal(tmp_path: Path) -> None:
    files: dict[str, str | bytes] = {"a.txt": b"good.example\nbad\xff\xfe.example\nok.example\n"}
    path = write(tmp_path, "categories:\n  adult:\n    - {path: a.txt, format: domains}\n", files)
    result = compile_catalog(load_catalog(path), None)
    assert result.entries == 2
    assert [(s.line, s.reason) for s in result.skipped] == [(2, "not valid UTF-8")]


def test_skipped_examples_are_capped(tmp_path: Path) -> None:
    text = "\n".join(f"10.0.{i // 256}.{i % 256}" for i in range(MAX_SKIPPED_EXAMPLES + 50))
    path = write(tmp_path, "categories:\n  adult:\n    - {path: a.txt, format: domains}\n",
                 {"a.txt": text})
    result = compile_catalog(load_catalog(path), None)
    assert result.skipped_count == MAX_SKIPPED_EXAMPLES + 50
    assert len(result.skipped) == MAX_SKIPPED_EXAMPLES


def test_list_file_removed_after_loading(tmp_path: Path) -> None:
    catalog = load_catalog(write(tmp_path, CATALOG, FILES))
    (tmp_path / "adult.txt").unlink()
    with pytest.raises(ConfigError, match=r"lists\.yaml:6: list file not found: .*adult\.txt"):
        compile_catalog(catalog, None)


def test_find_rule_lines(tmp_path: Path) -> None:
    catalog = load_catalog(write(tmp_path, CATALOG, FILES))
    assert find_rule_lines(catalog, "adult", b"shared.example") == [
        (str(tmp_path / "adult.hosts"), 4, "0.0.0.0 shared.example"),
        (str(tmp_path / "adult.txt"), 2, "shared.example"),
    ]
    assert find_rule_lines(catalog, "csam", b"csam-test.invalid") == [
        (str(tmp_path / "csam.rpz"), 3, "csam-test.invalid CNAME ."),
        (str(tmp_path / "csam.rpz"), 4, "*.csam-test.invalid CNAME ."),
    ]
    assert find_rule_lines(catalog, "adult", b"www.shared.example") == []
    assert find_rule_lines(catalog, "no-such-category", b"shared.example") == []


def run_compiler(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway.lists.compile", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, check=False)


def test_compiler_subprocess(tmp_path: Path) -> None:
    lists = write(tmp_path, CATALOG, FILES)
    out = tmp_path / "x.sgidx"
    proc = run_compiler(str(lists), str(out))
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["entries_by_category"] == {"ads": 2, "adult": 4, "csam": 1}
    assert summary["skipped"][0].endswith("adult.hosts:3: is an IP address, not a domain name: "
                                          "0.0.0.0 1.2.3.4")
    assert ListIndex.open(out).size == 7
    assert compile_subprocess(lists, out)["entries"] == 7


def test_compiler_subprocess_config_error(tmp_path: Path) -> None:
    lists = write(tmp_path, "categories:\n  adult:\n    - {path: gone.txt, format: hosts}\n")
    proc = run_compiler(str(lists), str(tmp_path / "x.sgidx"))
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr.strip() == f"{lists}:3: list file not found: {tmp_path / 'gone.txt'}"
    assert not (tmp_path / "x.sgidx").exists()
    with pytest.raises(ConfigError, match="list file not found"):
        compile_subprocess(lists, tmp_path / "x.sgidx")


def test_shipped_blocklists_compile() -> None:
    catalog = load_catalog(ROOT / "blocklists" / "lists.yaml")
    result = compile_catalog(catalog, None)
    assert isinstance(result.index, bytes)
    idx = ListIndex.from_bytes(result.index)
    assert {"csam", "adult", "gambling", "social", "games", "bypass", "ads"} <= set(
        result.entries_by_category)
    assert all(s.mandatory for s in catalog.categories["csam"])
    # the synthetic CSAM fixture lists reserved names only
    assert find_rule_lines(catalog, "csam", b"csam-test.invalid")
    for line in (ROOT / "blocklists" / "csam.rpz").read_text().splitlines():
        owner = line.split(";")[0].split()[:1]
        if owner and owner[0] not in ("$TTL", "$ORIGIN", "@") and not line[0].isspace():
            assert owner[0].rstrip(".").endswith((".invalid", ".test")), line
    assert [r.category for off, rules in idx.match(b"www.csam-test.invalid") for r in rules] == [
        "csam"]
    assert sum(p.stat().st_size for p in (ROOT / "blocklists").iterdir()) < 400_000


def _body(data: bytes) -> tuple[dict[str, object], bytes]:
    """An index's header without build metadata (it has a timestamp), and its arrays."""
    idx = ListIndex.from_bytes(data)
    header = {k: v for k, v in idx.header.items() if k != "build"}
    start = PREFIX.size + PREFIX.unpack_from(data)[1]
    return header, data[align8(start):]


def test_parallel_compile_is_identical(tmp_path: Path) -> None:
    lines = []
    for i in range(3000):
        lines.append(f"n{i}.example" if i % 97 else f"10.0.0.{i % 250}")  # some skips
    lines[1234] = "# a comment in the middle"
    domains = ("\n".join(lines) + "\n").encode()
    domains = domains.replace(b"n2000.example", b"n2000\xff.example")  # one bad UTF-8 line
    files: dict[str, str | bytes] = {
        **FILES, "big.txt": domains,
        "big.hosts": "".join(f"0.0.0.0 n{i}.example\n" for i in range(0, 3000, 3)),
    }
    catalog_text = CATALOG + "  games:\n    - {path: big.txt, format: domains}\n" \
                             "    - {path: big.hosts, format: hosts}\n"
    catalog = load_catalog(write(tmp_path, catalog_text, files))
    serial = compile_catalog(catalog, None)
    parallel = compile_catalog(catalog, None, jobs=2, slice_bytes=1000)  # ~40 slices
    assert isinstance(serial.index, bytes) and isinstance(parallel.index, bytes)
    assert _body(parallel.index) == _body(serial.index)
    assert parallel.skipped == serial.skipped
    assert [str(s) for s in serial.skipped if "big.txt" in s.path][:2] == [
        f"{tmp_path / 'big.txt'}:1: is an IP address, not a domain name: 10.0.0.0",
        f"{tmp_path / 'big.txt'}:98: is an IP address, not a domain name: 10.0.0.97",
    ]
    bad = [s for s in serial.skipped if s.reason == "not valid UTF-8"]
    assert [(s.line, s.text) for s in bad] == [(2001, "n2000\ufffd.example")]
    for field in ("entries_by_category", "skipped_count", "total_lines", "rules", "entries"):
        assert getattr(parallel, field) == getattr(serial, field), field
    assert [vars(s) for s in parallel.sources] == [vars(s) for s in serial.sources]
    assert serial.total_lines == 15 + 3000 + 1000


def test_streaming_compile_is_identical(tmp_path: Path) -> None:
    # A catalog far larger than one run and one slice: runs spill beside the output file,
    # merge, and give the same index and lookups as the in-memory build; nothing is left.
    names = [f"s{i}.example" for i in range(5000)]
    files: dict[str, str | bytes] = {
        **FILES, "big.txt": "".join(n + "\n" for n in names),
        "dup.hosts": "".join(f"0.0.0.0 {n}\n" for n in names[::7]),
    }
    catalog_text = CATALOG + "  games:\n    - {path: big.txt, format: domains}\n" \
                             "    - {path: dup.hosts, format: hosts}\n"
    catalog = load_catalog(write(tmp_path, catalog_text, files))
    in_memory = compile_catalog(catalog, None)
    out = tmp_path / "state" / "lists.sgidx"
    out.parent.mkdir()
    killed = out.parent / ".sgidx-build-999999999-abc"  # a compile killed mid-way (no such pid)
    killed.mkdir()
    (killed / "run0").write_bytes(b"\0" * 100)
    for jobs in (1, 2):
        streamed = compile_catalog(catalog, str(out), jobs=jobs, slice_bytes=4096,
                                   run_entries=500)
        assert isinstance(in_memory.index, bytes)
        assert _body(out.read_bytes()) == _body(in_memory.index)
        assert list(out.parent.iterdir()) == [out]  # runs, scratch and stale scratch removed
        for field in ("entries_by_category", "skipped_count", "total_lines", "rules",
                      "entries"):
            assert getattr(streamed, field) == getattr(in_memory, field), field
        with ListIndex.open(out) as idx:
            assert all(idx.probe(n.encode()) for n in names)
            assert idx.match(b"www.s42.example")[0][0] == 4
