"""Rules layered over the compiled index: central feed entries, applied without a rebuild.

A feed holds thousands to a hundred thousand entries and changes one entry at a time, so its
rules live in plain dicts (rebuilt in milliseconds) beside the big mmap'd index, which is only
recompiled when list files change.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol

from gateway.lists import SCOPE_SELF, SCOPE_SUBS, Rule

Combo = tuple[Rule, ...]
Match = list[tuple[int, Combo]]


class Matcher(Protocol):
    """What the decision needs from a rule source: rules per suffix level, longest first."""

    def match(self, key: bytes) -> Match: ...


class Overlay:
    """One feed's rules, keyed by dotted name."""

    def __init__(self, rules: Mapping[bytes, Combo]) -> None:
        self._self = {k: c for k, combo in rules.items()
                      if (c := tuple(r for r in combo if r.scope & SCOPE_SELF))}
        self._subs = {k: c for k, combo in rules.items()
                      if (c := tuple(r for r in combo if r.scope & SCOPE_SUBS))}
        counts: Counter[str] = Counter()
        for combo in rules.values():
            for category in {r.category for r in combo}:
                counts[category] += 1
        self.entries_by_category = dict(counts)
        self.size = len(rules)

    def match(self, key: bytes) -> Match:
        out: Match = []
        rules = self._self.get(key)
        if rules:
            out.append((0, rules))
        subs = self._subs
        if not subs:
            return out
        off = key.find(b".") + 1
        while off:
            rules = subs.get(key[off:])
            if rules:
                out.append((off, rules))
            off = key.find(b".", off) + 1
        return out


class Layered:
    """The compiled index plus any overlays, matched as one."""

    def __init__(self, base: Matcher, overlays: Sequence[Overlay]) -> None:
        self.base = base
        self.overlays = tuple(overlays)

    def match(self, key: bytes) -> Match:
        out = self.base.match(key)
        for overlay in self.overlays:
            extra = overlay.match(key)
            if extra:
                out = sorted(out + extra, key=_offset)
        return out


def _offset(item: tuple[int, Combo]) -> int:
    return item[0]


def merge_counts(counts: Iterable[Mapping[str, int]]) -> dict[str, int]:
    """Entries per category over several sources (for the list-entries metric)."""
    total: Counter[str] = Counter()
    for c in counts:
        total.update(c)
    return dict(total)
