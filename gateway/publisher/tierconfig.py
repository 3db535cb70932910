"""publisher.yaml for the province tier: `upstream:` (a province's ministry) and `provinces:`
(the ministry's provinces). Layout and flows: docs/national-layout.md."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Container
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from gateway.config.yamlconf import (
    YDict,
    check_keys,
    error_at,
    expect_list,
    expect_mapping,
    expect_str,
)

UPSTREAM_KEYS = ("url", "public_key", "token", "province", "refresh", "state_dir")
PROVINCE_KEYS = ("id", "name", "token")
# Gateway and province ids are metric label values and ack keys, and a province's prefixes its
# schools' gateway ids at the ministry ("ha-noi/thpt-1"): short and tame, never containing "/".
ID_RULE = re.compile(r"[a-z0-9][a-z0-9_.-]{0,62}")
DEFAULT_REFRESH = 1800.0      # a fresh national snapshot at least this often (heartbeat 3600)


@dataclass(frozen=True)
class UpstreamConfig:
    """A province publisher's ministry: the national feed it mirrors and where acks go."""

    url: str                      # the ministry's /v1/feed
    public_keys: tuple[Path, ...]
    token: str                    # the ministry's `provinces[].token` for this province
    province: str
    state_dir: Path               # the mirrored documents (default: next to the database)
    refresh: float = DEFAULT_REFRESH


@dataclass(frozen=True)
class ProvinceConfig:
    id: str
    name: str
    token: str


def parse_upstream(doc: YDict, base: Path, database: Path | str,
                   token: Callable[[Any, str, YDict, str], str]) -> UpstreamConfig | None:
    if "upstream" not in doc:
        return None
    up = expect_mapping(doc["upstream"], "upstream", doc, "upstream")
    check_keys(up, UPSTREAM_KEYS, "upstream")
    for key in ("url", "public_key", "token", "province"):
        if key not in up:
            raise error_at(f"upstream needs {key!r}", up, doc, "upstream")
    url = expect_str(up["url"], "upstream.url", up, "url")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise error_at(f"upstream.url must be an http(s) URL (the ministry's /v1/feed), got "
                       f"{url!r}", None, up, "url")
    raw_keys = up["public_key"]
    items = [raw_keys] if isinstance(raw_keys, str) else expect_list(
        raw_keys, "upstream.public_key", up, "public_key")
    keys = tuple(Path(os.path.normpath(base / expect_str(k, "upstream.public_key", up,
                                                         "public_key"))) for k in items)
    if not keys:
        raise error_at("upstream.public_key needs the ministry's public key", None, up,
                       "public_key")
    province = expect_str(up["province"], "upstream.province", up, "province")
    if not ID_RULE.fullmatch(province):
        raise error_at(f"upstream.province {province!r} must be the id the ministry lists "
                       "(lowercase letters, digits, '.', '_' or '-', at most 63)", None, up,
                       "province")
    refresh = up.get("refresh", DEFAULT_REFRESH)
    if isinstance(refresh, bool) or not isinstance(refresh, int | float) or refresh < 1:
        raise error_at(f"upstream.refresh must be a number of seconds >= 1, got {refresh!r}",
                       None, up, "refresh")
    state = (Path(os.path.normpath(base / expect_str(up["state_dir"], "upstream.state_dir",
                                                     up, "state_dir")))
             if "state_dir" in up
             else (database.parent if isinstance(database, Path) else base) / "national-mirror")
    return UpstreamConfig(url, keys, token(up["token"], "upstream.token", up, "token"),
                          province, state, float(refresh))


def listed_id(item: YDict, kind: str, seen: Container[str]) -> str:
    """The `id` of one item of `gateways:` or `provinces:`: by ID_RULE, and not in `seen`."""
    value = expect_str(item.get("id"), f"{kind} id", item, "id")
    if not ID_RULE.fullmatch(value):
        raise error_at(f"{kind} id {value!r} must be lowercase letters, digits, '.', '_' "
                       "or '-' (at most 63)", value, item, "id")
    if value in seen:
        raise error_at(f"{kind} id {value!r} is listed twice", value, item, "id")
    return value


def parse_provinces(doc: YDict, token: Callable[[Any, str, YDict, str], str],
                    taken: set[str]) -> dict[str, ProvinceConfig]:
    """`provinces:` at the ministry; `taken` holds the gateway and admin tokens."""
    # Not bounded here: the list is hand-written (63 in Vietnam), not grown by any client.
    items = expect_list(doc.get("provinces", []), "provinces", doc, "provinces")
    out: dict[str, ProvinceConfig] = {}
    for i, item in enumerate(items):
        p = expect_mapping(item, f"provinces[{i}]", items, i)
        check_keys(p, PROVINCE_KEYS, "a province")
        pid = listed_id(p, "province", out)
        name = expect_str(p.get("name", pid), "province name", p, "name")
        secret = token(p.get("token"), f"token of province {pid!r}", p, "token")
        if secret in taken:
            raise error_at(f"token of province {pid!r} is already used (by a gateway, another "
                           "province or admin_token): every province needs its own", None, p,
                           "token")
        taken.add(secret)
        out[pid] = ProvinceConfig(pid, name, secret)
    return out
