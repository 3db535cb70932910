"""Self-probes of URL and image-hash entries: the proxy's own verdicts, read from a state file.

The proxy is a process of its own (gateway/proxy/runner.py). Each time it puts a rule set in
force it runs every feed `url`/`sha256`/`pdq` block entry through its own matching code on the
objects it serves with (Rules.decide on a request for the entry's URL from every tier,
HashIndex's lookup for a hash: gateway/proxy/selfprobe.py) and writes what it saw to
STATE_DIR/proxy-verdicts.json, with the feed serials that rule set was built from and its pid.
The gateway's prober reads that file (again only when it changed): an entry is verified when a
live proxy's rules, built from a serial at least the entry's, blocked it. This module owns the
file's format; it imports nothing of the proxy (feeds sit below it).

A gateway without the proxy acks these entries `not_applicable`, and so are `ip`/`cidr`
entries everywhere: no SafeGate part enforces them (docs/feeds-contract.md).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from gateway.util.atomic import atomic_write
from gateway.util.pids import alive

VERDICTS_FILE = "proxy-verdicts.json"
PROXY_TYPES = ("url", "sha256", "pdq")    # enforced by the HTTP proxy, when it runs
UNENFORCED_TYPES = ("ip", "cidr")          # enforced by no SafeGate part
BLOCKED, NOT_BLOCKED, PENDING = "blocked", "not_blocked", "pending"


@dataclass(frozen=True)
class FeedVerdicts:
    """What one rule set did with one feed's URL/hash entries."""

    serial: int
    blocked: frozenset[str]
    not_blocked: frozenset[str]
    unexpected: frozenset[str] = frozenset()   # no tier blocks its categories: nothing to verify


def write_verdicts(state_dir: Path, generation: int, feeds: Mapping[str, FeedVerdicts],
                   pid: int | None = None) -> Path:
    """STATE_DIR/proxy-verdicts.json, replaced atomically (the proxy calls this)."""
    path = state_dir / VERDICTS_FILE
    doc = {"pid": os.getpid() if pid is None else pid, "generation": generation,
           "feeds": {name: {"serial": v.serial, "blocked": sorted(v.blocked),
                            "not_blocked": sorted(v.not_blocked),
                            "unexpected": sorted(v.unexpected)}
                     for name, v in sorted(feeds.items())}}
    atomic_write(path, json.dumps(doc, separators=(",", ":")).encode())
    return path


def remove_verdicts(state_dir: Path) -> None:
    """A proxy stopping takes its verdicts with it."""
    with contextlib.suppress(OSError):
        (state_dir / VERDICTS_FILE).unlink()


def _ids(raw: object) -> frozenset[str]:
    return frozenset(i for i in raw if isinstance(i, str)) if isinstance(raw, list) else \
        frozenset()


class ProxyVerdicts:
    """The gateway's side: the newest verdicts of a live proxy, per feed entry."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / VERDICTS_FILE
        self._stamp: tuple[int, int] | None = None
        self._pid = 0
        self._feeds: dict[str, FeedVerdicts] = {}

    def _refresh(self) -> None:
        try:
            st = self.path.stat()
        except OSError:
            self._stamp, self._pid, self._feeds = None, 0, {}
            return
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp == self._stamp:
            return
        try:
            doc = json.loads(self.path.read_bytes())
            feeds = {str(name): FeedVerdicts(int(v["serial"]), _ids(v.get("blocked")),
                                             _ids(v.get("not_blocked")),
                                             _ids(v.get("unexpected")))
                     for name, v in doc["feeds"].items()}
            pid = int(doc["pid"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return   # being replaced: the next probe reads it again
        self._stamp, self._pid, self._feeds = stamp, pid, feeds

    def verdict(self, feed: str, entry_id: str, serial: int) -> str | None:
        """blocked | not_blocked | pending (no live proxy has loaded that serial yet) | None
        (no tier is expected to block it)."""
        self._refresh()
        found = self._feeds.get(feed)
        if found is None or found.serial < serial or not alive(self._pid):
            return PENDING
        if entry_id in found.blocked:
            return BLOCKED
        if entry_id in found.unexpected:
            return None
        return NOT_BLOCKED


def proxy_outcome(entry_type: str, action: str, proxy: bool) -> str | None:
    """The ledger outcome of a non-DNS entry put in force (None: a DNS type)."""
    if action != "block":
        return "received"
    if entry_type in PROXY_TYPES:
        return "applied" if proxy else "not_applicable"
    if entry_type in UNENFORCED_TYPES:
        return "not_applicable"
    return None

