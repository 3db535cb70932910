"""Blocklists: parse published formats, compile them into a compact mmap-able index.

The vocabulary shared by parsers, builder and index lives here so that the serving side
(`gateway.lists.index`) imports nothing heavier than this module.
"""

from __future__ import annotations

import enum
from typing import NamedTuple


class Action(enum.IntEnum):
    """What a list asks for; DEFAULT means "whatever the policy's block answer is"."""

    DEFAULT = 0
    NXDOMAIN = 1
    NODATA = 2
    PASSTHRU = 3


# Scope bits: SELF matches the name itself, SUBS every name below it; BOTH is suffix matching.
SCOPE_SELF = 1
SCOPE_SUBS = 2
SCOPE_BOTH = 3


class Rule(NamedTuple):
    """One category's verdict on a name; a key carries a tuple of these (a "combo")."""

    category: str
    scope: int
    action: Action
    mandatory: bool
    ref: str = ""  # the authority's entry id for feed rules (shown in EDE and explain)


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


Parsed = ParsedRule | Skipped  # what every parser yields (parsers.py, rpz.py)


__all__ = ["SCOPE_BOTH", "SCOPE_SELF", "SCOPE_SUBS", "Action", "Parsed", "ParsedRule", "Rule",
           "Skipped"]
