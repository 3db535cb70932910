"""Parses RPZ (response policy zone) files: the zone-file grammar and its QNAME policies.

Unlike the line formats in parsers.py, a record may span lines (parentheses), inherit the
previous owner and be relative to $ORIGIN. Never raises on bad input: one odd record must
not disable a whole list.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import NamedTuple

from gateway.lists import SCOPE_SELF, SCOPE_SUBS, Action, Parsed, ParsedRule, Skipped
from gateway.util.names import normalize_name

_CLASSES = frozenset({"IN", "CH", "HS", "CS", "ANY"})
_TTL = re.compile(r"\d+(?:[smhdwSMHDW](?:\d+[smhdwSMHDW])*)?")
_UNSUPPORTED_TRIGGERS = frozenset({"rpz-ip", "rpz-nsdname", "rpz-nsip", "rpz-client-ip"})


class _Record(NamedTuple):
    """One logical zone-file record (parentheses joined), before interpretation."""

    line: int
    text: str
    tokens: list[str] | None  # None: unbalanced parentheses
    inherits_owner: bool


def _tokenize(line: str, depth: int) -> tuple[list[str], int]:
    """Split one physical line honouring quotes, `;` comments and parentheses."""
    tokens: list[str] = []
    cur: list[str] = []
    quoted = False
    for ch in line:
        if quoted:
            cur.append(ch)
            if ch == '"':
                quoted = False
            continue
        if ch == '"':
            quoted = True
            cur.append(ch)
        elif ch == ";":
            break
        elif ch in "()" or ch.isspace():
            if cur:
                tokens.append("".join(cur))
                cur = []
            if ch == "(":
                depth += 1
            elif ch == ")":
                depth -= 1
        else:
            cur.append(ch)
    if cur:
        tokens.append("".join(cur))
    return tokens, depth


class RpzState:
    """What parsing carries from one line to the next, so a file cut into slices parses as
    if whole: the slice compiler (slices.py) tracks it and hands each slice its start."""

    __slots__ = ("apex", "first_origin", "origin", "owner", "pending")

    def __init__(self, origin: str | None = None, first_origin: str | None = None,
                 apex: str | None = None, owner: str = "") -> None:
        self.origin = origin  # current $ORIGIN, absolute, lowercase
        self.first_origin = first_origin
        self.apex = apex  # the zone's own name, from the SOA owner
        self.owner = owner  # the last owner, for records that inherit it
        # a record still open in parentheses: (tokens, first line, its text, inherits, depth)
        self.pending: tuple[list[str], int, str, bool, int] | None = None

    def start(self) -> tuple[str | None, str | None, str | None, str]:
        """What a slice starting here needs (not a pending record: slices are cut only
        outside parentheses)."""
        return self.origin, self.first_origin, self.apex, self.owner


def one_line_record(line: str) -> bool:
    """True if `line`, met outside parentheses, leaves none open (or unbalanced)."""
    return _tokenize(line, 0)[1] == 0


def _records(lines: Iterable[str], state: RpzState | None = None) -> Iterator[_Record]:
    """Logical records; with `state`, a record left open at the end is kept there (not
    reported unbalanced) and continued by the next call."""
    pending: list[str] | None = None
    start = depth = 0
    first_text = ""
    inherits = False
    if state is not None and state.pending is not None:
        pending, start, first_text, inherits, depth = state.pending
    for no, raw in enumerate(lines, 1):
        if pending is None:
            if '"' not in raw and "(" not in raw and ")" not in raw:
                body = raw.split(";", 1)[0] if ";" in raw else raw
                tokens = body.split()
                if tokens:
                    yield _Record(no, raw.strip(), tokens, raw[0] in " \t")
                continue
            tokens, depth = _tokenize(raw, 0)
            if depth > 0:
                pending, start, first_text, inherits = tokens, no, raw.strip(), raw[0] in " \t"
            elif depth < 0:
                yield _Record(no, raw.strip(), None, False)
            elif tokens:
                yield _Record(no, raw.strip(), tokens, raw[0] in " \t")
        else:
            tokens, depth = _tokenize(raw, depth)
            pending.extend(tokens)
            if depth <= 0:
                good = pending if depth == 0 else None
                yield _Record(start, first_text, good, inherits)
                pending = None
    if state is not None:
        state.pending = None if pending is None else (pending, start, first_text, inherits,
                                                       depth)
    elif pending is not None:
        yield _Record(start, first_text, None, inherits)


def _absolute(name: str, origin: str | None) -> str | None:
    """`name` (lowercase) made absolute against `origin`; None if the origin is unknown."""
    if name == "@":
        return origin
    if name.endswith("."):
        return name
    if origin is None:
        return None
    return name + origin if origin == "." else f"{name}.{origin}"


def parse_rpz(lines: Iterable[str], state: RpzState | None = None, *,
              keep_open: bool = False) -> Iterator[Parsed]:
    """QNAME triggers of a Response Policy Zone (the subset BIND, Unbound and Knot share).

    `name CNAME .` blocks the name (NXDOMAIN), `*.name CNAME .` its subdomains, `CNAME *.`
    answers NODATA and `CNAME rpz-passthru.` exempts the name. `rpz-drop.` (no answer at all)
    is answered NXDOMAIN instead: a silent drop makes clients retry and look broken; it is
    still counted as a block. Local data (A, TXT, CNAME to a name) and IP/NSDNAME triggers
    are skipped with a reason.

    `state` starts a slice of a file where the previous slice left off, and is updated when
    the lines are exhausted; with `keep_open`, a record still in parentheses at the end is
    kept in it for the next call rather than reported as unbalanced.
    """
    norm = normalize_name
    st = RpzState() if state is None else state
    origin, first_origin, apex, owner = st.origin, st.first_origin, st.apex, st.owner
    for rec in _records(lines, st if keep_open else None):
        no, text, tokens = rec.line, rec.text, rec.tokens
        if tokens is None:
            yield Skipped(no, text, "unbalanced parentheses")
            continue
        if not rec.inherits_owner and tokens[0].startswith("$"):
            directive = tokens[0].upper()
            if directive == "$ORIGIN" and len(tokens) > 1:
                value = tokens[1].lower()
                new = value if value.endswith(".") else _absolute(value, origin)
                origin = new if new is not None else value + "."
                if first_origin is None:
                    first_origin = origin
            elif directive != "$TTL":
                yield Skipped(no, text, f"unsupported directive {tokens[0]}")
            continue
        if rec.inherits_owner:
            if not owner:
                yield Skipped(no, text, "record without an owner")
                continue
            rest = tokens
        else:
            owner = tokens[0].lower()
            rest = tokens[1:]
        i = 0
        while i < len(rest) and (rest[i].upper() in _CLASSES or _TTL.fullmatch(rest[i])):
            i += 1
        if i >= len(rest):
            yield Skipped(no, text, "record without a type")
            continue
        rtype = rest[i].upper()
        rdata = rest[i + 1 :]
        absolute = _absolute(owner, origin)
        if rtype == "SOA":
            if apex is None and absolute is not None:
                apex = absolute
            continue
        zone = apex or first_origin
        if absolute is None:
            rel = "" if owner == "@" else owner  # no origin known: names are zone-relative
        elif zone is None:
            yield Skipped(no, text, "absolute owner but the zone name is unknown (no $ORIGIN)")
            continue
        elif absolute == zone:
            rel = ""
        elif absolute.endswith("." + zone) or zone == ".":
            rel = absolute[: -len(zone) - 1] if zone != "." else absolute[:-1]
        else:
            yield Skipped(no, text, f"owner outside the zone {zone}")
            continue
        if not rel:
            if rtype != "NS":
                yield Skipped(no, text, f"{rtype} record at the zone apex")
            continue
        trigger = rel.rsplit(".", 1)[-1]
        if trigger in _UNSUPPORTED_TRIGGERS:
            yield Skipped(no, text, f"unsupported trigger {trigger}")
            continue
        if rtype != "CNAME":
            yield Skipped(no, text, f"local data ({rtype}) is not supported")
            continue
        target = rdata[0].lower() if rdata else ""
        if target == ".":
            action = Action.NXDOMAIN
        elif target == "*.":
            action = Action.NODATA
        elif target == "rpz-passthru.":
            action = Action.PASSTHRU
        elif target == "rpz-drop.":
            action = Action.NXDOMAIN
        elif target == "rpz-tcp-only.":
            yield Skipped(no, text, "rpz-tcp-only is not supported")
            continue
        else:
            yield Skipped(no, text, "CNAME to another name (local data) is not supported")
            continue
        scope = SCOPE_SELF
        if rel.startswith("*."):
            scope = SCOPE_SUBS
            rel = rel[2:]
        elif rel == "*":
            yield Skipped(no, text, "wildcard for the whole zone is not supported")
            continue
        try:
            key = norm(rel)
        except ValueError as exc:
            yield Skipped(no, text, str(exc))
            continue
        yield ParsedRule(key, scope, action, no)
    st.origin, st.first_origin, st.apex, st.owner = origin, first_origin, apex, owner
