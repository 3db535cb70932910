"""`safegate export rpz`: the mandatory ledger entries plus mandatory list sources, as RPZ."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

from gateway.compliance.export import build_export, catalog_entries, merge
from gateway.feedformat.document import Entry
from gateway.lists import SCOPE_SELF, SCOPE_SUBS
from gateway.lists.catalog import load_catalog
from gateway.lists.parsers import ParsedRule, parse_rpz
from tests.support.data import LEDGER_SCHEMA
from tests.support.procs import write_gateway_config

REPO = Path(__file__).resolve().parents[1]

# entry id, type, value, mandatory, outcome, removed_at -> exported?
LEDGER = [
    ("BTTTT-1", "domain", "adult-site.test", 1, "verified", None, True),
    ("BTTTT-2", "domain-exact", "gamble.test", 1, "applied", None, True),
    ("BTTTT-3", "domain", "phish.example", 1, "received", None, True),   # not applied yet
    ("BTTTT-4", "domain", "failed.test", 1, "failed", None, True),       # still owed
    ("BTTTT-5", "domain", "removed.test", 1, "removed", 5.0, False),
    ("BTTTT-6", "domain", "refused.test", 1, "refused", None, False),    # never-block guard
    ("BTTTT-7", "domain", "optional.test", 0, "verified", None, False),  # not mandatory
    ("BTTTT-8", "url", "http://url.test/x", 1, "verified", None, False), # no RPZ form
]
CSAM_RPZ = """$TTL 300
$ORIGIN rpz.safegate.invalid.
@ SOA localhost. hostmaster.localhost. (1 3600 600 86400 300)
  NS localhost.
csam-test.invalid          CNAME .
*.csam-test.invalid        CNAME .
exact-only.invalid         CNAME .
passthru.invalid           CNAME rpz-passthru.
"""
MANDATORY_DOMAINS = "# mandatory by lists.yaml\nmalware.example\n*.subs-only.test\n"
OPTIONAL_HOSTS = "0.0.0.0 adult.example\n"
LISTS_YAML = """categories:
  csam:
    - {path: csam.rpz, format: rpz}
  malware:
    - {path: malware.domains, format: domains, mandatory: true}
  adult:
    - {path: adult.hosts, format: hosts}
"""


def make_gateway(tmp_path: Path) -> Path:
    cfg = write_gateway_config(tmp_path, upstream_port=53000, lists_yaml=LISTS_YAML, lists={
        "csam.rpz": CSAM_RPZ, "malware.domains": MANDATORY_DOMAINS, "adult.hosts": OPTIONAL_HOSTS})
    db = sqlite3.connect(tmp_path / "var" / "ledger.sqlite3")
    db.executescript(LEDGER_SCHEMA)
    for rid, etype, value, mand, outcome, removed, _ in LEDGER:
        db.execute("INSERT INTO entries (feed, entry_id, type, value, categories, mandatory, "
                   "serial, issued_at, received_at, removed_at, outcome) "
                   "VALUES ('central', ?, ?, ?, 'csam,adult', ?, 3, 1.0, 2.0, ?, ?)",
                   (rid, etype, value, mand, removed, outcome))
    db.commit()
    db.close()
    return cfg


def rules(zone: str) -> set[tuple[str, int]]:
    return {(r.key.decode(), r.scope) for r in parse_rpz(zone.splitlines())
            if isinstance(r, ParsedRule)}


def test_catalog_entries_take_only_mandatory_sources(tmp_path: Path) -> None:
    make_gateway(tmp_path)
    entries, warnings = catalog_entries(load_catalog(tmp_path / "blocklists" / "lists.yaml"))
    got = {(e.id, e.type, e.value, e.categories) for e in entries}
    assert got == {
        ("csam.rpz:5", "domain", "csam-test.invalid", ("csam",)),   # name + *.name merged
        ("csam.rpz:7", "domain-exact", "exact-only.invalid", ("csam",)),
        ("malware.domains:2", "domain", "malware.example", ("malware",)),
        ("malware.domains:3", "domain", "subs-only.test", ("malware",)),
    }
    assert all(e.mandatory and e.action == "block" for e in entries)
    assert warnings == ["malware.domains:3: *.subs-only.test (subdomains only) exported as "
                        "subs-only.test and its subdomains"]


def test_merge_keeps_one_entry_per_name_and_the_wider_type() -> None:
    a = Entry("a", "domain-exact", "x.test", ("csam",), mandatory=True)
    b = Entry("b", "domain", "x.test", ("csam",), mandatory=True)
    c = Entry("c", "domain", "y.test", ("csam",), mandatory=True)
    assert merge([a, b, c]) == [Entry("a", "domain", "x.test", ("csam",), mandatory=True), c]


def test_export_zone_content(tmp_path: Path) -> None:
    make_gateway(tmp_path)
    result = build_export(tmp_path / "var" / "ledger.sqlite3",
                          tmp_path / "blocklists" / "lists.yaml", serial=42)
    assert (result.from_ledger, result.from_lists) == (4, 4)
    zone = result.zone
    assert zone.startswith("$TTL")
    soa = next(line for line in zone.splitlines() if "SOA" in line)
    assert "42" in soa.replace("(", " ").split()
    for rid, *_, exported in LEDGER:
        assert (f"; {rid} " in zone) == exported, rid
    assert rules(zone) == {
        ("adult-site.test", SCOPE_SELF), ("adult-site.test", SCOPE_SUBS),
        ("gamble.test", SCOPE_SELF),
        ("phish.example", SCOPE_SELF), ("phish.example", SCOPE_SUBS),
        ("failed.test", SCOPE_SELF), ("failed.test", SCOPE_SUBS),
        ("csam-test.invalid", SCOPE_SELF), ("csam-test.invalid", SCOPE_SUBS),
        ("exact-only.invalid", SCOPE_SELF),
        ("malware.example", SCOPE_SELF), ("malware.example", SCOPE_SUBS),
        ("subs-only.test", SCOPE_SELF), ("subs-only.test", SCOPE_SUBS),
    }
    assert "adult.example" not in zone and "passthru" not in zone


def test_export_without_ledger_still_has_the_mandatory_lists(tmp_path: Path) -> None:
    make_gateway(tmp_path)
    (tmp_path / "var" / "ledger.sqlite3").unlink()
    result = build_export(tmp_path / "var" / "ledger.sqlite3",
                          tmp_path / "blocklists" / "lists.yaml", serial=1)
    assert result.from_ledger == 0
    assert ("csam-test.invalid", SCOPE_SELF) in rules(result.zone)


def test_cli_export_writes_the_zone(tmp_path: Path) -> None:
    cfg = make_gateway(tmp_path)
    out = tmp_path / "safegate.rpz"
    r = subprocess.run([sys.executable, "-m", "gateway", "export", "rpz", "-c",
                        str(cfg), "--out", str(out), "--serial", "7"], capture_output=True,
                       text=True, timeout=60, cwd=REPO, check=False)
    assert r.returncode == 0, r.stderr
    assert "exported 4 feed entries and 4 list rules (serial 7)" in r.stderr
    assert "warning: malware.domains:3" in r.stderr
    assert ("gamble.test", SCOPE_SELF) in rules(out.read_text())
    assert out.stat().st_mode & 0o777 == 0o644   # resolvers run as another user
