"""Game-time quotas in policy files: `quotas: [{categories: [games], minutes: 60, per: day}]`
on a tier or a network (docs/quotas.md).

A quota does not block a category: it lets a client use it for so many active minutes a day
(policy/quota_table.py counts them), then blocks it until local midnight. decide.py marks a
name in a quota-limited category with reason "quota"; the query path charges the minute.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.config.spec import STRINGS, TEXT, Key, Shape, enum, integer
from gateway.config.yamlconf import error_at, expect_list, expect_mapping, expect_str

PERIODS = ("day",)
MINUTES_PER_DAY = 1440
QUOTA = Shape("a quota", (
    Key("categories", STRINGS, "categories from lists.yaml this budget counts", required=True),
    Key("minutes", integer(1, MINUTES_PER_DAY), "active minutes a client may use per period "
        "(a minute counts when it looks up a name of these categories)", required=True),
    Key("per", enum(*PERIODS), "the period, reset at local midnight", PERIODS[0]),
    Key("description", TEXT, "free text"),
), nullable=False)


@dataclass(frozen=True)
class Quota:
    """`minutes` active minutes of `categories` per `per`, for each client address.

    `key` names the quota in the saved counters ("tier/kids/0", "network/lab/1"): stable
    across reloads and restarts as long as the quota stays where it is written.
    """

    key: str
    categories: tuple[str, ...]
    minutes: int
    per: str = "day"
    description: str = ""
    path: str = ""
    line: int = 0

    def label(self) -> str:
        return f"{', '.join(self.categories)}: {self.minutes} minutes per {self.per}"


def parse_quotas(value: Any, parent: Any, key: str, known: set[str], owner: str
                 ) -> tuple[Quota, ...]:
    """A tier's or network's `quotas:` list; `owner` is "tier/NAME" or "network/NAME".

    A category may appear in one quota of a tier (or network) only: two budgets for one
    category would leave the user guessing which one runs out.
    """
    items = expect_list(value, "quotas", parent, key)
    out: list[Quota] = []
    seen: dict[str, int] = {}
    for i, raw in enumerate(items):
        body = expect_mapping(raw, "a quota", items, i)
        QUOTA.check(body)
        QUOTA.require(body, items, i)
        cats_raw = expect_list(body["categories"], "categories", body, "categories")
        cats: list[str] = []
        for j, cat in enumerate(cats_raw):
            cat = expect_str(cat, "a category", cats_raw, j)
            if cat not in known:
                raise error_at(f"quota limits unknown category {cat!r} (categories in the "
                               f"blocklists: {', '.join(sorted(known)) or 'none'})", cat,
                               cats_raw, j)
            if cat in seen:
                raise error_at(f"category {cat!r} is already limited by quota {seen[cat] + 1} "
                               "of this list", cat, cats_raw, j)
            seen[cat] = i
            cats.append(str(cat))
        if not cats:
            raise error_at("quota limits no category", None, body, "categories")
        minutes = body["minutes"]
        if isinstance(minutes, bool) or not isinstance(minutes, int) \
                or not 1 <= minutes <= MINUTES_PER_DAY:
            raise error_at(f"minutes must be a whole number from 1 to {MINUTES_PER_DAY}, got "
                           f"{minutes!r}", None, body, "minutes")
        per = str(body.get("per", "day"))
        if per not in PERIODS:
            raise error_at(f"per must be one of {', '.join(PERIODS)}, got {per!r}", None, body,
                           "per")
        out.append(Quota(f"{owner}/{i}", tuple(cats), minutes, per,
                         str(body.get("description", "")), body.path, body.line))
    return tuple(out)


def by_category(tier_quotas: tuple[Quota, ...], network_quotas: tuple[Quota, ...]
                ) -> dict[str, Quota]:
    """The quota of each limited category for one profile: a network's quota replaces its
    tier's for the categories it names (the network is the more specific setting)."""
    out = {c: q for q in tier_quotas for c in q.categories}
    out.update({c: q for q in network_quotas for c in q.categories})
    return out
