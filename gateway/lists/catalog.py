"""blocklists/lists.yaml: which list files feed which category, in which format."""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.config.limits import FileLimits
from gateway.config.spec import BOOL, SECONDS, STR, TEXT, Key, Shape, Table, enum, one_of, pattern
from gateway.config.values import http_url
from gateway.config.yamlconf import (
    YDict,
    check_keys,
    error_at,
    expect_list,
    expect_mapping,
    expect_str,
    load_yaml,
    where,
)
from gateway.errors import ConfigError
from gateway.lists.parsers import FORMATS
from gateway.util.readfile import file_problem

log = logging.getLogger(__name__)

__all__ = ["LIST_BYTES_KEY", "MANDATORY_CATEGORIES", "MATCH_MODES", "URL_FORMAT", "Catalog",
           "Source", "list_file_error",
           "load_catalog"]

# Categories enforced whatever a profile says: an admin cannot opt a network out of these.
MANDATORY_CATEGORIES = frozenset({"csam"})
MATCH_MODES = ("suffix", "exact")
# One URL per line: enforced by the HTTP proxy (gateway/proxy/), never by the DNS index.
URL_FORMAT = "urls"
LIST_BYTES_KEY = "limits.files.list_bytes"
_CATEGORY_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*")
_LIST_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
# `refresh:` as a number of seconds or a count with a unit: 90s, 30m, 24h, 7d.
_DURATION = re.compile(r"([0-9]+)\s*([smhd])")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}
DEFAULT_REFRESH = 86400.0
SOURCE = Shape("source", (
    Key("path", STR, "the list file (relative to lists.yaml); or url"),
    Key("url", STR, "download the list from this http(s) URL instead of path; the copy is kept "
        "in state_dir/lists/"),
    Key("format", enum(*FORMATS, URL_FORMAT), "how the file is read (urls: the HTTP proxy's "
        "URL list)", required=True),
    Key("mandatory", BOOL, "entries no allow can lift (csam always is)", False),
    Key("match", enum(*MATCH_MODES), "suffix: a name blocks its subdomains; exact: only itself",
        MATCH_MODES[0]),
    Key("description", TEXT, "free text"),
    Key("refresh", one_of(SECONDS, pattern(r"^\s*[0-9]+\s*[smhd]\s*$")),
        "url sources: how often to download, seconds or 30m / 24h / 7d (at least "
        "limits.files.list_refresh_min)", f"{DEFAULT_REFRESH / 3600:.0f}h"),
    Key("name", pattern(f"^{_LIST_NAME.pattern}$"), "url sources: the list's name in logs and "
        "metrics (default: CATEGORY-N)"),
), nullable=False)
# The whole lists.yaml: `safegate schema lists` is this.
LISTS = Shape("lists.yaml", (
    Key("categories", Table(SOURCE, named=True, items=True,
                            key_pattern=f"^{_CATEGORY_NAME.pattern}$"),
        "categories by name, each a list of sources", required=True),
), nullable=False)


@dataclass(frozen=True)
class Source:
    """One list file feeding one category; `line` is where lists.yaml declares it."""

    category: str
    path: Path
    format: str
    mandatory: bool = False
    match: str = "suffix"
    description: str = ""
    line: int = 0
    # A `url:` source: `path` is its last-known-good copy in state_dir/lists/, downloaded every
    # `refresh` seconds by gateway/runtime/list_refresh.py; `name` labels its metrics and logs.
    url: str = ""
    refresh: float = 0.0
    name: str = ""
    # A url source with no copy yet (first start, publisher down): enforces nothing until the
    # first download, whose file the reload watcher then picks up.
    pending: bool = False


@dataclass(frozen=True)
class Catalog:
    """All sources by category, as declared in `path` (a lists.yaml)."""

    path: Path
    categories: dict[str, list[Source]] = field(default_factory=dict)
    list_bytes: int = FileLimits.list_bytes   # each list file's bound (limits.files.list_bytes)

    def sources(self) -> list[Source]:
        """Every name source (what the DNS index is compiled from), in declaration order."""
        return [s for sources in self.categories.values() for s in sources
                if s.format != URL_FORMAT and not s.pending]

    def remote(self) -> list[Source]:
        """The sources downloaded from a `url:` (with a copy or not yet)."""
        return [s for sources in self.categories.values() for s in sources if s.url]

    def url_sources(self) -> list[Source]:
        """The `format: urls` sources: URL-level entries for the HTTP proxy only."""
        return [s for sources in self.categories.values() for s in sources
                if s.format == URL_FORMAT and not s.pending]

    def files(self) -> list[Path]:
        """lists.yaml and every list file: what the reload watcher has to stat (a pending
        download's copy too: its arrival is a change)."""
        return [self.path, *(s.path for sources in self.categories.values() for s in sources)]


def list_file_error(file: Path, problem: str, path: str | None, line: int | None
                    ) -> ConfigError:
    """A list file that cannot be read, located where lists.yaml names it; one too large is
    the file's own problem (`FILE: larger than N bytes (limits.files.list_bytes)`)."""
    if problem.startswith("larger than"):
        return ConfigError(problem, str(file))
    if problem in ("not found", "file not found"):
        return ConfigError(f"list file not found: {file}", path, line)
    return ConfigError(f"list file {file} {problem}", path, line)


def load_catalog(path: str | Path, max_bytes: int = FileLimits.config_bytes,
                 list_bytes: int = FileLimits.list_bytes, state_dir: Path | None = None
                 ) -> Catalog:
    """Read and validate a lists.yaml; every problem is a ConfigError with file:line.

    `max_bytes` bounds lists.yaml (limits.files.config_bytes), `list_bytes` each list file.
    `state_dir` holds the downloaded copies of `url:` sources; without it (a bare lists.yaml
    compiled or exported on its own) they count as not downloaded yet.
    """
    path = Path(path).absolute()
    doc = load_yaml(path, max_bytes)
    if doc is None:
        raise ConfigError("empty file: expected a 'categories' mapping", str(path))
    root = expect_mapping(doc, "lists.yaml")
    LISTS.check(root)
    if "categories" not in root:
        raise error_at("missing 'categories'", root)
    cats = expect_mapping(root["categories"], "categories", root, "categories")
    categories: dict[str, list[Source]] = {}
    for name, raw_sources in cats.items():
        if not _CATEGORY_NAME.fullmatch(name):
            raise error_at(
                f"category name {name!r} must be lowercase letters, digits, '-' or '_'",
                None, cats, name,
            )
        items = expect_list(raw_sources if raw_sources is not None else [], name, cats, name)
        categories[name] = [
            _source(name, item, items, i, path.parent, list_bytes, state_dir)
            for i, item in enumerate(items)
        ]
    _check_names(categories, cats)
    return Catalog(path, categories, list_bytes)


def _source(category: str, raw: Any, parent: Any, index: int, base: Path, list_bytes: int,
            state_dir: Path | None) -> Source:
    item: YDict = expect_mapping(raw, f"source {index + 1} of {category}", parent, index)
    check_keys(item, SOURCE.names(), f"a source of category {category!r}")
    line = where(item, parent, index)[1] or 0
    if "url" in item and "path" in item:
        raise error_at("a source has either 'path' (a file) or 'url' (downloaded), not both",
                       item, parent, index)
    for key in ("refresh", "name"):
        if key in item and "url" not in item:
            raise error_at(f"{key!r} is only for a 'url' source", None, item, key)
    for required in ("path" if "url" not in item else "url", "format"):
        if required not in item:
            raise error_at(f"source needs {required!r}", item, parent, index)
    fmt = expect_str(item["format"], "format", item, "format")
    if fmt not in (*FORMATS, URL_FORMAT):
        raise error_at(
            f"unknown format {fmt!r} (expected one of: {', '.join((*FORMATS, URL_FORMAT))})",
            None, item, "format",
        )
    match = expect_str(item.get("match", "suffix"), "match", item, "match")
    if match not in MATCH_MODES:
        raise error_at(
            f"match must be one of: {', '.join(MATCH_MODES)}, got {match!r}", None, item, "match"
        )
    mandatory = item.get("mandatory", False)
    if not isinstance(mandatory, bool):
        raise error_at(f"mandatory must be true or false, got {mandatory!r}", None, item,
                       "mandatory")
    description = item.get("description", "")
    if not isinstance(description, str):
        raise error_at("description must be text", None, item, "description")
    remote: dict[str, Any] = {}
    if "url" in item:
        remote = _remote(category, item, index, state_dir or base, state_dir is None)
        file = remote["path"]
        if not file.is_file():
            remote["pending"] = True
    else:
        file = (base / expect_str(item["path"], "path", item, "path")).absolute()
    problem = None if remote.get("pending") else file_problem(file, list_bytes, LIST_BYTES_KEY)
    if problem is not None:
        raise list_file_error(file, problem, *where(None, item, "url" if remote else "path"))
    remote.pop("path", None)
    return Source(
        category=category,
        path=file,
        format=fmt,
        mandatory=mandatory or category in MANDATORY_CATEGORIES,
        match=match,
        description=description,
        line=line,
        **remote,
    )


def _remote(category: str, item: YDict, index: int, copies: Path, pending: bool
            ) -> dict[str, Any]:
    """A `url:` source's url, refresh, name and copy path (copies/lists/, by URL)."""
    url = expect_str(item["url"], "url", item, "url").strip()
    if not http_url(url):
        raise error_at(f"url must be an http(s) URL, got {url!r}", None, item, "url")
    refresh = _duration(item.get("refresh", DEFAULT_REFRESH), item)
    name = expect_str(item.get("name", f"{category}-{index + 1}"), "name", item, "name")
    if not _LIST_NAME.fullmatch(name):
        raise error_at(f"list name {name!r}: use lowercase letters, digits, '-' and '_'",
                       None, item, "name")
    digest = hashlib.sha256(url.encode()).hexdigest()[:16]
    return {"url": url, "refresh": refresh, "name": name,
            "path": (copies / "lists").absolute() / f"{digest}.list", "pending": pending}


def _duration(value: Any, item: YDict) -> float:
    """`refresh:` seconds, or a count with a unit (s, m, h, d)."""
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return float(value)
    if isinstance(value, str):
        found = _DURATION.fullmatch(value.strip())
        if found and int(found[1]) > 0:
            return float(int(found[1]) * _UNIT[found[2]])
    raise error_at(f"refresh must be a duration such as 30m, 24h or 7d, got {value!r}", None,
                   item, "refresh")


def _check_names(categories: dict[str, list[Source]], cats: YDict) -> None:
    seen: dict[str, str] = {}
    for category, sources in categories.items():
        for s in sources:
            if not s.name:
                continue
            if s.name in seen:
                raise ConfigError(f"list name {s.name!r} is used twice (also in "
                                  f"{seen[s.name]}); give the sources distinct 'name:'",
                                  cats.path, s.line or None)
            seen[s.name] = category
            if s.pending:
                log.warning("list %s: no copy of %s yet; enforced after its first download",
                            s.name, s.url)
