"""Policy files: tiers (what each age group may not see) and networks (who is in which tier)."""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from gateway.config.limits import FileLimits
from gateway.config.spec import (
    BOOL,
    STR,
    STRINGS,
    TEXT,
    Key,
    Shape,
    Table,
    enum,
    integer,
    list_of,
    one_of,
    pattern,
)
from gateway.config.yamlconf import (
    YDict,
    YList,
    check_keys,
    error_at,
    expect_list,
    expect_mapping,
    expect_str,
    load_yaml,
)
from gateway.errors import ConfigError, ConfigErrors
from gateway.policy.localpolicy import LOCAL, LocalRule, apply_local, parse_local
from gateway.policy.quotas import QUOTA, Quota, parse_quotas
from gateway.policy.schedules import HOLIDAY, WINDOW, Holiday, Window, parse_holidays, parse_windows
from gateway.util.names import normalize_name

T = TypeVar("T")

ANSWERS = ("blockpage", "nxdomain", "nodata", "null")
SAFESEARCH_MODES = ("off", "moderate", "strict")
QUERY_LOG_HOURS = (24, 168)   # default and maximum retention of a network's query log
QUERY_LOG = Shape("query_log", (
    Key("retention_hours", integer(1, QUERY_LOG_HOURS[1]), "hours a logged query is kept "
        "(purged on schedule)", QUERY_LOG_HOURS[0]),
), "this network's query log (off unless written; clients only as a daily-salted hash)")
_TOKEN = re.compile(r"[A-Za-z0-9_-]{6,64}")
_NAMES_DOC = "names (and their subdomains)"
TIER = Shape("tier", (
    Key("block", STRINGS, "categories from lists.yaml this tier blocks", []),
    # YAML reads a bare `null` as nothing: it still means the `null` answer.
    Key("answer", one_of(enum(*ANSWERS), {"type": "null"}), "how a blocked name is answered",
        ANSWERS[0]),
    Key("description", TEXT, "free text"),
    Key("allow", STRINGS, f"{_NAMES_DOC} this tier may see (never a mandatory entry)"),
    Key("deny", STRINGS, f"{_NAMES_DOC} this tier may not see"),
    Key("default", enum("allow", "block"), "block: allowlist-only (what no allow names is "
        "blocked)", "allow"),
    Key("schedules", list_of(WINDOW), "time windows that block more categories"),
    # YAML 1.1 reads a bare `off` as false: it still means off.
    Key("safesearch", enum(*SAFESEARCH_MODES, False), "SafeSearch / restricted mode of search "
        "engines", SAFESEARCH_MODES[0]),
    Key("bypass_protection", BOOL, "answer the DoH canary, iCloud Private Relay and DDR names "
        "and strip ECH", True),
    Key("quotas", list_of(QUOTA), "daily game-time budgets per client address "
        "(docs/quotas.md)"),
), nullable=False)
NETWORK = Shape("a network", (
    Key("name", STR, "the network's name (metrics label)", required=True),
    Key("cidrs", STRINGS, "its prefixes; the longest matching prefix decides", required=True),
    Key("tier", STR, "a tier defined in the policy files", required=True),
    Key("allow", STRINGS, f"{_NAMES_DOC} added to the tier's allow list here"),
    Key("deny", STRINGS, f"{_NAMES_DOC} added to the tier's deny list here"),
    Key("description", TEXT, "free text"),
    Key("quotas", list_of(QUOTA), "budgets replacing the tier's for the categories they name"),
    Key("query_log", QUERY_LOG, QUERY_LOG.doc),
), nullable=False)
TOKEN = Shape("a token", (
    Key("token", pattern(f"^{_TOKEN.pattern}$"), "the DoH path token (/dns-query/TOKEN); "
        "treat it like a password", required=True),
    Key("tier", STR, "the tier its queries get", required=True),
    Key("description", TEXT, "free text"),
), nullable=False)
# A whole policy file: `safegate schema policy` is this.
POLICY_FILE = Shape("a policy file", (
    Key("tiers", Table(TIER, named=True), "tiers by name: what each age group may not see"),
    Key("networks", list_of(NETWORK), "who is in which tier, by address"),
    Key("tokens", list_of(TOKEN), "DoH path tokens and their tiers"),
    Key("holidays", list_of(HOLIDAY), "dates that suspend school_days_only windows"),
    Key("local", LOCAL, LOCAL.doc),
), nullable=False)

Network4or6 = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Tier:
    name: str
    block: tuple[str, ...]
    answer: str
    allow: tuple[bytes, ...] = ()
    deny: tuple[bytes, ...] = ()
    default_block: bool = False   # allowlist-only (e.g. mầm non): what no allow names is blocked
    description: str = ""
    # time windows adding categories (gateway/policy/schedules.py)
    schedules: tuple[Window, ...] = ()
    safesearch: str = "off"              # off | moderate | strict (gateway/policy/safesearch.py)
    bypass_protection: bool = True       # DoH canary, iCloud Private Relay, DDR, ECH (decide.py)
    quotas: tuple[Quota, ...] = ()       # daily game-time budgets (gateway/policy/quotas.py)
    path: str = ""
    line: int = 0


@dataclass(frozen=True)
class Network:
    name: str
    cidrs: tuple[Network4or6, ...]
    tier: str
    allow: tuple[bytes, ...] = ()
    deny: tuple[bytes, ...] = ()
    description: str = ""
    query_log_hours: int = 0      # query_log: {retention_hours}: 0 = no query log (default)
    path: str = ""
    line: int = 0
    quotas: tuple[Quota, ...] = ()       # replace the tier's for the categories they name


@dataclass(frozen=True)
class Token:
    """A DoH path token (/dns-query/{token}): whoever holds it gets `tier`, wherever they are."""

    token: str
    tier: str
    description: str = ""
    path: str = ""
    line: int = 0


@dataclass
class Policy:
    tiers: dict[str, Tier] = field(default_factory=dict)
    networks: list[Network] = field(default_factory=list)
    tokens: list[Token] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    holidays: list[Holiday] = field(default_factory=list)  # suspend school_days_only windows


def policy_files(entries: Iterable[str | Path]) -> list[Path]:
    """The YAML files named by `policies:` (files, or directories of *.yaml / *.yml)."""
    out: list[Path] = []
    for entry in entries:
        p = Path(entry)
        if p.is_dir():
            out.extend(sorted(x for x in p.iterdir()
                              if x.suffix in (".yaml", ".yml") and not x.name.startswith(".")))
        else:
            out.append(p)
    # A file named both alone and through its directory is one file, loaded once.
    return list(dict.fromkeys(out))


def load_policy(entries: Iterable[str | Path], categories: Iterable[str],
                max_bytes: int = FileLimits.config_bytes) -> Policy:
    """Load and cross-check every policy file; all errors found are raised together.

    `max_bytes` bounds each file (limits.files.config_bytes).
    """
    known = set(categories)
    policy = Policy()
    errors: list[ConfigError] = []
    files = policy_files(entries)
    policy.files = files
    raw_networks: list[tuple[YList, Any, int]] = []
    raw_tokens: list[tuple[YList, Any, int]] = []
    broken: set[str] = set()  # tiers with errors: networks using them are not errors too
    local: list[LocalRule] = []   # `local:` allow/deny (policy/localpolicy.py), applied last
    for path in files:
        try:
            doc = load_yaml(path, max_bytes)
            if doc is None:
                # A truncated file would otherwise reload "successfully" into a policy that
                # refuses every client of the networks it used to define.
                raise ConfigError("policy file is empty", str(path))
            doc = expect_mapping(doc, "a policy file")
            POLICY_FILE.check(doc)
        except ConfigError as exc:
            errors.append(exc)
            continue
        if doc.path == "":
            doc.path = str(path)
        if "local" in doc:
            try:
                local += parse_local(doc["local"], doc, _names)
            except ConfigError as exc:
                errors.append(exc)
        try:
            policy.holidays += parse_holidays(doc.get("holidays", []), doc, "holidays")
        except ConfigError as exc:
            errors.append(exc)
        tiers = expect_mapping(doc.get("tiers"), "tiers", doc, "tiers")
        for name, body in tiers.items():
            try:
                tier = _tier(name, body, tiers, known)
                if name in policy.tiers:
                    first = policy.tiers[name]
                    raise error_at(f"tier {name!r} is already defined at {first.path}:{first.line}",
                                   None, tiers, name)
                policy.tiers[name] = tier
            except ConfigError as exc:
                errors.append(exc)
                broken.add(name)
        try:
            nets = expect_list(doc.get("networks", []), "networks", doc, "networks")
        except ConfigError as exc:
            errors.append(exc)
            continue
        for i, body in enumerate(nets):
            raw_networks.append((nets, body, i))
        try:
            toks = expect_list(doc.get("tokens", []), "tokens", doc, "tokens")
        except ConfigError as exc:
            errors.append(exc)
            continue
        raw_tokens.extend((toks, body, i) for i, body in enumerate(toks))
    seen_cidrs: dict[Network4or6, Network] = {}
    for parent, body, i in raw_networks:
        net = _tier_user(functools.partial(_network, known=known), body, parent, i,
                         policy.tiers, broken, errors)
        if net is None:
            continue
        for cidr in net.cidrs:
            if cidr in seen_cidrs:
                other = seen_cidrs[cidr]
                errors.append(ConfigError(
                    f"{cidr} is already used by network {other.name!r} ({other.path}:{other.line})",
                    net.path, net.line))
            seen_cidrs[cidr] = net
        policy.networks.append(net)
    seen_tokens: dict[str, Token] = {}
    for parent, body, i in raw_tokens:
        token = _tier_user(_token, body, parent, i, policy.tiers, broken, errors)
        if token is None:
            continue
        if token.token in seen_tokens:
            used = seen_tokens[token.token]
            errors.append(ConfigError(f"token is already used at {used.path}:{used.line}",
                                      token.path, token.line))
            continue
        seen_tokens[token.token] = token
        policy.tokens.append(token)
    errors += apply_local(policy.tiers, policy.networks, local)
    if errors:
        raise ConfigErrors(errors)
    return policy


def _tier_user(parse: Callable[[Any, Any, int, dict[str, Tier]], T], body: Any, parent: Any,
               index: int, tiers: dict[str, Tier], broken: set[str], errors: list[ConfigError]
               ) -> T | None:
    """Parse a network or token; its error is recorded unless it only repeats a broken tier's."""
    try:
        return parse(body, parent, index, tiers)
    except ConfigError as exc:
        if not (isinstance(body, dict) and body.get("tier") in broken):
            errors.append(exc)
        return None


def _names(value: Any, what: str, parent: Any, key: str) -> tuple[bytes, ...]:
    items = expect_list(value, what, parent, key)
    out = []
    for i, item in enumerate(items):
        text = expect_str(item, f"an entry of {what}", items, i)
        try:
            out.append(normalize_name(text.removeprefix("*.")))
        except ValueError as exc:
            raise error_at(f"{what}: {text!r} {exc}", item, items, i) from None
    return tuple(out)


def _tier(name: str, body: Any, parent: YDict, known: set[str]) -> Tier:
    body = expect_mapping(body, f"tier {name!r}", parent, name)
    check_keys(body, TIER.names(), f"tier {name!r}")
    block = expect_list(body.get("block", []), "block", body, "block")
    cats = []
    for i, cat in enumerate(block):
        cat = expect_str(cat, "a category", block, i)
        if cat not in known:
            raise error_at(
                f"tier {name!r} blocks unknown category {cat!r} "
                f"(categories in the blocklists: {', '.join(sorted(known)) or 'none'})",
                cat, block, i)
        cats.append(str(cat))
    raw_answer = body.get("answer", "blockpage")
    # README lists `null` (answer 0.0.0.0 / ::) as a mode; bare YAML `null` reads as None.
    answer = "null" if raw_answer is None else str(raw_answer)
    if answer not in ANSWERS:
        raise error_at(f"answer must be one of {', '.join(ANSWERS)}, got {answer!r}",
                       None, body, "answer")
    default = str(body.get("default", "allow"))
    if default not in ("allow", "block"):
        raise error_at(f"default must be allow or block, got {default!r}", None, body, "default")
    raw = body.get("safesearch", "off")
    safesearch = "off" if raw is False else str(raw)  # YAML 1.1 reads a bare `off` as false
    if safesearch not in SAFESEARCH_MODES:
        raise error_at(f"safesearch must be one of {', '.join(SAFESEARCH_MODES)}, got "
                       f"{safesearch!r}", None, body, "safesearch")
    bypass = body.get("bypass_protection", True)
    if not isinstance(bypass, bool):
        raise error_at(f"bypass_protection must be true or false, got {bypass!r}", None, body,
                       "bypass_protection")
    return Tier(
        name=name, block=tuple(cats), answer=answer,
        allow=_names(body.get("allow", []), "allow", body, "allow"),
        deny=_names(body.get("deny", []), "deny", body, "deny"),
        default_block=default == "block",
        description=str(body.get("description", "")),
        schedules=parse_windows(body.get("schedules", []), "schedules", body, "schedules", known),
        safesearch=safesearch, bypass_protection=bypass,
        quotas=parse_quotas(body.get("quotas", []), body, "quotas", known, f"tier/{name}"),
        path=parent.path, line=parent.key_lines.get(name, 0),
    )


def _network(body: Any, parent: Any, index: int, tiers: dict[str, Tier],
             known: frozenset[str] | set[str] = frozenset()) -> Network:
    body = expect_mapping(body, "a network", parent, index)
    NETWORK.check(body)
    NETWORK.require(body, parent, index)
    name = expect_str(body["name"], "name", body, "name")
    tier = expect_str(body["tier"], "tier", body, "tier")
    if tier not in tiers:
        raise error_at(f"network {name!r} uses unknown tier {tier!r} "
                       f"(defined tiers: {', '.join(sorted(tiers)) or 'none'})", tier, body, "tier")
    raw = expect_list(body["cidrs"], "cidrs", body, "cidrs")
    cidrs: list[Network4or6] = []
    for i, item in enumerate(raw):
        text = expect_str(str(item), "a CIDR", raw, i)
        try:
            cidrs.append(ipaddress.ip_network(text.strip(), strict=True))
        except ValueError as exc:
            raise error_at(f"bad CIDR {text!r}: {exc}", item, raw, i) from None
    if not cidrs:
        raise error_at(f"network {name!r} has no cidrs", None, body, "cidrs")
    return Network(
        name=name, cidrs=tuple(cidrs), tier=tier,
        allow=_names(body.get("allow", []), "allow", body, "allow"),
        deny=_names(body.get("deny", []), "deny", body, "deny"),
        description=str(body.get("description", "")),
        query_log_hours=_query_log(body),
        path=body.path, line=body.line,
        quotas=parse_quotas(body.get("quotas", []), body, "quotas", set(known),
                            f"network/{name}"),
    )


def _query_log(body: YDict) -> int:
    """`query_log: {retention_hours: N}` (1..168, default 24); absent: no log."""
    if "query_log" not in body:
        return 0
    log = expect_mapping(body["query_log"], "query_log", body, "query_log")
    QUERY_LOG.check(log)
    default, most = QUERY_LOG_HOURS
    hours = log.get("retention_hours", default)
    if isinstance(hours, bool) or not isinstance(hours, int) or not 1 <= hours <= most:
        raise error_at(f"query_log.retention_hours must be a whole number of hours from 1 to "
                       f"{most}, got {hours!r}", None, log, "retention_hours")
    return hours


def _token(body: Any, parent: Any, index: int, tiers: dict[str, Tier]) -> Token:
    body = expect_mapping(body, "a token", parent, index)
    TOKEN.check(body)
    TOKEN.require(body, parent, index)
    # Never echo the token itself in errors: it is a credential.
    text = expect_str(body["token"], "token", body, "token")
    if not _TOKEN.fullmatch(text):
        raise error_at("token must be 6 to 64 characters of A-Z, a-z, 0-9, '_' and '-'", None,
                       body, "token")
    tier = expect_str(body["tier"], "tier", body, "tier")
    if tier not in tiers:
        raise error_at(f"token uses unknown tier {tier!r} "
                       f"(defined tiers: {', '.join(sorted(tiers)) or 'none'})", tier, body, "tier")
    return Token(token=text, tier=tier, description=str(body.get("description", "")),
                 path=body.path, line=body.line)
