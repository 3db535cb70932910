"""publisher.yaml: where the publisher listens, its database and key, who may ack."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from gateway.config.addresses import Address, parse_address
from gateway.config.limits import PublisherLimits
from gateway.config.yamlconf import (
    YDict,
    check_keys,
    error_at,
    expect_list,
    expect_mapping,
    expect_str,
    load_yaml,
)
from gateway.publisher.db import is_url, redact
from gateway.publisher.tierconfig import (
    ID_RULE,
    ProvinceConfig,
    UpstreamConfig,
    listed_id,
    parse_provinces,
    parse_upstream,
)
from gateway.publisher.xfrconfig import ZoneTransferConfig, parse_zone_transfer
from gateway.util.names import normalize_name

TOP_KEYS = ("listen", "database", "signing_key", "gateways", "admin_token", "never_block",
            "max_change", "diff_history", "overdue_after_hours", "tls", "heartbeat", "limits",
            "upstream", "provinces", "zone_transfer")
GATEWAY_KEYS = ("id", "token")
DATABASE_KEYS = ("url",)
MAX_CHANGE_KEYS = ("ratio", "entries")
TLS_KEYS = ("cert", "key")
DEFAULT_NEVER_BLOCK = ("gov.vn", "edu.vn")
MIN_TOKEN_LENGTH = 16
_GATEWAY_ID = ID_RULE           # the rule province ids follow too (tierconfig)
# Every served document is re-signed (fresh generated_at) once it is this old, so a gateway on
# an idle feed can tell a live publisher from a cache replaying an old answer. Gateways refresh
# at max_age / 2 (default 12 h): one hour keeps that far inside (docs/feeds-gateway.md).
DEFAULT_HEARTBEAT = 3600.0


@dataclass(frozen=True)
class PublisherConfig:
    path: Path
    listen: Address
    database: Path | str                      # a SQLite file, or a postgresql:// URL
    signing_key: Path
    gateways: dict[str, str]                  # gateway id -> token
    admin_token: str | None = None
    never_block: tuple[str, ...] = DEFAULT_NEVER_BLOCK
    max_change_ratio: float = 0.10
    max_change_entries: int = 1000
    diff_history: int = 1000
    overdue_after_hours: float = 24.0
    tls_cert: Path | None = None
    tls_key: Path | None = None
    heartbeat: float = DEFAULT_HEARTBEAT
    limits: PublisherLimits = field(default_factory=PublisherLimits)
    # The province tier (docs/national-layout.md): a province's ministry, a ministry's provinces.
    upstream: UpstreamConfig | None = None
    provinces: dict[str, ProvinceConfig] = field(default_factory=dict)
    zone_transfer: ZoneTransferConfig | None = None   # the RPZ zone over AXFR/IXFR (xfr.py)


def load_publisher_config(path: str | Path) -> PublisherConfig:
    """Read and validate publisher.yaml; paths in it are relative to the file."""
    path = Path(path)
    doc = expect_mapping(load_yaml(path), "publisher.yaml")
    if not doc.path:
        doc.path = str(path)
    check_keys(doc, TOP_KEYS, "publisher.yaml")
    base = path.resolve().parent

    def rel(key: str, parent: YDict, what: str) -> Path:
        return Path(os.path.normpath(base / expect_str(parent.get(key), what, parent, key)))

    for key in ("listen", "database", "signing_key"):
        if key not in doc:
            raise error_at(f"publisher.yaml needs {key!r}", doc)
    try:
        listen = parse_address(expect_str(doc["listen"], "listen", doc, "listen"), 8443)
    except ValueError as exc:
        raise error_at(f"listen: {exc}", None, doc, "listen") from None
    admin = doc.get("admin_token")
    if admin is not None:
        admin = _token(admin, "admin_token", doc, "admin_token")
    tls_cert = tls_key = None
    if "tls" in doc:
        tls = expect_mapping(doc["tls"], "tls", doc, "tls")
        check_keys(tls, TLS_KEYS, "tls")
        for key in TLS_KEYS:
            if key not in tls:
                raise error_at(f"tls needs {key!r}", tls, doc, "tls")
        tls_cert, tls_key = rel("cert", tls, "tls.cert"), rel("key", tls, "tls.key")
    ratio, entries = 0.10, 1000
    if "max_change" in doc:
        mc = expect_mapping(doc["max_change"], "max_change", doc, "max_change")
        check_keys(mc, MAX_CHANGE_KEYS, "max_change")
        ratio = _number(mc.get("ratio", ratio), "max_change.ratio", mc, "ratio", 0.0, 1.0)
        entries = int(_number(mc.get("entries", entries), "max_change.entries", mc, "entries",
                              0, None, integer=True))
    gateways = _gateways(doc, admin)
    database = _database(doc, rel)
    return PublisherConfig(
        path=path,
        listen=listen,
        database=database,
        signing_key=rel("signing_key", doc, "signing_key"),
        gateways=gateways,
        admin_token=admin,
        never_block=_never_block(doc),
        max_change_ratio=ratio,
        max_change_entries=entries,
        diff_history=int(_number(doc.get("diff_history", 1000), "diff_history", doc,
                                 "diff_history", 1, None, integer=True)),
        overdue_after_hours=_number(doc.get("overdue_after_hours", 24), "overdue_after_hours",
                                    doc, "overdue_after_hours", 0.0, None),
        tls_cert=tls_cert,
        tls_key=tls_key,
        heartbeat=_number(doc.get("heartbeat", DEFAULT_HEARTBEAT), "heartbeat", doc,
                          "heartbeat", 1.0, None),
        limits=_limits(doc),
        upstream=parse_upstream(doc, base, database, _token),
        provinces=parse_provinces(doc, _token, {*gateways.values(), *([admin] if admin else [])}),
        zone_transfer=parse_zone_transfer(doc, base),
    )


def _database(doc: YDict, rel: Any) -> Path | str:
    """`database: FILE` (SQLite, relative to publisher.yaml), `database: postgresql://...` or
    `database: {url: postgresql://...}` (docs/publisher-ha.md)."""
    raw = doc["database"]
    parent, key = doc, "database"
    if isinstance(raw, dict):
        section = expect_mapping(raw, "database", doc, "database")
        check_keys(section, DATABASE_KEYS, "database")
        if "url" not in section:
            raise error_at("database needs 'url' (postgresql://USER@HOST:PORT/DB)", section,
                           doc, "database")
        parent, key = section, "url"
        url = expect_str(section["url"], "database.url", section, "url")
        if not is_url(url):
            raise error_at(f"database.url must start with postgresql://, got {redact(url)!r}",
                           None, section, "url")
        return url
    text = expect_str(raw, "database", parent, key)
    if is_url(text):
        return text
    if "://" in text:
        raise error_at(f"database: only postgresql:// URLs (or a SQLite file name), got "
                       f"{redact(text)!r}", None, parent, key)
    path: Path = rel("database", doc, "database")
    return path


def _limits(doc: YDict) -> PublisherLimits:
    """`limits:` keys: the fields of gateway.config.limits.PublisherLimits (positive integers)."""
    if "limits" not in doc:
        return PublisherLimits()
    section = expect_mapping(doc["limits"], "limits", doc, "limits")
    names = [f.name for f in fields(PublisherLimits)]
    check_keys(section, names, "limits")
    return replace(PublisherLimits(), **{
        name: int(_number(section[name], f"limits.{name}", section, name, 1, None,
                          integer=True))
        for name in names if name in section})


def _gateways(doc: YDict, admin: str | None) -> dict[str, str]:
    items = expect_list(doc.get("gateways", []), "gateways", doc, "gateways")
    out: dict[str, str] = {}
    seen_tokens: set[str] = {admin} if admin else set()
    for i, item in enumerate(items):
        gw = expect_mapping(item, f"gateways[{i}]", items, i)
        check_keys(gw, GATEWAY_KEYS, "a gateway")
        gid = listed_id(gw, "gateway", out)
        token = _token(gw.get("token"), f"token of gateway {gid!r}", gw, "token")
        if token in seen_tokens:
            raise error_at(f"token of gateway {gid!r} is already used (by another gateway or "
                           "admin_token): every gateway needs its own", None, gw, "token")
        seen_tokens.add(token)
        out[gid] = token
    return out


def valid_gateway_id(gid: str) -> bool:
    """The rule for gateway ids, in publisher.yaml and for enrolled gateways alike."""
    return _GATEWAY_ID.fullmatch(gid) is not None


def _token(value: Any, what: str, parent: YDict, key: str) -> str:
    token = expect_str(value, what, parent, key)
    if len(token) < MIN_TOKEN_LENGTH or any(c.isspace() for c in token):
        raise error_at(f"{what} must be at least {MIN_TOKEN_LENGTH} characters without spaces "
                       "(generate one with `openssl rand -hex 24`)", None, parent, key)
    return token


def _never_block(doc: YDict) -> tuple[str, ...]:
    if "never_block" not in doc:
        return DEFAULT_NEVER_BLOCK
    items = expect_list(doc["never_block"], "never_block", doc, "never_block")
    out: list[str] = []
    for i, name in enumerate(items):
        try:
            out.append(normalize_name(expect_str(name, "a never_block name", items, i))
                       .decode("ascii"))
        except ValueError as exc:
            raise error_at(f"never_block: {name!r}: {exc}", None, items, i) from None
    return tuple(out)


def _number(value: Any, what: str, parent: YDict, key: str, low: float,
            high: float | None, integer: bool = False) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if ok and integer and not isinstance(value, int):
        ok = False
    if not ok or value < low or (high is not None and value > high):
        kind = "an integer" if integer else "a number"
        bounds = f">= {low}" if high is None else f"between {low} and {high}"
        raise error_at(f"{what} must be {kind} {bounds}, got {value!r}", None, parent, key)
    return float(value)

