"""YAML loading that remembers where every value came from, for `file:line` errors."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from gateway.config.limits import FileLimits
from gateway.errors import ConfigError
from gateway.util.readfile import line_of, read_capped


class Node:
    """A location-carrying mixin: the file and 1-based line a YAML value started on."""

    path: str = ""
    line: int = 0


class YDict(dict[str, Any], Node):
    """A YAML mapping; `key_lines[key]` is the line each key is written on."""

    key_lines: dict[str, int]


class YList(list[Any], Node):
    """A YAML sequence; `item_lines[i]` is the line of each item."""

    item_lines: list[int]


class YStr(str, Node):
    """A YAML string that knows its line."""


class _Loader(yaml.SafeLoader):
    """SafeLoader whose mappings, sequences and strings carry their source line."""

    source_path = ""


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> YDict:
    loader.flatten_mapping(node)
    out = YDict()
    out.path, out.line = loader.source_path, node.start_mark.line + 1
    out.key_lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        if not isinstance(key, str):
            raise ConfigError(f"keys must be strings, got {key!r}", loader.source_path, line)
        if key in out:
            raise ConfigError(f"duplicate key {key!r}", loader.source_path, line)
        out[key] = loader.construct_object(value_node, deep=True)
        out.key_lines[key] = line
    return out


def _construct_sequence(loader: _Loader, node: yaml.SequenceNode) -> YList:
    out = YList(loader.construct_object(child, deep=True) for child in node.value)
    out.path, out.line = loader.source_path, node.start_mark.line + 1
    out.item_lines = [child.start_mark.line + 1 for child in node.value]
    return out


def _construct_str(loader: _Loader, node: yaml.ScalarNode) -> YStr:
    out = YStr(loader.construct_scalar(node))
    out.path, out.line = loader.source_path, node.start_mark.line + 1
    return out


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)
_Loader.add_constructor("tag:yaml.org,2002:str", _construct_str)


CONFIG_BYTES_KEY = "limits.files.config_bytes"


def load_yaml(path: str | Path, max_bytes: int = FileLimits.config_bytes,
              limit_key: str = CONFIG_BYTES_KEY) -> Any:
    """Parse one YAML file of at most `max_bytes`; problems become ConfigError with the file
    and line. An empty (or comment-only) file gives None: callers say what that means."""
    path = str(path)
    data = read_capped(path, max_bytes, limit_key)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not UTF-8 text ({exc.reason})", path,
                          line_of(data, exc.start)) from None
    return load_yaml_text(text, path)


def load_yaml_text(text: str, path: str) -> Any:
    """Parse YAML text that came from `path` (used in messages)."""
    try:
        # The reader checks every character in the constructor: a NUL byte raises here.
        loader = _Loader(text)
    except yaml.reader.ReaderError as exc:
        char = exc.character if isinstance(exc.character, str) else chr(exc.character)
        raise ConfigError(f"non-printable character {char!r} (#x{ord(char):04x}) is not allowed in "
                          "YAML (is this a text file?)", path,
                          text.count("\n", 0, exc.position) + 1) from None
    loader.source_path = path
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if isinstance(node, yaml.ScalarNode):
            value = loader.construct_object(node)
            if value is None:
                return None   # a lone `~` or `null` is as empty as an empty file
            # No file of ours is a lone scalar; say so here, where its line is still known.
            raise ConfigError(f"expected a mapping or a list, got {_kind(value)}", path,
                              node.start_mark.line + 1)
        return loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        raise ConfigError(f"YAML syntax error: {exc.problem or exc.context}", path,
                          mark.line + 1 if mark is not None else None) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"YAML error: {exc}", path) from None
    except RecursionError:
        # PyYAML composes and constructs recursively: a few hundred nested [ or { exhaust
        # the stack. No file of ours nests that deep.
        raise ConfigError("YAML nested too deeply", path) from None
    finally:
        loader.dispose()


def where(value: Any, parent: Any = None, key: str | int | None = None
          ) -> tuple[str | None, int | None]:
    """The (file, line) of `value`, or of `parent[key]` when the value itself has no mark."""
    if isinstance(parent, YDict) and isinstance(key, str) and key in parent.key_lines:
        return parent.path, parent.key_lines[key]
    if isinstance(parent, YList) and isinstance(key, int) and key < len(parent.item_lines):
        return parent.path, parent.item_lines[key]
    if isinstance(value, Node) and value.path:
        return value.path, value.line
    if isinstance(parent, Node) and parent.path:
        return parent.path, parent.line
    return None, None


def error_at(message: str, value: Any, parent: Any = None, key: str | int | None = None
             ) -> ConfigError:
    """A ConfigError located at `value` (or at `parent[key]`)."""
    path, line = where(value, parent, key)
    return ConfigError(message, path, line)


def _marked(node: Node, value: Any, parent: Any, key: str | int | None) -> None:
    """Give a value built in code the location of what it stands for."""
    path, line = where(value, parent, key)
    node.path, node.line = path or "", line or 0


def expect_mapping(value: Any, what: str, parent: Any = None, key: str | int | None = None
                   ) -> YDict:
    """`value` as a mapping (nothing counts as empty), or a located error naming `what`."""
    if isinstance(value, YDict):
        return value
    if value is None or isinstance(value, dict):
        built = YDict(value or {})
        built.key_lines = {}
        _marked(built, value, parent, key)
        return built
    raise error_at(f"{what} must be a mapping, got {_kind(value)}", value, parent, key)


def expect_list(value: Any, what: str, parent: Any = None, key: str | int | None = None) -> YList:
    """`value` as a list (a lone scalar becomes a one-item list), or a located error."""
    if isinstance(value, YList):
        return value
    if isinstance(value, list) or (isinstance(value, str | int) and not isinstance(value, bool)):
        built = YList(value if isinstance(value, list) else [value])
        _marked(built, value, parent, key)
        built.item_lines = [built.line] * len(built) if built.line else []
        return built
    raise error_at(f"{what} must be a list, got {_kind(value)}", value, parent, key)


def expect_str(value: Any, what: str, parent: Any = None, key: str | int | None = None) -> str:
    """`value` as a non-empty string, or a located error."""
    if isinstance(value, str) and value.strip():
        return value
    raise error_at(f"{what} must be a non-empty string, got {_kind(value)}", value, parent, key)


def check_keys(mapping: YDict, allowed: Iterable[str], what: str) -> None:
    """Unknown keys are errors (a typo must not silently disable a rule)."""
    allowed = tuple(allowed)
    for key in mapping:
        if key not in allowed:
            raise error_at(
                f"unknown key {key!r} in {what} (expected one of: {', '.join(allowed)})",
                None, mapping, key,
            )


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return f"boolean {value}"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return f"string {value!r}"
    return f"{type(value).__name__} {value!r}"
