"""A DNS self-probe's verdict on one feed entry: what the prober records (manager.py).

The protocols say what the prober needs of compliance.selfprobe's results and of the policy in
force, without importing either (feeds sit below them).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet
from typing import Protocol

from gateway.feeds.ledger import LedgerEntry


class NetworkAnswer(Protocol):
    """What one network's probe saw (compliance.selfprobe's NetworkProbe)."""

    @property
    def network(self) -> str: ...
    @property
    def blocked(self) -> bool: ...


class SelfProbeOutcome(Protocol):
    """One self-probe of a name from every network (compliance.selfprobe's ProbeResult)."""

    @property
    def results(self) -> Sequence[NetworkAnswer]: ...
    @property
    def blocked(self) -> bool: ...


class BlockedCategories(Protocol):
    """A network's profile, as far as verification cares: which categories it blocks."""

    @property
    def blocked(self) -> AbstractSet[str]: ...


class PolicyInForce(Protocol):
    """The configuration being served (runtime's Loaded): its profiles by network name."""

    @property
    def profiles(self) -> Mapping[str, BlockedCategories]: ...


def probe_verdict(result: SelfProbeOutcome, entry: LedgerEntry, loaded: PolicyInForce | None
                  ) -> str | None:
    """blocked | not_blocked | error, or None when no network is expected to block it.

    A mandatory entry must be blocked from every network; a policy entry only from the
    networks whose tier blocks one of its categories.
    """
    if not result.results:
        return "error"
    if entry.mandatory:
        return "blocked" if result.blocked else "not_blocked"
    if loaded is None:
        return "error"
    expected = [r for r in result.results
                if set(entry.categories) & loaded.profiles[r.network].blocked]
    if not expected:
        return None
    return "blocked" if all(r.blocked for r in expected) else "not_blocked"
