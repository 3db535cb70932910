"""The Public Suffix List: which part of a name one party registered (its "registrable domain").

The forwarder caps questions in flight per registrable domain (limits.upstream.inflight_per_zone):
a random-subdomain flood under flood.test, however many random labels it puts in front
(`<r>.flood.test`, `<r>.<r>.flood.test`), is one zone, while two customers under a public suffix
(`a.co.uk`, `b.co.uk`, `x.github.io`) are two. gateway/data/public_suffix_list.dat is the list
verbatim (publicsuffix/list @ e8c9a2b2b285, 2026-08-19, MPL-2.0); a newer copy can replace it.
"""

from __future__ import annotations

import functools
from pathlib import Path

DEFAULT_PATH = Path(__file__).resolve().parent.parent / "data" / "public_suffix_list.dat"


def _ascii_label(label: str) -> bytes:
    """An IDN label of the list in its DNS (punycode) form; list entries are already NFC."""
    if label.isascii():
        return label.encode("ascii")
    return b"xn--" + label.encode("punycode")


class PublicSuffixes:
    """The list's rules, by kind, as lowercase dotted ASCII bytes (b"co.uk")."""

    __slots__ = ("depth", "exceptions", "rules", "wildcards")

    def __init__(self, lines: list[str]) -> None:
        rules: set[bytes] = set()
        wildcards: set[bytes] = set()    # "*.ck" is stored as b"ck"
        exceptions: set[bytes] = set()   # "!www.ck" is stored as b"www.ck"
        for line in lines:
            text = line.split(None, 1)[0] if line.strip() else ""
            if not text or text.startswith("//"):
                continue
            text = text.lower()
            target = rules
            if text.startswith("!"):
                target, text = exceptions, text[1:]
            elif text.startswith("*."):
                target, text = wildcards, text[2:]
            target.add(b".".join(_ascii_label(x) for x in text.split(".")))
        self.rules = frozenset(rules)
        self.wildcards = frozenset(wildcards)
        self.exceptions = frozenset(exceptions)
        # Labels a match can involve (the longest rule; a wildcard is one label longer, plus
        # the registrable label): only that many from the right are looked at, so a hostile
        # 127-label name costs no more than a short one.
        self.depth = 2 + max((r.count(b".") + 1 for r in (*rules, *exceptions)), default=1) \
            + (1 if wildcards else 0)

    @classmethod
    def load(cls, path: Path = DEFAULT_PATH) -> PublicSuffixes:
        return cls(path.read_text(encoding="utf-8").splitlines())

    def suffix_labels(self, labels: list[bytes]) -> int:
        """How many of `labels` (the name's, leftmost first) form its public suffix."""
        n = len(labels)
        rules, wildcards, exceptions = self.rules, self.wildcards, self.exceptions
        for i in range(n):   # longest suffix first: the most specific rule wins
            suffix = b".".join(labels[i:])
            if suffix in exceptions:
                return n - i - 1
            if suffix in rules:
                return n - i
            if i + 1 < n and b".".join(labels[i + 1:]) in wildcards:
                return n - i
        return 1 if n else 0   # no rule: the implicit "*" (the TLD alone)

    def registrable(self, name: bytes) -> bytes:
        """The registrable domain of a lowercase dotted name (b"a.b.example.co.uk" ->
        b"example.co.uk"); a name that is itself a public suffix (or the root, b"") is its own.
        """
        if not name:
            return name
        labels = name.split(b".")
        keep = self.suffix_labels(labels[-self.depth:]) + 1
        if keep >= len(labels):
            return name
        return b".".join(labels[-keep:])

    def zone_of_wire(self, question: bytes) -> bytes:
        """registrable() of a question section's name (wire form, lowercase): the in-flight
        share a forwarded question counts against."""
        starts: list[int] = []
        pos = 0
        size = question[0]
        while size:
            starts.append(pos)
            pos += 1 + size
            size = question[pos]
        if not starts:
            return b""
        labels = [question[p + 1:p + 1 + question[p]] for p in starts[-self.depth:]]
        keep = self.suffix_labels(labels) + 1
        return b".".join(labels[-keep:]) if keep < len(labels) else b".".join(labels)


@functools.cache
def default_suffixes() -> PublicSuffixes:
    """The bundled list, parsed once per process (~10k rules, a few ms)."""
    return PublicSuffixes.load()
