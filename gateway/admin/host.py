"""What the admin page asks of the running gateway. The runtime implements it
(gateway/runtime/admin_host.py): the page never reaches into the resolver itself."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from gateway.config.gateway import GatewayConfig
from gateway.policy.policyfile import Policy
from gateway.querylog.store import Found


@dataclass(frozen=True)
class Explained:
    """The query path's decision for one client and name, in the words of `safegate explain`."""

    client: str
    name: str
    network: str          # "" when no network has the client
    tier: str
    blocked: bool
    reason: str           # mandatory | policy | deny | allow | allowlist-only | none
    category: str
    rule: str             # the list entry or allow/deny name that decided


@dataclass(frozen=True)
class Status:
    ready: bool
    generation: int
    entries: int
    entries_by_category: dict[str, int]
    last_reload_at: float
    last_reload_error: str
    upstreams: list[tuple[str, int, int]]         # label, queries, errors
    tier_counts: dict[str, dict[str, int]] = field(default_factory=dict)  # tier -> action -> n
    blocked_by_category: dict[str, dict[str, int]] = field(default_factory=dict)  # tier -> cat


class AdminHost(Protocol):
    def config(self) -> GatewayConfig:
        """The running gateway.yaml."""

    def policy(self) -> Policy:
        """The running policy (tiers and networks)."""

    def categories(self) -> list[str]:
        """The categories of lists.yaml (for validating a policy edit)."""

    def status(self) -> Status:
        """A snapshot for the status page."""

    def top_blocked(self) -> dict[str, list[tuple[str, int]]]:
        """Per network, its most blocked names of the last 24 hours (counts, no client)."""

    def blocked_by_category(self) -> dict[str, dict[str, int]]:
        """Per network, its blocked answers of the last 24 hours by category (after
        top_blocked, which reads the latest counts)."""

    async def search_log(self, **query: Any) -> list[Found] | None:
        """QueryLogStore.search on the query log; None when there is none."""

    def explain(self, client: str, name: str) -> Explained | None:
        """None when `name` is not a domain name or `client` not an address."""

    async def reload(self, why: str) -> tuple[bool, str]:
        """Reload now; (False, errors) when the new files were refused."""
