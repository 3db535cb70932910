"""Checks a feed document against docs/feed.schema.json with a small JSON Schema subset
(exactly the keywords the schema uses), so the tests need no validator package."""

from __future__ import annotations

import json
import re
from typing import Any

from tests.support.procs import REPO_ROOT

SCHEMA = json.loads((REPO_ROOT / "docs/feed.schema.json").read_text())


def _matches(schema: dict[str, Any], value: Any, root: dict[str, Any]) -> bool:
    """A small JSON Schema 2020-12 subset: exactly the keywords docs/feed.schema.json uses."""
    return not _errors(schema, value, root)


def _errors(schema: dict[str, Any], value: Any, root: dict[str, Any], at: str = "$"
            ) -> list[str]:
    handled = {"$schema", "$id", "$defs", "title", "description", "default", "format", "$ref",
               "type", "const", "enum", "pattern", "minLength", "maxLength", "minimum",
               "required", "properties", "additionalProperties", "items", "minItems", "oneOf",
               "allOf", "not", "if", "then"}
    assert set(schema) <= handled, f"validator lacks {set(schema) - handled}"
    errs: list[str] = []
    if "$ref" in schema:
        target: Any = root
        for part in schema["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        errs += _errors(target, value, root, at)
    if "type" in schema and not _type_ok(schema["type"], value):
        return [f"{at}: not {schema['type']}"]
    if "const" in schema and (value != schema["const"] or type(value) is not
                              type(schema["const"])):
        errs.append(f"{at}: not {schema['const']!r}")
    if "enum" in schema and value not in schema["enum"]:
        errs.append(f"{at}: not in {schema['enum']}")
    if isinstance(value, str):
        if "pattern" in schema and not re.search(schema["pattern"], value):
            errs.append(f"{at}: {value!r} !~ {schema['pattern']}")
        if len(value) < schema.get("minLength", 0) or len(value) > schema.get("maxLength",
                                                                               10**9):
            errs.append(f"{at}: bad length")
    if isinstance(value, int) and "minimum" in schema and value < schema["minimum"]:
        errs.append(f"{at}: below minimum")
    if isinstance(value, dict):
        props = schema.get("properties", {})
        errs += [f"{at}: missing {k}" for k in schema.get("required", []) if k not in value]
        for k, v in value.items():
            if k in props:
                errs += _errors(props[k], v, root, f"{at}.{k}")
            elif schema.get("additionalProperties", True) is False:
                errs.append(f"{at}: unexpected {k}")
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0):
            errs.append(f"{at}: too few items")
        if "items" in schema:
            for i, item in enumerate(value):
                errs += _errors(schema["items"], item, root, f"{at}[{i}]")
    if "oneOf" in schema and sum(_matches(s, value, root) for s in schema["oneOf"]) != 1:
        errs.append(f"{at}: not exactly one of oneOf")
    for sub in schema.get("allOf", []):
        errs += _errors(sub, value, root, at)
    if "not" in schema and _matches(schema["not"], value, root):
        errs.append(f"{at}: matches not")
    if "if" in schema and _matches(schema["if"], value, root) and "then" in schema:
        errs += _errors(schema["then"], value, root, at)
    return errs


def schema_errors(doc: Any) -> list[str]:
    """Why `doc` does not match docs/feed.schema.json (empty: it does)."""
    return _errors(SCHEMA, doc, SCHEMA)


def _type_ok(expected: str, value: Any) -> bool:
    return {
        "object": isinstance(value, dict), "array": isinstance(value, list),
        "string": isinstance(value, str), "boolean": isinstance(value, bool),
        "integer": isinstance(value, int) and not isinstance(value, bool),
    }[expected]
