"""The feed head: a small signed document that says which serial is the latest, and when.

Documents served at serial-addressed URLs never change (so any HTTP cache may keep them for a
year), which means their own generated_at is the time the serial was published, not the time
they were fetched. The head carries the freshness instead: the publisher signs
{serial, generated_at=now} for every answer of the short-lived head endpoint, and a gateway
whose document is the head's serial counts its copy as confirmed at the head's time.

A head can never pass for a feed document (it has no `entries`, which parse_feed requires) and
a feed document never for a head (parse_head requires `type`), although both are signed with
the same key.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from gateway.feedformat.document import FORMAT_VERSION, FeedError, parse_time

HEAD_TYPE = "safegate-head"


@dataclass(frozen=True)
class Head:
    """The latest serial, the signing time, and how far back diffs are served."""

    serial: int
    generated_at: str
    diff_history: int

    def to_bytes(self) -> bytes:
        doc = {"type": HEAD_TYPE, "version": FORMAT_VERSION, "serial": self.serial,
               "generated_at": self.generated_at, "diff_history": self.diff_history}
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode("ascii")


def _count(doc: dict[str, Any], key: str) -> int:
    value = doc.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise FeedError(f"head: {key} must be a non-negative integer")
    return value


def parse_head(data: bytes) -> Head:
    """Parse a head (its signature is checked before, not here); FeedError if invalid."""
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise FeedError(f"head: not valid JSON: {exc}", "malformed") from None
    if not isinstance(doc, dict) or doc.get("type") != HEAD_TYPE:
        raise FeedError(f"not a feed head (type must be {HEAD_TYPE!r})")
    if doc.get("version") != FORMAT_VERSION:
        raise FeedError(f"unsupported head version {doc.get('version')!r}", "version")
    generated = doc.get("generated_at")
    try:
        parse_time(generated)
    except (TypeError, ValueError):
        raise FeedError("head: generated_at must be an ISO 8601 time with timezone") from None
    return Head(_count(doc, "serial"), str(generated), _count(doc, "diff_history"))


def snapshot_path(serial: int) -> str:
    """The immutable URL path of the snapshot at `serial` (docs/feeds-contract.md)."""
    return f"/v1/feed/snapshot/{serial}"


def diff_path(since: int, serial: int) -> str:
    """The immutable URL path of the diff from `since` to `serial`."""
    return f"/v1/feed/diff/{since}/{serial}"


HEAD_PATH = "/v1/feed/head"
