"""What a reload swaps into the query path in one assignment (dns/chain.py `Resolver.swap`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from gateway.dns.answers import BlockAnswers
from gateway.policy.decide import Profile
from gateway.policy.netindex import PrefixMap

_EPOCH = datetime.fromtimestamp(0, UTC)


@dataclass(frozen=True)
class View:
    """Who is who, and how blocked names are answered."""

    clients: PrefixMap[Profile]
    answers: BlockAnswers
    generation: int
    tokens: dict[str, Profile] = field(default_factory=dict)  # DoH path token -> its profile
    # Front ends (dnsdist) whose PROXY v2 header or EDNS Client Subnet names the real client.
    frontends: PrefixMap[bool] | None = None
    proxy_protocol: bool = False
    forward_ecs: bool = False
    built_at: datetime = _EPOCH  # when schedule windows were evaluated for these profiles

    def profiles(self) -> list[Profile]:
        """Every profile of this view: networks, subscribers and DoH tokens."""
        return [*self.clients.values(), *self.tokens.values()]
