"""blocklists/lists.yaml: which list files feed which category, in which format."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.config.limits import FileLimits
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
_SOURCE_KEYS = ("path", "format", "mandatory", "match", "description", "url")


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


@dataclass(frozen=True)
class Catalog:
    """All sources by category, as declared in `path` (a lists.yaml)."""

    path: Path
    categories: dict[str, list[Source]] = field(default_factory=dict)
    list_bytes: int = FileLimits.list_bytes   # each list file's bound (limits.files.list_bytes)

    def sources(self) -> list[Source]:
        """Every name source (what the DNS index is compiled from), in declaration order."""
        return [s for sources in self.categories.values() for s in sources
                if s.format != URL_FORMAT]

    def url_sources(self) -> list[Source]:
        """The `format: urls` sources: URL-level entries for the HTTP proxy only."""
        return [s for sources in self.categories.values() for s in sources
                if s.format == URL_FORMAT]

    def files(self) -> list[Path]:
        """lists.yaml and every list file: what the reload watcher has to stat."""
        return [self.path, *(s.path for s in self.sources()),
                *(s.path for s in self.url_sources())]


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
                 list_bytes: int = FileLimits.list_bytes) -> Catalog:
    """Read and validate a lists.yaml; every problem is a ConfigError with file:line.

    `max_bytes` bounds lists.yaml (limits.files.config_bytes), `list_bytes` each list file.
    """
    path = Path(path).absolute()
    doc = load_yaml(path, max_bytes)
    if doc is None:
        raise ConfigError("empty file: expected a 'categories' mapping", str(path))
    root = expect_mapping(doc, "lists.yaml")
    check_keys(root, ("categories",), "lists.yaml")
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
            _source(name, item, items, i, path.parent, list_bytes) for i, item in enumerate(items)
        ]
    return Catalog(path, categories, list_bytes)


def _source(category: str, raw: Any, parent: Any, index: int, base: Path, list_bytes: int
            ) -> Source:
    item: YDict = expect_mapping(raw, f"source {index + 1} of {category}", parent, index)
    check_keys(item, _SOURCE_KEYS, f"a {category} source")
    line = where(item, parent, index)[1] or 0
    if "url" in item:
        raise error_at(
            "url sources are not supported yet; download the list and use path",
            None, item, "url",
        )
    for required in ("path", "format"):
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
    rel = expect_str(item["path"], "path", item, "path")
    file = (base / rel).absolute()
    problem = file_problem(file, list_bytes, LIST_BYTES_KEY)
    if problem is not None:
        raise list_file_error(file, problem, *where(None, item, "path"))
    return Source(
        category=category,
        path=file,
        format=fmt,
        mandatory=mandatory or category in MANDATORY_CATEGORIES,
        match=match,
        description=description,
        line=line,
    )
