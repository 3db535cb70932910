"""ISP subscribers: address prefixes -> a profile (tier, overrides, filtered) from CSV or YAML.

An ISP has millions of subscribers and a handful of distinct settings, so each distinct
(tier, allow, deny, filtered) becomes one shared profile and the prefixes only store its index
(netindex.Tables). The file is parsed once per change, off the event loop; policy reloads and
schedule edges reuse the parsed tables.

CSV (the scalable form), comma-separated, `#` comments, an optional header naming the columns:

    prefix,tier,filtered,allow,deny
    2001:db8:1200::/56,thcs
    203.0.113.7,tieu-hoc,yes,,games.example social.example

`filtered: yes` means the subscriber chose this filtering (parental control they subscribed to):
blocks carry EDE 17 "Filtered" (RFC 8914) instead of 15 "Blocked". `allow`/`deny` are names
separated by spaces or `;`. YAML: a list of mappings with the same keys (allow/deny as lists).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from gateway.config.limits import FileLimits
from gateway.config.yamlconf import check_keys, error_at, expect_list, expect_mapping, load_yaml
from gateway.errors import ConfigError, ConfigErrors
from gateway.policy.netindex import Tables, parse_prefix
from gateway.util.names import normalize_name
from gateway.util.readfile import open_regular, too_large

COLUMNS = ("prefix", "tier", "filtered", "allow", "deny")
_TRUE = {"yes", "true", "1", "y", "on"}
_FALSE = {"no", "false", "0", "n", "off", ""}
_NAMES_SPLIT = re.compile(r"[\s;]+")
SUBSCRIBERS_BYTES_KEY = "limits.files.subscribers_bytes"
MAX_ERRORS = 20  # a broken export reports its first errors, not a million lines


@dataclass(frozen=True)
class SubscriberProfile:
    """What a subscriber gets; equal settings share one profile."""

    tier: str
    filtered: bool = False
    allow: tuple[bytes, ...] = ()
    deny: tuple[bytes, ...] = ()


@dataclass
class Subscribers:
    """A parsed subscribers file: prefix tables whose values index `profiles`."""

    path: Path
    tables: Tables
    profiles: list[SubscriberProfile]
    first_line: list[int]          # per profile: the first line using it (for errors)
    uses: list[int]                # per profile: how many prefixes use it
    count: int = 0
    fingerprint: tuple[int, int, int] = (0, 0, 0)
    by_settings: dict[SubscriberProfile, int] = field(default_factory=dict)

    def check_tiers(self, tiers: Iterable[str]) -> None:
        """Every profile's tier exists in the policies; errors name the first line using it."""
        known = set(tiers)
        errors = [ConfigError(f"tier {p.tier!r} is not defined in the policies (used by "
                              f"{self.uses[i]} subscriber prefixes)", str(self.path),
                              self.first_line[i])
                  for i, p in enumerate(self.profiles) if p.tier not in known]
        if errors:
            raise ConfigErrors(errors)


def file_fingerprint(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return st.st_mtime_ns, st.st_size, st.st_ino


def load_subscribers(path: Path, limits: FileLimits | None = None) -> Subscribers:
    """Parse a subscribers file (.csv, or .yaml/.yml); all problems raise ConfigErrors.

    The YAML form is read whole (limits.files.config_bytes); the CSV form streams
    (limits.files.subscribers_bytes). Neither may be a device or a FIFO.
    """
    limits = limits or FileLimits()
    subs = Subscribers(path, {}, [], [], [], fingerprint=file_fingerprint(path))
    errors: list[ConfigError] = []
    try:
        if path.suffix in (".yaml", ".yml"):
            _load_yaml(subs, errors, limits.config_bytes)
        else:
            _load_csv(subs, errors, limits.subscribers_bytes)
    except ConfigError as exc:
        errors.append(exc)
    if errors:
        raise ConfigErrors(errors[:MAX_ERRORS])
    return subs


def _load_csv(subs: Subscribers, errors: list[ConfigError], max_bytes: int) -> None:
    """The hot loop of a million-line load: a line's settings text (all after the prefix) is
    looked up as written, so only the first line of each distinct setting is normalised."""
    path = subs.path
    columns: tuple[str, ...] = COLUMNS
    slots: dict[str, int] = {}
    seen_data = False
    with open_regular(path, max_bytes, SUBSCRIBERS_BYTES_KEY) as f:
        for line, raw in enumerate(_text_lines(f, max_bytes, path), 1):
            text = raw.strip()
            if not text or text[0] == "#":
                continue
            if not seen_data:
                seen_data = True
                if text[:6].lower() == "prefix":
                    columns = _header(text, path, line)
                    continue
            prefix, _, settings = text.partition(",")
            try:
                slot = slots.get(settings)
                if slot is None:
                    cells = [c.strip() for c in settings.split(",")]
                    if len(cells) > len(columns) - 1:
                        raise ValueError(f"more columns than the header names "
                                         f"({', '.join(columns)})")
                    row = dict(zip(columns[1:], cells, strict=False))
                    slot = slots[settings] = _slot(subs, line, prefix, row)
                _insert(subs, prefix, slot)
            except ValueError as exc:
                errors.append(ConfigError(str(exc), str(path), line))
                if len(errors) >= MAX_ERRORS:
                    return


def _text_lines(f: BinaryIO, max_bytes: int, path: Path) -> Iterator[str]:
    """The file's lines as text; a line that is not UTF-8, or a file grown past `max_bytes`
    since it was opened, is an error naming the file (and the line)."""
    total = 0
    for line, data in enumerate(f, 1):
        total += len(data)
        if total > max_bytes:
            raise ConfigError(too_large(max_bytes, SUBSCRIBERS_BYTES_KEY), str(path))
        try:
            yield data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError(f"not UTF-8 text ({exc.reason})", str(path), line) from None


def _header(text: str, path: Path, line: int) -> tuple[str, ...]:
    cells = tuple(c.strip().lower() for c in text.split(","))
    unknown = [c for c in cells if c not in COLUMNS]
    if unknown or len(set(cells)) != len(cells) or cells[0] != "prefix":
        raise ConfigError(f"header: unknown or repeated column(s) "
                          f"{', '.join(unknown) or 'repeated'} (columns: "
                          f"{', '.join(COLUMNS)}, prefix first)", str(path), line)
    return cells


def _insert(subs: Subscribers, prefix: str, slot: int) -> None:
    """Put one prefix in its table; listed twice with other settings is an error."""
    version, plen, key = parse_prefix(prefix)
    table = subs.tables.get((version, plen))
    if table is None:
        table = subs.tables[(version, plen)] = {}
    prev = table.get(key)
    if prev is None:
        table[key] = slot
        subs.uses[slot] += 1
        subs.count += 1
    elif prev != slot:
        first = find_line(subs.path, prefix.strip())
        raise ValueError(f"{prefix.strip()}: this prefix is already listed at line {first} "
                         "with different settings")


def _load_yaml(subs: Subscribers, errors: list[ConfigError], max_bytes: int) -> None:
    """The YAML form: for small files (a school's or a test's), not for millions."""
    by_settings: dict[Any, int] = {}
    for line, row in _yaml_rows(subs.path, max_bytes):
        try:
            prefix = row.get("prefix")
            if not isinstance(prefix, str) or not prefix:
                raise ValueError("missing prefix")
            parse_prefix(prefix)   # a bad prefix is reported before a bad setting
            written = tuple(_hashable(row.get(c, "")) for c in COLUMNS[1:])
            slot = by_settings.get(written)
            if slot is None:
                slot = by_settings[written] = _slot(subs, line, prefix, row)
            _insert(subs, prefix, slot)
        except ValueError as exc:
            errors.append(ConfigError(str(exc), str(subs.path), line))


def _hashable(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _slot(subs: Subscribers, line: int, prefix: str, row: dict[str, Any]) -> int:
    """The profile slot for settings seen for the first time (equal settings share one)."""
    tier = row.get("tier")
    if not isinstance(tier, str) or not tier.strip():
        raise ValueError(f"{prefix.strip()}: missing tier")
    settings = SubscriberProfile(tier.strip(), _flag(row.get("filtered", "")),
                                 _names(row.get("allow", "")), _names(row.get("deny", "")))
    slot = subs.by_settings.get(settings)
    if slot is None:
        slot = subs.by_settings[settings] = len(subs.profiles)
        subs.profiles.append(settings)
        subs.first_line.append(line)
        subs.uses.append(0)
    return slot


def _flag(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"filtered must be yes or no, got {value!r}")


def _names(value: Any) -> tuple[bytes, ...]:
    items = value if isinstance(value, list) else _NAMES_SPLIT.split(str(value or "").strip())
    out = []
    for item in items:
        if not str(item).strip():
            continue
        out.append(normalize_name(str(item)))   # ValueError names the bad one
    return tuple(sorted(set(out)))


def _yaml_rows(path: Path, max_bytes: int = FileLimits.config_bytes
               ) -> Iterator[tuple[int, dict[str, Any]]]:
    doc = load_yaml(path, max_bytes)
    if doc is None:
        return   # an empty file lists no subscriber, as an empty CSV does
    items = expect_list(doc, "a subscribers file (a list of {prefix, tier, ...})")
    for i, raw in enumerate(items):
        item = expect_mapping(raw, "a subscribers item", items, i)
        check_keys(item, COLUMNS, "a subscribers item")
        lines = getattr(items, "item_lines", None) or []
        line = lines[i] if i < len(lines) else getattr(item, "line", 0)
        for key in ("allow", "deny"):
            if key in item and not isinstance(item[key], list | str):
                raise error_at(f"{key} must be a list of names", None, item, key)
        yield line, dict(item)


def find_line(path: Path, prefix: str) -> int:
    """The line of `prefix` in a subscribers file (explain, duplicates); 0 if not found. A
    linear scan: nobody keeps per-subscriber line numbers in memory."""
    want = parse_prefix(prefix)
    if path.suffix in (".yaml", ".yml"):
        pairs: Iterable[tuple[int, str]] = ((line, str(row.get("prefix", "")))
                                            for line, row in _yaml_rows(path))
    else:
        with path.open(encoding="utf-8") as f:
            pairs = [(line, raw.split(",", 1)[0]) for line, raw in enumerate(f, 1)]
    for line, text in pairs:
        try:
            if parse_prefix(text) == want:
                return line
        except ValueError:
            continue
    return 0
