"""The policy decision: (profile, name) + compiled lists -> verdict. Pure: no I/O, no clock.

Order matters and is the product's promise (design.md):
  1. mandatory entries (CSAM, authority feeds) block for every tier; nothing lifts them;
  2. bypass names (DoH canary, iCloud Private Relay, DDR) unless the tier turned protection off;
  3. the network's and tier's own deny / allow lists (the more specific match wins, deny on ties);
  4. the tier's blocked categories, plus those its schedule windows add right now (the server
     rebuilds profiles at each window edge, so time never enters this function);
  5. allowlist-only tiers block whatever nothing above allowed;
     a name of a category under a game-time quota (policy/quotas.py) is marked reason "quota":
     the query path charges the client's minute and blocks it once the day's time is used up;
  6. a name that is not blocked and is a search engine's host gets the SafeSearch rewrite;
  7. a name in the proxy's intercept set (URL-level entries, image scanning, restricted modes)
     is answered with the proxy's address, so its traffic goes through the proxy.
Within one category the most specific list entry decides, so an RPZ `rpz-passthru` or an
adblock `@@||name^` exception lifts that category's block for the names under it.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from gateway.config.limits import MemoryLimits
from gateway.lists import Action
from gateway.lists.overlay import Match, Matcher
from gateway.policy.quotas import Quota

EDE_BLOCKED = 15
EDE_CENSORED = 16
EDE_FILTERED = 17


@dataclass(frozen=True, slots=True)
class Verdict:
    """What to do with a name, and why (shown by `safegate explain` and in EDE EXTRA-TEXT).

    Slotted: a blocked name's verdict lives in the verdict memo, the reply memo's bodies and
    the blocked-body cache; 96 bytes instead of ~150 with an instance dict (docs/memory.md).
    """

    blocked: bool
    reason: str                 # mandatory | policy | deny | allow | allowlist-only | none
    category: str = ""
    rule: bytes = b""           # the list entry (a suffix of the name) that decided
    offset: int = 0             # where `rule` starts inside the queried name
    answer: str = ""            # blockpage | nxdomain | nodata | null (blocked only)
    ede: int = 0
    ref: str = ""               # the feed entry id, when a feed entry decided
    rewrite: bytes = b""        # SafeSearch: answer with a CNAME to this name (not blocked)
    steer: bool = False         # the proxy must see it: answer the proxy's address (not blocked)

    def ede_text(self) -> str:
        """Short EXTRA-TEXT: the category and the list entry."""
        rule = self.rule.decode("ascii", "replace")
        if self.reason == "deny":
            return f"deny: {rule}"
        if self.reason == "allowlist-only":
            return "not on the allowlist"
        if self.reason == "bypass":
            return f"bypass: {rule}"
        if self.reason == "schedule":
            return f"{self.category}: {rule} (schedule)"
        if self.reason == "quota":
            return f"{self.category}: {rule} (daily time used up)"
        if self.reason == "quota-full":
            return f"{self.category}: {rule} (time limit cannot be counted)"
        if self.ref:
            return f"{self.category}: {rule} ({self.ref})"
        return f"{self.category}: {rule}"


ALLOWED = Verdict(blocked=False, reason="none")
# A logged network's per-query call (qname, qtype, verdict, client address): gateway/querylog/.
QueryHook = Callable[[bytes, int, Verdict, str], None]

# Names that switch clients away from this resolver, and the answer that keeps them here.
# Firefox turns its default DoH off on NXDOMAIN for the canary; Apple asks networks to answer
# NXDOMAIN for Private Relay; NODATA for resolver.arpa (RFC 9462) means "no designated
# encrypted resolver", so no DDR upgrade.
BYPASS_NAMES: dict[bytes, str] = {
    b"use-application-dns.net": "nxdomain",
    b"mask.icloud.com": "nxdomain",
    b"mask-h2.icloud.com": "nxdomain",
    b"resolver.arpa": "nodata",
}
_DDR_SUFFIX = b".resolver.arpa"    # _dns.resolver.arpa and anything else under it: NODATA


def bypass_verdict(key: bytes) -> Verdict | None:
    """The block verdict for a bypass name, or None."""
    answer = BYPASS_NAMES.get(key)
    if answer is not None:
        return Verdict(True, "bypass", "bypass", key, 0, answer, EDE_BLOCKED)
    if key.endswith(_DDR_SUFFIX):
        off = len(key) - len(_DDR_SUFFIX) + 1
        return Verdict(True, "bypass", "bypass", key[off:], off, "nodata", EDE_BLOCKED)
    return None


@dataclass(frozen=True)
class ProfileId:
    """Where a profile comes from: policy.networks[index], policy.tokens[index] or the
    subscribers file's profiles[index] (what `safegate explain` reads back)."""

    kind: Literal["network", "token", "subscriber"]
    index: int


class Profile:
    """One compiled policy view (a network with its tier); memoizes verdicts per name.

    The memo lives on the profile, and profiles are rebuilt on every reload, so a verdict can
    never outlive the lists and policy that produced it.
    """

    __slots__ = ("_half", "_memo", "_older", "allow", "answer", "blocked", "bypass",
                 "default_block", "deny", "filtered", "id", "index", "log", "network", "plans",
                 "quotas", "replies", "reply_memo", "rewrites", "scheduled", "steer",
                 "steer_scopes", "tier", "verdict_memo")

    def __init__(self, id: ProfileId, network: str, tier: str, blocked: frozenset[str], answer: str,
                 allow: frozenset[bytes], deny: frozenset[bytes], default_block: bool,
                 index: Matcher, *, scheduled: frozenset[str] = frozenset(),
                 rewrites: dict[bytes, bytes] | None = None, bypass: bool = False,
                 filtered: bool = False, steer: frozenset[bytes] = frozenset(),
                 steer_scopes: frozenset[bytes] = frozenset(),
                 quotas: dict[str, Quota] | None = None,
                 verdict_memo: int = MemoryLimits.verdict_memo,
                 reply_memo: int = MemoryLimits.reply_memo,
                 log: QueryHook | None = None) -> None:
        self.id = id
        self.network = network
        self.tier = tier
        self.blocked = blocked
        self.answer = answer
        self.allow = allow
        self.deny = deny
        self.default_block = default_block
        self.index = index
        # Categories the tier's schedule windows add at the time this profile was built (also
        # in `blocked`); a block by one of them is reported as reason "schedule".
        self.scheduled = scheduled
        self.rewrites = rewrites or {}   # SafeSearch: host -> CNAME target (safesearch.py)
        self.bypass = bypass             # bypass_protection: bypass names, ECH stripping
        # The subscriber chose this filtering (ISP parental control): EDE 17 "Filtered"
        # instead of 15 "Blocked" (RFC 8914); legal orders stay 16 "Censored".
        self.filtered = filtered
        self.steer = steer               # the proxy's intercept set (DNS-steered interception)
        self.steer_scopes = steer_scopes  # image-scan scopes: steered with their subdomains
        # Game-time quotas by category (policy/quotas.py); empty for most profiles, and then
        # nothing about quotas is looked at per query.
        self.quotas = quotas or {}
        # The verdict memo in two generations of plain dicts: new verdicts go to `_memo`; when
        # it holds half the limit it becomes `_older` (the previous one is dropped whole). The
        # last half of the limit is always kept, and an entry costs a dict slot (~40 bytes)
        # instead of an OrderedDict's slot and link node (~100): 50k allowed names were 11 MB.
        self._memo: dict[bytes, Verdict] = {}
        self._older: dict[bytes, Verdict] = {}
        # (A limit of 1 keeps one verdict: the older generation is then never kept.)
        self._half = verdict_memo // 2 if verdict_memo != 1 else 1
        # The query path's memo of whole UDP replies by query bytes (see dns/chain.py); here so
        # that it is rebuilt with the profile on every reload.
        self.replies: OrderedDict[bytes, Any] = OrderedDict()
        # dns/fastpath.py's outcome per rule tuple (id -> (tuple, plan)), bounded there.
        self.plans: dict[int, Any] = {}
        # limits.memory: verdicts (~0.1 KB each; allowed names share one) and whole replies
        # (~0.5 KB each) kept per profile, oldest evicted first.
        self.verdict_memo = verdict_memo
        self.reply_memo = reply_memo
        # The query log of this network (gateway/querylog/), or None: a logged profile keeps
        # no reply memo and skips the fast path, so dns/chain.py sees and logs every query.
        self.log = log

    def decide(self, key: bytes) -> Verdict:
        """The verdict for a lowercase dotted name (memoized)."""
        memo = self._memo
        verdict = memo.get(key)
        if verdict is None:
            verdict = self._older.get(key)
            if verdict is None:
                verdict = decide(self, key)
                if not self._half:
                    return verdict  # limits.memory.verdict_memo: 0, no memo
            if len(memo) >= self._half:
                # Turn a generation: a full clear would thrash a working set at the limit.
                self._older = memo if 2 * self._half <= self.verdict_memo else {}
                memo = self._memo = {}
            memo[key] = verdict
        return verdict


def suffix_match(names: frozenset[bytes], key: bytes) -> int:
    """Offset of the longest suffix of `key` (at a label boundary) found in `names`, or -1."""
    if not names:
        return -1
    off = 0
    while True:
        if key[off:] in names:
            return off
        dot = key.find(b".", off)
        if dot < 0:
            return -1
        off = dot + 1


def decide(profile: Profile, key: bytes) -> Verdict:
    """The uncached decision; see the module docstring for the order."""
    verdict = _decide(profile, key)
    if verdict.blocked or verdict.reason == "quota":
        # (a quota-limited name is neither rewritten nor steered: its time must be counted)
        if profile.filtered and verdict.ede == EDE_BLOCKED:
            return dataclasses.replace(verdict, ede=EDE_FILTERED)
        return verdict
    if profile.rewrites:
        # After every block: a blocked google stays blocked; an allowed one is still rewritten.
        target = profile.rewrites.get(key)
        if target is not None:
            return Verdict(False, "safesearch", "safesearch", key, 0, rewrite=target)
    if profile.steer:
        # The intercept set holds hosts as URL entries name them, `www.` stripped.
        host = key[4:] if key.startswith(b"www.") else key
        if host in profile.steer or key in profile.steer:
            return Verdict(False, "intercept", "", host, len(key) - len(host), "steer",
                           steer=True)
        off = suffix_match(profile.steer_scopes, key)
        if off >= 0:
            return Verdict(False, "intercept", "", key[off:], off, "steer", steer=True)
    return verdict


Ranked = tuple[int, str, int, str]  # (offset, category, action, ref) of the deciding entry


def rank(profile: Profile, matches: Match) -> tuple[Ranked | None, Ranked | None]:
    """What the list rules in `matches` ask of this profile: the mandatory block and the
    block by one of its tier's categories, each the most specific entry, or None.

    Only the order of `matches` matters, never the offsets' values: dns/fastpath.py ranks
    level numbers (0, 1, ...) once per combination of rule tuples and reuses the result.
    """
    decided = _decided(matches)
    mandatory_best: Ranked | None = None
    best: Ranked | None = None
    for (category, mandatory), (off, action, ref) in decided.items():
        if action == Action.PASSTHRU:
            continue
        if mandatory:
            if mandatory_best is None or (off, category) < mandatory_best[:2]:
                mandatory_best = (off, category, action, ref)
        elif category in profile.blocked and (best is None or (off, category) < best[:2]):
            best = (off, category, action, ref)
    return mandatory_best, best


def _decided(matches: Match) -> dict[tuple[str, bool], tuple[int, int, str]]:
    """(category, mandatory) -> (offset, action, ref) of the most specific entry."""
    decided: dict[tuple[str, bool], tuple[int, int, str]] = {}
    for off, rules in matches:  # longest suffix first: the most specific entry decides
        for rule in rules:
            slot = (rule.category, rule.mandatory)
            prev = decided.get(slot)
            if prev is None or (prev[0] == off and rule.action == Action.PASSTHRU):
                # (an exception beats a block at the same level)
                decided[slot] = (off, rule.action, rule.ref)
    return decided


def quota_rank(profile: Profile, matches: Match) -> tuple[int, str] | None:
    """(offset, category) of the most specific list entry putting the name in one of the
    profile's quota-limited categories, or None (an exception lifts it like a block)."""
    best: tuple[int, str] | None = None
    for (category, mandatory), (off, action, _) in _decided(matches).items():
        if not mandatory and action != Action.PASSTHRU and category in profile.quotas \
                and (best is None or (off, category) < best):
            best = (off, category)
    return best


def _decide(profile: Profile, key: bytes) -> Verdict:
    matches = profile.index.match(key)
    mandatory, best = rank(profile, matches)
    if mandatory is not None:
        return mandatory_block(profile, key, mandatory)
    if profile.bypass:
        bypass = bypass_verdict(key)
        if bypass is not None:
            return bypass

    deny_off = suffix_match(profile.deny, key)
    allow_off = suffix_match(profile.allow, key)
    if deny_off >= 0 and (allow_off < 0 or deny_off <= allow_off):
        return Verdict(True, "deny", "deny", key[deny_off:], deny_off, profile.answer, EDE_BLOCKED)
    if allow_off >= 0:
        return Verdict(False, "allow", "", key[allow_off:], allow_off)

    if best is not None:
        return category_block(profile, key, best)
    if profile.default_block:
        return Verdict(True, "allowlist-only", "allowlist-only", b"", 0, profile.answer,
                       EDE_BLOCKED)
    if profile.quotas:
        limited = quota_rank(profile, matches)
        if limited is not None:
            off, category = limited
            return Verdict(False, "quota", category, key[off:], off)
    return ALLOWED


def quota_block(profile: Profile, allowed: Verdict, full: bool) -> Verdict:
    """The block verdict for a quota-limited name (`allowed`, reason "quota") once the
    client's time is used up, or (`full`) when it cannot be counted: EDE 15 (17 when the
    subscriber chose the filtering, as every category block)."""
    return Verdict(True, "quota-full" if full else "quota", allowed.category, allowed.rule,
                   allowed.offset, profile.answer,
                   EDE_FILTERED if profile.filtered else EDE_BLOCKED)


def mandatory_block(profile: Profile, key: bytes, ranked: Ranked) -> Verdict:
    """The verdict of `rank`'s mandatory entry: EDE 16 Censored, nothing lifts it."""
    off, category, action, ref = ranked
    return _blocked("mandatory", category, key, off, action, profile.answer, EDE_CENSORED, ref)


def category_block(profile: Profile, key: bytes, ranked: Ranked) -> Verdict:
    """The verdict of `rank`'s block by one of the tier's categories (or its schedule's)."""
    off, category, action, ref = ranked
    reason = "schedule" if category in profile.scheduled else "policy"
    return _blocked(reason, category, key, off, action, profile.answer, EDE_BLOCKED, ref)


def _blocked(reason: str, category: str, key: bytes, off: int, action: int, default_answer: str,
             ede: int, ref: str = "") -> Verdict:
    """A block verdict; an RPZ rule's own action (NXDOMAIN/NODATA) overrides the tier's answer."""
    if action == Action.NXDOMAIN:
        answer = "nxdomain"
    elif action == Action.NODATA:
        answer = "nodata"
    else:
        answer = default_answer
    return Verdict(True, reason, category, key[off:], off, answer, ede, ref=ref)
