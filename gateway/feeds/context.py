"""What the parts of one feed's client share: its settings, where its rules go, the ledger and
metrics, and the error that says why a response was not applied."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from gateway.config.feeds import FeedConfig, FeedGuardConfig
from gateway.feeds.acks import AckTarget
from gateway.feeds.ledger import Ledger, LedgerEntry
from gateway.feeds.stats import FeedMetrics
from gateway.lists.overlay import Overlay

# GET with (query params, headers, timeout) -> (HTTP status, body, response headers).
Fetch = Callable[[dict[str, str], dict[str, str], float],
                 Awaitable[tuple[int, bytes, Mapping[str, str]]]]
OnApplied = Callable[[str, list[LedgerEntry]], None]


class OverlayTarget(Protocol):
    """What a feed needs from the gateway: put its rules in force atomically."""

    def set_overlay(self, name: str, overlay: Overlay | None) -> int: ...


class Rejected(Exception):
    """A response not applied; `reason` is a safegate_feed_rejected_total label."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(message)


@dataclass(frozen=True)
class FeedContext:
    """One feed's fixed surroundings, shared by its signed/plain part and its hold guard."""

    cfg: FeedConfig
    guard: FeedGuardConfig
    target: OverlayTarget
    ledger: Ledger
    metrics: FeedMetrics
    state_dir: Path
    ack: AckTarget | None
    clock: Callable[[], float]
    proxy: bool = False        # proxy.enabled: URL/hash entries are enforced (and probed) there

    @property
    def name(self) -> str:
        return self.cfg.name

    @property
    def dir(self) -> Path:
        return self.state_dir / "feeds"

    def success(self) -> None:
        """The feed was fetched (or found unchanged) and is valid: last_success moves."""
        self.metrics.last_success.labels(self.name).set(self.clock())
