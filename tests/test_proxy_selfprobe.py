"""The proxy's self-probe verdicts (gateway/proxy/selfprobe.py) and how the gateway reads them
(gateway/feeds/proxyprobe.py): per tier for URLs, the index's own lookups for hashes, and
nothing verified by a proxy that is gone or has not loaded the entry's serial yet."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

from gateway.feedformat.document import FeedEntry, LegalBasis
from gateway.feeds.proxyprobe import (
    BLOCKED,
    NOT_BLOCKED,
    PENDING,
    FeedVerdicts,
    ProxyVerdicts,
    proxy_outcome,
    write_verdicts,
)
from gateway.policy.netindex import PrefixMap
from gateway.proxy.hashes import HashEntry, HashIndex
from gateway.proxy.rules import ClientTier, Rules
from gateway.proxy.selfprobe import HashProbe, probe_feeds
from gateway.proxy.sources import url_feed_entries
from gateway.proxy.urls import UrlIndex

BASIS = LegalBasis("A", "D-1", "2026-11-20")
KIDS = ClientTier("kids", frozenset({"adult"}))
STAFF = ClientTier("staff", frozenset())


def fe(rid: str, etype: str, value: str, cats: tuple[str, ...] = ("adult",),
       mandatory: bool = False) -> FeedEntry:
    return FeedEntry(rid, etype, value, cats, "block", mandatory,
                     BASIS if mandatory else None, "2026-11-23T10:00:00Z")


def test_urls_per_tier_and_hashes_through_the_index() -> None:
    sha = hashlib.sha256(b"synthetic image bytes").hexdigest()
    pdq = "f" * 32 + "0" * 32
    entries = [fe("legal", "url", "https://news.test/post/42", mandatory=True),
               fe("adult", "url", "http://pages.test/a*"),
               fe("nobody", "url", "http://pages.test/b", cats=("gambling",)),
               fe("sha", "sha256", sha), fe("pdq", "pdq", pdq),
               fe("missing", "sha256", "0" * 64), fe("dns", "domain", "x.test"),
               fe("unusable", "url", "http://pages.test/x*y", mandatory=True)]
    rules = Rules(UrlIndex(url_feed_entries("central", entries)),
                  PrefixMap([]), {}, frozenset(), ())
    index = HashIndex.from_entries([HashEntry("sha", "sha256", sha, "adult", False),
                                    HashEntry("pdq", "pdq", pdq, "adult", False)])
    probe = HashProbe()
    out = probe_feeds(rules, [KIDS, STAFF], index, {"central": (7, entries)}, probe)
    v = out["central"]
    assert v.serial == 7
    # "adult" is not mandatory: only the tiers blocking its category are expected to block it
    assert v.blocked == {"legal", "adult", "sha", "pdq"}
    assert v.unexpected == {"nobody"}                 # no tier blocks gambling
    assert v.not_blocked == {"missing", "unusable"}   # not in the index / not indexable
    # without a hash index nothing is found, and a remembered PDQ value is forgotten
    gone = probe_feeds(rules, [KIDS], None, {"central": (8, entries)}, probe)["central"]
    assert {"sha", "pdq"} <= gone.not_blocked


def test_the_gateway_reads_verdicts_of_a_live_proxy_only(tmp_path: Path) -> None:
    verdicts = ProxyVerdicts(tmp_path)
    assert verdicts.verdict("central", "a", 1) == PENDING          # no proxy yet
    write_verdicts(tmp_path, 3, {"central": FeedVerdicts(
        5, frozenset({"a"}), frozenset({"b"}), frozenset({"c"}))})
    assert verdicts.verdict("central", "a", 5) == BLOCKED
    assert verdicts.verdict("central", "b", 4) == NOT_BLOCKED
    assert verdicts.verdict("central", "c", 5) is None
    assert verdicts.verdict("central", "a", 6) == PENDING         # not loaded that serial yet
    assert verdicts.verdict("other", "a", 1) == PENDING
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    write_verdicts(tmp_path, 4, {"central": FeedVerdicts(5, frozenset({"a"}), frozenset())},
                   pid=int(dead))
    os.utime(tmp_path / "proxy-verdicts.json", ns=(1, 1))          # a new stamp to notice
    assert verdicts.verdict("central", "a", 5) == PENDING         # that proxy is gone


def test_outcome_of_entries_nothing_here_enforces() -> None:
    assert proxy_outcome("url", "block", proxy=True) == "applied"
    assert proxy_outcome("sha256", "block", proxy=False) == "not_applicable"
    assert proxy_outcome("cidr", "block", proxy=True) == "not_applicable"
    assert proxy_outcome("pdq", "warn", proxy=False) == "received"
    assert proxy_outcome("domain", "block", proxy=False) is None
