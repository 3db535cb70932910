"""Pure parsers for the list formats people publish: hosts, plain domains, adblock, RPZ.

Each parser turns lines into ParsedRule (a name with a scope and an action) or Skipped (a line
it understood but cannot enforce as DNS, with the reason); comments and blank lines yield
nothing. They never raise on bad input: one odd line must not disable a whole list.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Iterator
from typing import NamedTuple

from gateway.lists import SCOPE_BOTH, SCOPE_SELF, SCOPE_SUBS, Action
from gateway.util.names import normalize_name

__all__ = [
    "FORMATS",
    "SCOPE_BOTH",
    "SCOPE_SELF",
    "SCOPE_SUBS",
    "Action",
    "ParsedRule",
    "Skipped",
    "parse",
    "parse_adblock",
    "parse_domains",
    "parse_hosts",
    "parse_rpz",
]

FORMATS = ("hosts", "domains", "adblock", "rpz")


class ParsedRule(NamedTuple):
    """A name a list wants handled; `line` is 1-based."""

    key: bytes
    scope: int
    action: Action
    line: int


class Skipped(NamedTuple):
    """A line that yields no rule, and why (shown by `safegate lists check`)."""

    line: int
    text: str
    reason: str


Parsed = ParsedRule | Skipped


def parse(fmt: str, lines: Iterable[str]) -> Iterator[Parsed]:
    """Dispatch on a format name from lists.yaml; ValueError if it is not one of FORMATS."""
    match fmt:
        case "hosts":
            return parse_hosts(lines)
        case "domains":
            return parse_domains(lines)
        case "adblock":
            return parse_adblock(lines)
        case "rpz":
            return parse_rpz(lines)
    raise ValueError(f"unknown list format {fmt!r} (expected one of: {', '.join(FORMATS)})")


# --- hosts -------------------------------------------------------------------------------

# Addresses seen in nearly every hosts file; checked before the (slow) ipaddress parse.
_COMMON_IPS = frozenset({"0.0.0.0", "127.0.0.1", "::", "::1", "0", "255.255.255.255"})
# The localhost preamble most hosts files start with: not blocking entries, so no noise.
_PREAMBLE = frozenset(
    {"localhost", "localhost.localdomain", "local", "broadcasthost", "ip6-localhost",
     "ip6-loopback", "0.0.0.0"}
)
_PREAMBLE_KEYS = frozenset(name.encode() for name in _PREAMBLE)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return False
    return True


def parse_hosts(lines: Iterable[str]) -> Iterator[Parsed]:
    """`IP name [name...]` lines; every name blocks itself and its subdomains."""
    norm = normalize_name
    new = tuple.__new__  # NamedTuple's own __new__ is a Python call: 3x slower on 1M lines
    default = Action.DEFAULT
    for no, raw in enumerate(lines, 1):
        line = raw.split("#", 1)[0] if "#" in raw else raw
        fields = line.split()
        if not fields:
            continue
        if fields[0] not in _COMMON_IPS and not _is_ip(fields[0]):
            yield Skipped(no, raw.strip(), "first field is not an IP address")
            continue
        if len(fields) == 1:
            yield Skipped(no, raw.strip(), "no host name after the address")
            continue
        for name in fields[1:]:
            try:
                key = norm(name)
            except ValueError as exc:
                if name not in _PREAMBLE:
                    yield Skipped(no, raw.strip(), str(exc))
                continue
            if key in _PREAMBLE_KEYS or (key.startswith(b"ip6-") and b"." not in key):
                continue
            yield new(ParsedRule, (key, SCOPE_BOTH, default, no))


# --- plain domains -----------------------------------------------------------------------


def parse_domains(lines: Iterable[str]) -> Iterator[Parsed]:
    """One name per line; `*.name` means subdomains only, `.name` and `name` both."""
    norm = normalize_name
    new = tuple.__new__
    default = Action.DEFAULT
    for no, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line:
            continue
        first = line[0]
        scope = SCOPE_BOTH
        if first in "#!*.":
            if first == "#" or first == "!":
                continue
            if line.startswith("*."):
                scope = SCOPE_SUBS
                line = line[2:]
            elif first == ".":
                line = line[1:]
        if "#" in line:
            line = line.split("#", 1)[0].rstrip()
        try:
            key = norm(line)
        except ValueError as exc:
            reason = "more than one field" if len(line.split()) > 1 else str(exc)
            yield Skipped(no, raw.strip(), reason)
            continue
        yield new(ParsedRule, (key, scope, default, no))


# --- adblock -----------------------------------------------------------------------------

# Element hiding / scriptlet / HTML filtering markers: browser-only, meaningless to DNS.
_COSMETIC = re.compile(r"#@?[$?%]{0,2}#|\$@?\$")
# Options that do not narrow a rule below "the whole host", so DNS can honour the rule.
_DNS_SAFE_OPTIONS = frozenset({"important"})


def parse_adblock(lines: Iterable[str]) -> Iterator[Parsed]:
    """`||name^` (block) and `@@||name^` (allow) rules; URL, regex and cosmetic rules are skipped.

    Rules with options such as `$third-party` or `$script` only apply to some requests in a
    browser; enforcing them for a whole host in DNS would overblock, so they are skipped.
    """
    norm = normalize_name
    new = tuple.__new__
    for no, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line:
            continue
        first = line[0]
        if first == "!" or (first == "[" and line.endswith("]")):
            continue
        if ("#" in line or "$$" in line or "$@$" in line) and _COSMETIC.search(line):
            yield Skipped(no, line, "cosmetic rule")
            continue
        if first == "#":
            continue  # hosts-style comment, common in DNS-oriented adblock lists
        action = Action.DEFAULT
        body = line
        if body.startswith("@@"):
            action = Action.PASSTHRU
            body = body[2:]
        if not body.startswith("||"):
            yield Skipped(no, line, _why_not_anchor(body))
            continue
        body = body[2:]
        options = ""
        if "$" in body:
            body, _, options = body.partition("$")
        separated = True
        if body.endswith("^|"):
            body = body[:-2]
        elif body.endswith("^"):
            body = body[:-1]
        else:
            separated = False
        if "/" in body or "^" in body:
            yield Skipped(no, line, "URL path rule")
            continue
        if options:
            bad = [o for o in options.split(",") if o.strip().lower() not in _DNS_SAFE_OPTIONS]
            if bad:
                yield Skipped(no, line, f"unsupported option ${bad[0].split('=', 1)[0]}")
                continue
        if not separated:
            reason = "wildcard pattern rule" if "*" in body else "prefix rule without ^ separator"
            yield Skipped(no, line, reason)
            continue
        scope = SCOPE_BOTH
        if body.startswith("*."):
            scope = SCOPE_SUBS
            body = body[2:]
        if "*" in body:
            yield Skipped(no, line, "wildcard pattern rule")
            continue
        try:
            key = norm(body)
        except ValueError as exc:
            yield Skipped(no, line, str(exc))
            continue
        yield new(ParsedRule, (key, scope, action, no))


def _why_not_anchor(body: str) -> str:
    if len(body) > 1 and body.startswith("/") and body.split("$", 1)[0].endswith("/"):
        return "regex rule"
    if body.startswith("|"):
        return "URL rule"
    return "not a ||domain^ rule"


# --- RPZ ---------------------------------------------------------------------------------

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


def _records(lines: Iterable[str]) -> Iterator[_Record]:
    pending: list[str] | None = None
    start = depth = 0
    first_text = ""
    inherits = False
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
    if pending is not None:
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


def parse_rpz(lines: Iterable[str]) -> Iterator[Parsed]:
    """QNAME triggers of a Response Policy Zone (the subset BIND, Unbound and Knot share).

    `name CNAME .` blocks the name (NXDOMAIN), `*.name CNAME .` its subdomains, `CNAME *.`
    answers NODATA and `CNAME rpz-passthru.` exempts the name. `rpz-drop.` (no answer at all)
    is answered NXDOMAIN instead: a silent drop makes clients retry and look broken; it is
    still counted as a block. Local data (A, TXT, CNAME to a name) and IP/NSDNAME triggers
    are skipped with a reason.
    """
    norm = normalize_name
    origin: str | None = None  # current $ORIGIN, absolute, lowercase
    first_origin: str | None = None
    apex: str | None = None  # the zone's own name, from the SOA owner
    owner = ""
    for rec in _records(lines):
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
