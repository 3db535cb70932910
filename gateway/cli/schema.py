"""`safegate schema [gateway|policy|lists]`: the JSON Schema of our YAML files, from the parsers.

The Sections the parsers check keys with (gateway/config/spec.py) are turned into JSON Schema
for editors (VS Code's YAML extension) and into the key tables of docs/configuration.md.
`safegate schema --write` (`make schema`) regenerates both in the repository; a test fails when
the shipped files differ from what the parsers say.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from gateway.config.gateway import GATEWAY
from gateway.config.spec import Schema, Shape, document_schema, reference_rows
from gateway.errors import SafeGateError
from gateway.lists.catalog import LISTS
from gateway.policy.policyfile import POLICY_FILE

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_DIR = Path("docs/schema")
REFERENCE = Path("docs/configuration.md")
BASE_ID = "https://safegate.invalid/schemas/"
# name -> (the file's Shape, its title)
FILES: dict[str, tuple[Shape, str]] = {
    "gateway": (GATEWAY, "SafeGate gateway.yaml"),
    "policy": (POLICY_FILE, "SafeGate policy file (policies/*.yaml)"),
    "lists": (LISTS, "SafeGate blocklists/lists.yaml"),
}
_TABLE = re.compile(r"(<!-- keys:(\w+) -->\n).*?(<!-- /keys:\2 -->)", re.S)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `schema` to the `safegate` command."""
    s = subparsers.add_parser("schema", help="print the JSON Schema of gateway.yaml, policy "
                                             "files or lists.yaml")
    s.add_argument("file", nargs="?", choices=list(FILES), default="gateway",
                   help="which file's schema (default: gateway)")
    s.add_argument("--write", action="store_true",
                   help=f"write every schema to {SCHEMA_DIR}/ and the key tables of "
                        f"{REFERENCE} in the source tree (make schema)")
    s.add_argument("--root", type=Path, default=ROOT,
                   help="the source tree --write writes into (default: this one)")
    s.set_defaults(func=cmd_schema)


def schema_of(name: str) -> Schema:
    section, title = FILES[name]
    return document_schema(section, title, f"{BASE_ID}{name}.schema.json")


def schema_text(name: str) -> str:
    return json.dumps(schema_of(name), indent=2, ensure_ascii=False) + "\n"


def reference_table(name: str) -> str:
    """The markdown key table of one file, for docs/configuration.md."""
    lines = ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    for path, kind, default, doc in reference_rows(FILES[name][0]):
        lines.append(f"| `{path}` | {kind} | {default} | {_cell(doc)} |")
    return "\n".join(lines) + "\n"


def with_tables(text: str) -> str:
    """docs/configuration.md with each `<!-- keys:NAME -->` table regenerated."""
    return _TABLE.sub(lambda m: f"{m[1]}{reference_table(m[2])}{m[3]}", text)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def cmd_schema(args: argparse.Namespace) -> int:
    if not args.write:
        sys.stdout.write(schema_text(args.file))
        return 0
    root: Path = args.root
    reference = root / REFERENCE
    if not reference.is_file():
        raise SafeGateError(f"{reference} not found (--root is a SafeGate source tree)")
    (root / SCHEMA_DIR).mkdir(parents=True, exist_ok=True)
    for name in FILES:
        (root / SCHEMA_DIR / f"{name}.schema.json").write_text(schema_text(name))
    reference.write_text(with_tables(reference.read_text()))
    print(f"wrote {SCHEMA_DIR}/{{{','.join(FILES)}}}.schema.json and the tables of {REFERENCE}",
          file=sys.stderr)
    return 0
