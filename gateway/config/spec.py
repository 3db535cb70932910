"""The keys of our YAML files, declared once: name, type, default, meaning.

Each parser declares its mapping as a `Shape` beside its dataclass and checks written keys
with `section.check(mapping)` (unknown keys are errors); `safegate schema` turns the same
Sections into JSON Schema (docs/schema/*.json) and docs/configuration.md's key tables. So a key
added to a parser is in the schema and the reference by construction, and a key the parser does
not know is rejected by both. Value checks that need more than a type (files exist, tiers are
defined, an address parses) stay in the parsers; the schema is what an editor can check.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from gateway.config.addresses import Address, format_address
from gateway.config.yamlconf import YDict, check_keys, error_at

Schema = dict[str, Any]


class _NoDefault:
    def __repr__(self) -> str:
        return "NO_DEFAULT"


NO_DEFAULT: Any = _NoDefault()

# Value types as JSON Schema fragments. A list is also accepted as one bare value where the
# parser's expect_list takes it (`policies: "policies/"` is a one-item list).
STR: Schema = {"type": "string", "minLength": 1}
TEXT: Schema = {"type": "string"}
BOOL: Schema = {"type": "boolean"}
SECONDS: Schema = {"type": "number", "exclusiveMinimum": 0}


def integer(minimum: int = 0, maximum: int | None = None) -> Schema:
    out: Schema = {"type": "integer", "minimum": minimum}
    if maximum is not None:
        out["maximum"] = maximum
    return out


def number(minimum: float, maximum: float, *, exclusive_minimum: bool = False) -> Schema:
    low = "exclusiveMinimum" if exclusive_minimum else "minimum"
    return {"type": "number", low: minimum, "maximum": maximum}


def enum(*values: Any) -> Schema:
    return {"enum": list(values)}


def pattern(regex: str) -> Schema:
    return {"type": "string", "pattern": regex}


def array(item: Schema, *, bare: bool = True) -> Schema:
    """A list of `item`; with `bare`, one item written without brackets too."""
    listed: Schema = {"type": "array", "items": item}
    return {"anyOf": [item, listed]} if bare else listed


STRINGS = array(STR)


def addresses(listen: tuple[Address, ...]) -> list[str]:
    """A dataclass's default listen addresses as gateway.yaml writes them."""
    return [format_address(a) for a in listen]


def one_of(*schemas: Schema) -> Schema:
    return {"anyOf": list(schemas)}


@dataclass(frozen=True)
class Key:
    """One key of a mapping: its value's type (a Schema, a Shape or a Table), its meaning."""

    name: str
    type: Schema | Shape | Table
    doc: str
    default: Any = NO_DEFAULT
    required: bool = False
    alt: Schema | None = None   # another accepted form (`subscribers: FILE` or a mapping)


@dataclass(frozen=True)
class Shape:
    """A YAML mapping with fixed keys; `what` names it in error messages."""

    what: str
    keys: tuple[Key, ...]
    doc: str = ""
    nullable: bool = True      # expect_mapping reads a key with nothing after it as {}

    def names(self) -> tuple[str, ...]:
        return tuple(k.name for k in self.keys)

    def check(self, mapping: YDict) -> None:
        """Unknown keys are errors, named at their line."""
        check_keys(mapping, self.names(), self.what)

    def require(self, mapping: YDict, parent: Any, key: str | int) -> None:
        """The keys marked `required` are present: the first missing one is an error at
        `parent[key]` ("a quota" -> "quota is missing 'minutes'")."""
        noun = self.what.removeprefix("a ")
        for k in self.keys:
            if k.required and k.name not in mapping:
                raise error_at(f"{noun} is missing {k.name!r}", mapping, parent, key)


@dataclass(frozen=True)
class Table:
    """Many `value` mappings: a list of them (`items`: networks, feeds), by names the admin
    chooses (`named`: tiers), or both (lists.yaml categories: a list of sources per name)."""

    value: Shape
    named: bool = False
    items: bool = False
    key_pattern: str = ""      # what a name must look like (named)


def list_of(shape: Shape) -> Table:
    return Table(shape, items=True)


def to_schema(t: Schema | Shape | Table) -> Schema:
    """The JSON Schema of a value of type `t`."""
    if isinstance(t, Shape):
        properties: Schema = {}
        for k in t.keys:
            prop = to_schema(k.type)
            prop = one_of(k.alt, prop) if k.alt is not None else dict(prop)
            prop["description"] = k.doc
            if k.default is not NO_DEFAULT:
                prop["default"] = k.default
            properties[k.name] = prop
        out: Schema = {"type": ["object", "null"] if t.nullable else "object",
                       "additionalProperties": False, "properties": properties}
        required = [k.name for k in t.keys if k.required]
        if required:
            out["required"] = required
        if t.doc:
            out["description"] = t.doc
        return out
    if isinstance(t, Table):
        value = to_schema(t.value)
        if t.items:
            value = array(value, bare=False)
            if t.named:   # a name with nothing under it is an empty list
                value["type"] = ["array", "null"]
        if not t.named:
            return value
        table: Schema = {"type": ["object", "null"], "additionalProperties": value}
        if t.key_pattern:
            table["propertyNames"] = {"pattern": t.key_pattern}
        return table
    return t


def document_schema(section: Shape, title: str, schema_id: str) -> Schema:
    """A whole file's JSON Schema (draft 2020-12)."""
    out = {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": schema_id,
           "title": title}
    out.update(to_schema(section))
    return out


def walk(t: Schema | Shape | Table, prefix: str = "") -> Iterator[tuple[str, Key]]:
    """Every key path under `t` ("dns.cache.size"; "tiers.*.block", "feeds[].url")."""
    if isinstance(t, Table):
        inner = prefix + (".*" if t.named else "") + ("[]" if t.items else "")
        yield from walk(t.value, inner)
        return
    if not isinstance(t, Shape):
        return
    for k in t.keys:
        path = f"{prefix}.{k.name}" if prefix else k.name
        yield path, k
        yield from walk(k.type, path)


def type_label(t: Schema | Shape | Table) -> str:
    """A short human name of a type, for the reference tables."""
    if isinstance(t, Shape):
        return "mapping"
    if isinstance(t, Table):
        return " of ".join([*(["mapping of names"] if t.named else []),
                            *(["list of mappings"] if t.items else [])]) or "mapping"
    if "enum" in t:
        return " \\| ".join(_literal(v) for v in t["enum"])
    if "anyOf" in t:
        kinds = [type_label(s) for s in t["anyOf"]]
        if len(kinds) == 2 and kinds[1] == f"list of {kinds[0]}":
            return f"{kinds[0]} or list"
        return " or ".join(kinds)
    kind = t.get("type")
    if kind == "array":
        return f"list of {type_label(t['items'])}"
    names = {"string": "text", "boolean": "true/false", "integer": "integer",
             "number": "number"}
    label = names.get(str(kind), str(kind))
    if kind == "number" and t.get("exclusiveMinimum") == 0 and "maximum" not in t:
        return "seconds"
    return label


def _literal(value: Any) -> str:
    if value is False:
        return "false"
    return f"`{value}`"


def reference_rows(section: Shape) -> list[tuple[str, str, str, str]]:
    rows = []
    for path, k in walk(section):
        default = "" if k.default is NO_DEFAULT else f"`{_default_text(k.default)}`"
        if k.required:
            default = "required"
        label = type_label(k.type)
        if k.alt is not None:
            label = f"{type_label(k.alt)} or {label}"
        rows.append((path, label, default, k.doc))
    return rows


def _default_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_default_text(v) for v in value) + "]"
    if isinstance(value, str):
        return f'"{value}"'
    return str(value)
