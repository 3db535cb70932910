"""`limits:` read generically from the dataclasses of config/limits.py (which import nothing).

Each key is a field there; a field's type says how its value is read, and a key not written
keeps the field's default.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import Field, fields, replace
from typing import Any

from gateway.config.limits import Limits
from gateway.config.spec import BOOL, SECONDS, STRINGS, Key, Schema, Shape, integer
from gateway.config.values import read_bool, read_int, read_networks, read_seconds
from gateway.config.yamlconf import YDict, expect_mapping

STREAMS = ("tcp", "dot")
_FIELD = re.compile(r"    (\w+): [^=]+=[^#]*(?:#\s?(.*))?$")
_COMMENT = re.compile(r"\s+#\s?(.*)$")


def _field_docs(cls: type) -> dict[str, str]:
    """Each field's comment in config/limits.py (beside it, continued below it, or above it):
    the one place a limit is explained is also its schema description."""
    docs: dict[str, str] = {}
    above: list[str] = []
    current = ""
    for line in inspect.getsource(cls).splitlines():
        field_match = _FIELD.match(line)
        comment = _COMMENT.match(line)
        if field_match:
            current = field_match[1]
            docs[current] = " ".join([*above, field_match[2] or ""]).strip()
            above = []
        elif comment and current and line.startswith(" " * 20):
            docs[current] = f"{docs[current]} {comment[1]}".strip()
        elif comment:
            above.append(comment[1])
            current = ""
        else:
            above, current = [], ""
    return docs


def _limit_type(f: Field[Any]) -> Schema:
    return {"bool": BOOL, "int": integer(), "float": SECONDS}.get(str(f.type), STRINGS)


def _part(name: str, cls: type) -> Shape:
    """`limits.NAME`: one Key per field of its dataclass, documented by its comment."""
    docs = _field_docs(cls)
    return Shape(f"limits.{name}", tuple(
        Key(f.name, _limit_type(f), docs.get(f.name, ""),
            list(f.default) if isinstance(f.default, tuple) else f.default)
        for f in fields(cls)), " ".join((cls.__doc__ or "").split()))


_DEFAULTS = Limits()
PARTS = {p.name: _part(p.name, type(getattr(_DEFAULTS, p.name))) for p in fields(Limits)}
LIMITS = Shape("limits", tuple(Key(name, part, part.doc) for name, part in PARTS.items()),
                 "resource limits (README: Limits and abuse)")


def parse_limits(doc: YDict, tcp_idle_timeout: float | None) -> Limits:
    """`limits:`; `tcp_idle_timeout` is dns.tcp_idle_timeout when written (the older spelling),
    which still sets limits.tcp/dot.idle_timeout unless those are given."""
    section = expect_mapping(doc.get("limits"), "limits", doc, "limits")
    defaults = Limits()
    LIMITS.check(section)
    parts: dict[str, Any] = {}
    for part in fields(Limits):
        current = getattr(defaults, part.name)
        sub = expect_mapping(section.get(part.name), f"limits.{part.name}", section, part.name)
        PARTS[part.name].check(sub)
        values: dict[str, Any] = {}
        for f in fields(current):
            if f.name not in sub:
                continue
            what = f"limits.{part.name}.{f.name}"
            if f.type == "bool":
                values[f.name] = read_bool(sub[f.name], what, sub, f.name)
            elif f.type == "int":
                values[f.name] = read_int(sub[f.name], what, sub, f.name, 0)
            elif f.type == "float":
                values[f.name] = read_seconds(sub[f.name], what, sub, f.name)
            else:  # tuple[str, ...]: networks
                values[f.name] = tuple(str(n) for n in read_networks(sub[f.name], what, sub,
                                                                     f.name))
        parts[part.name] = replace(current, **values)
        if part.name in STREAMS and tcp_idle_timeout is not None and "idle_timeout" not in sub:
            # DoT followed dns.tcp_idle_timeout before limits: existed.
            parts[part.name] = replace(parts[part.name], idle_timeout=tcp_idle_timeout)
    return Limits(**parts)
