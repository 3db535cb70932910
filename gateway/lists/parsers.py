"""Pure parsers for the line formats lists are published in: hosts, plain domains, adblock.

`parse` picks a parser by its lists.yaml name (RPZ's is in rpz.py).

Each parser turns lines into ParsedRule (a name with a scope and an action) or Skipped (a line
it understood but cannot enforce as DNS, with the reason); comments and blank lines yield
nothing. They never raise on bad input: one odd line must not disable a whole list.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Iterator

from gateway.lists import SCOPE_BOTH, SCOPE_SELF, SCOPE_SUBS, Action, Parsed, ParsedRule, Skipped
from gateway.lists.rpz import parse_rpz
from gateway.util.names import normalize_name

__all__ = [
    "FORMATS",
    "SCOPE_BOTH",
    "SCOPE_SELF",
    "SCOPE_SUBS",
    "Action",
    "parse",
    "parse_adblock",
    "parse_domains",
    "parse_hosts",
]

FORMATS = ("hosts", "domains", "adblock", "rpz")


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
