"""`gateway:` (this gateway's identity at its publishers), `feeds:` and `feed_guard:`."""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from gateway.config.spec import (
    BOOL,
    SECONDS,
    STR,
    STRINGS,
    Key,
    Shape,
    enum,
    integer,
    number,
    pattern,
)
from gateway.config.upstreams import UpstreamSpec
from gateway.config.values import (
    FileRefs,
    default,
    http_url,
    read_bool,
    read_int,
    read_opt_str,
    read_seconds,
)
from gateway.config.yamlconf import (
    YDict,
    error_at,
    expect_list,
    expect_mapping,
    expect_str,
    where,
)
from gateway.errors import ConfigError
from gateway.util.names import normalize_name

# Written by `safegate feeds enroll` in state_dir: {"gateway": ID, "token": TOKEN, ...}.
ENROLLMENT_FILE = "enrollment.json"
FEED_TYPES = ("safegate", "hosts", "domains", "adblock", "rpz")
SIGNED = "safegate"
MAX_LONG_POLL = 60
_FEED_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")


@dataclass(frozen=True)
class IdentityConfig:
    """`gateway:` how this gateway names itself to publishers (acks, stats)."""

    id: str = ""
    token: str = ""
    report_stats: bool = False


@dataclass(frozen=True)
class FeedConfig:
    """One `feeds:` item; `public_keys` is empty for plain (unauthenticated) list feeds."""

    name: str
    url: str
    type: str = SIGNED
    public_keys: tuple[Path, ...] = ()
    interval: float = 60.0
    category: str | None = None
    mandatory: bool = False
    acks: bool = False        # not written: on for signed feeds (parse_feeds), off otherwise
    long_poll: float = 30.0
    # Oldest a signed feed's newest verified document may be (by its signed generated_at)
    # before the feed counts as stale. Publishers re-sign every hour by default (heartbeat);
    # the client fetches a fresh copy at max_age / 2.
    max_age: float = 86400.0
    # Fetch by serial: a long-polled signed head, then the immutable snapshot/diff URLs an
    # HTTP cache in front of the publisher can serve to every gateway (docs/feeds-contract.md).
    by_serial: bool = False

    @property
    def signed(self) -> bool:
        return self.type == SIGNED


@dataclass(frozen=True)
class FeedGuardConfig:
    """Defence in depth against a wrong or hostile feed: names never blocked, change limits."""

    never_block: tuple[str, ...] = ()
    max_change_ratio: float = 0.10
    max_change_entries: int = 1000


IDENTITY = Shape("gateway", (
    Key("id", STR, "this gateway's name at its publishers (acks, stats)"),
    Key("token", STR, "the token its publishers gave it"),
    Key("report_stats", BOOL, "send hourly blocked-query counts per feed entry to publishers",
        default(IdentityConfig, "report_stats")),
), "this gateway's identity at its publishers")
FEED = Shape("a feeds item", (
    Key("name", pattern(_FEED_NAME.pattern), "the feed's name (lowercase letters, digits, - "
        "and _): metric label, state file name", required=True),
    Key("url", STR, "http(s) URL of the feed", required=True),
    Key("type", enum(*FEED_TYPES), "safegate (signed documents) or a plain list format",
        default(FeedConfig, "type")),
    Key("public_key", STRINGS, "the publisher's Ed25519 public key file(s) (type safegate)"),
    Key("interval", SECONDS, "seconds between polls when the publisher does not hold requests",
        default(FeedConfig, "interval")),
    Key("category", STR, "where a plain list's names go (plain types only)"),
    Key("mandatory", BOOL, "a plain list's names are mandatory blocks (no allow lifts them)",
        default(FeedConfig, "mandatory")),
    Key("acks", BOOL, "acknowledge applied entries to the publisher (type safegate; default: "
        "on for it)"),
    Key("long_poll", number(0, MAX_LONG_POLL), "seconds the publisher may hold a request "
        "(0: off)", default(FeedConfig, "long_poll")),
    Key("max_age", SECONDS, "seconds after its signing time a safegate document counts as "
        "stale", default(FeedConfig, "max_age")),
    Key("by_serial", BOOL, "fetch the signed head and serial-addressed immutable documents "
        "(type safegate), so an HTTP cache in front of the publisher serves the fleet",
        default(FeedConfig, "by_serial")),
), nullable=False)
MAX_CHANGE = Shape("feed_guard.max_change", (
    Key("ratio", number(0, 1, exclusive_minimum=True), "an update changing more than this "
        "share of a feed's entries is held for confirmation",
        default(FeedGuardConfig, "max_change_ratio")),
    Key("entries", integer(), "... or more than this many entries",
        default(FeedGuardConfig, "max_change_entries")),
))
GUARD = Shape("feed_guard", (
    Key("never_block", STRINGS, "names no feed may block (publishers and upstreams are added)"),
    Key("max_change", MAX_CHANGE, "how big an update may be before it is held"),
), "defence against a wrong or hostile feed")


def parse_identity(doc: YDict) -> IdentityConfig:
    identity = expect_mapping(doc.get("gateway"), "gateway", doc, "gateway")
    IDENTITY.check(identity)
    report_stats = default(IdentityConfig, "report_stats")
    if "report_stats" in identity:
        report_stats = read_bool(identity["report_stats"], "gateway.report_stats", identity,
                                 "report_stats")
    return IdentityConfig(read_opt_str(identity, "id", "gateway.id", default(IdentityConfig, "id")),
                          read_opt_str(identity, "token", "gateway.token",
                                       default(IdentityConfig, "token")),
                          report_stats)


def with_enrollment(identity: IdentityConfig, state_dir: Path, doc: YDict) -> IdentityConfig:
    """No gateway.token written: the id and token `safegate feeds enroll` stored, if any."""
    if identity.token:
        return identity
    path = state_dir / ENROLLMENT_FILE
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return identity
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the enrollment: {exc}", str(path)) from None
    gid, token = (record.get("gateway"), record.get("token")) if isinstance(record, dict) \
        else (None, None)
    if not (isinstance(gid, str) and gid and isinstance(token, str) and token):
        raise ConfigError("not an enrollment record (gateway, token); enroll again with "
                          "`safegate feeds enroll`", str(path))
    if identity.id and identity.id != gid:
        raise error_at(f"gateway.id is {identity.id!r} but this gateway was enrolled as "
                       f"{gid!r} ({path}): remove gateway.id or enroll again", None,
                       doc.get("gateway"), "id")
    return IdentityConfig(gid, token, identity.report_stats)


def parse_feeds(doc: YDict, rel: Callable[[str], Path], identity: IdentityConfig,
                refs: FileRefs) -> tuple[FeedConfig, ...]:
    """The `feeds:` list; every mistake is reported at its file:line."""
    items = expect_list(doc.get("feeds", []), "feeds", doc, "feeds")
    out: list[FeedConfig] = []
    for i, raw in enumerate(items):
        item = expect_mapping(raw, "a feeds item", items, i)
        FEED.check(item)
        name = expect_str(item.get("name"), "feeds[].name", item, "name")
        if not _FEED_NAME.fullmatch(name):
            raise error_at(f"feed name {name!r}: use lowercase letters, digits, '-' and '_'",
                           None, item, "name")
        if any(f.name == name for f in out):
            raise error_at(f"feed name {name!r} is used twice", None, item, "name")
        out.append(_feed(name, item, items, i, rel, identity, refs))
    return tuple(out)


def _feed(name: str, item: YDict, items: Any, i: int, rel: Callable[[str], Path],
          identity: IdentityConfig, refs: FileRefs) -> FeedConfig:
    what = f"feed {name!r}"
    url = expect_str(item.get("url"), f"{what}: url", item, "url")
    if not http_url(url):
        raise error_at(f"{what}: url must be an http(s) URL, got {url!r}", None, item, "url")
    ftype = expect_str(item.get("type", default(FeedConfig, "type")), f"{what}: type", item,
                       "type")
    if ftype not in FEED_TYPES:
        raise error_at(f"{what}: type must be one of {', '.join(FEED_TYPES)}, got {ftype!r}",
                       None, item, "type")
    keys: list[Path] = []
    if "public_key" in item:
        if ftype != SIGNED:
            raise error_at(f"{what}: public_key is only for type safegate (plain lists are "
                           "not signed)", None, item, "public_key")
        key_items = expect_list(item["public_key"], f"{what}: public_key", item, "public_key")
        for k, p in enumerate(key_items):
            keys.append(rel(expect_str(p, f"{what}: public_key", key_items, k)))
            refs[public_key_ref(name, k)] = where(None, key_items, k)
    if ftype == SIGNED and not keys:
        raise error_at(f"{what}: a safegate feed needs public_key (its documents are "
                       "signed)", item, items, i)
    values: dict[str, Any] = {}
    if "category" in item:
        values["category"] = expect_str(item["category"], f"{what}: category", item, "category")
        if ftype == SIGNED:
            raise error_at(f"{what}: category is only for plain list feeds (a safegate feed "
                           "names categories per entry)", None, item, "category")
    elif ftype != SIGNED:
        raise error_at(f"{what}: a {ftype} feed needs category (where its names go)", item,
                       items, i)
    if "mandatory" in item:
        values["mandatory"] = read_bool(item["mandatory"], f"{what}: mandatory", item,
                                        "mandatory")
        if values["mandatory"] and ftype == SIGNED:
            raise error_at(f"{what}: mandatory is set per entry by a safegate feed", None, item,
                           "mandatory")
    acks = ftype == SIGNED
    if "acks" in item:
        acks = read_bool(item["acks"], f"{what}: acks", item, "acks")
    if acks and ftype != SIGNED:
        raise error_at(f"{what}: acks are only sent for safegate feeds", None, item, "acks")
    if acks and not (identity.id and identity.token):
        raise error_at(f"{what}: acks need gateway.id and gateway.token (or enroll with "
                       "`safegate feeds enroll CODE`, or set acks: false)", item, items, i)
    if "interval" in item:
        values["interval"] = read_seconds(item["interval"], f"{what}: interval", item, "interval")
    if "long_poll" in item:
        long_poll = item["long_poll"]
        if isinstance(long_poll, bool) or not isinstance(long_poll, int | float) \
                or not 0 <= long_poll <= MAX_LONG_POLL:
            raise error_at(f"{what}: long_poll must be 0 (off) to {MAX_LONG_POLL} seconds, got "
                           f"{long_poll!r}", None, item, "long_poll")
        values["long_poll"] = float(long_poll)
    if "max_age" in item:
        if ftype != SIGNED:
            raise error_at(f"{what}: max_age is only for type safegate (a plain list carries "
                           "no signed time)", None, item, "max_age")
        values["max_age"] = read_seconds(item["max_age"], f"{what}: max_age", item, "max_age")
    if "by_serial" in item:
        if ftype != SIGNED:
            raise error_at(f"{what}: by_serial is only for type safegate (serial-addressed "
                           "signed documents)", None, item, "by_serial")
        values["by_serial"] = read_bool(item["by_serial"], f"{what}: by_serial", item,
                                        "by_serial")
    return FeedConfig(name, url, ftype, tuple(keys), acks=acks, **values)


def public_key_ref(feed: str, index: int) -> str:
    """The FileRefs key of a feed's public_key entry."""
    return f"feeds.{feed}.public_key[{index}]"


def parse_feed_guard(doc: YDict, feeds: tuple[FeedConfig, ...],
                     upstreams: tuple[UpstreamSpec, ...]) -> FeedGuardConfig:
    """`feed_guard:`, plus the names a feed must never cut us off from (publishers, upstreams)."""
    guard = expect_mapping(doc.get("feed_guard"), "feed_guard", doc, "feed_guard")
    GUARD.check(guard)
    names: list[str] = []
    items = expect_list(guard.get("never_block", []), "feed_guard.never_block", guard,
                        "never_block")
    for i, item in enumerate(items):
        text = expect_str(item, "a feed_guard.never_block entry", items, i)
        try:
            names.append(normalize_name(text).decode("ascii"))
        except ValueError as exc:
            raise error_at(f"feed_guard.never_block: {text!r}: {exc}", item, items, i) from None
    hosts = [urlsplit(f.url).hostname or "" for f in feeds] + [u.host for u in upstreams]
    for host in hosts:
        try:
            ipaddress.ip_address(host)
            continue
        except ValueError:
            pass
        try:
            names.append(normalize_name(host).decode("ascii"))
        except ValueError:
            continue
    change = expect_mapping(guard.get("max_change"), "feed_guard.max_change", guard, "max_change")
    MAX_CHANGE.check(change)
    ratio = change.get("ratio", default(FeedGuardConfig, "max_change_ratio"))
    if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not 0 < ratio <= 1:
        raise error_at(f"feed_guard.max_change.ratio must be above 0 and at most 1, got "
                       f"{ratio!r}", None, change, "ratio")
    entries = read_int(change.get("entries", default(FeedGuardConfig, "max_change_entries")),
                       "feed_guard.max_change.entries", change, "entries", 0)
    return FeedGuardConfig(tuple(dict.fromkeys(names)), float(ratio), entries)
