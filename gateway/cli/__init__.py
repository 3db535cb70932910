"""The `safegate` command: the registry of command groups and the one error policy.

Each module of COMMAND_GROUPS serves the verbs its docstring names and adds them with
`register(subparsers)`, every verb setting `func`; `main` parses, calls `args.func(args)` and
turns a SafeGateError from any of them into a message on stderr and exit code 1.

`main` imports only the group that serves the command on its command line (all of them for
`--help` or an unknown command): a `safegate run` process lives for months and should not hold
the report, export, probe and feed-client code (with sqlite3 and cryptography) it never runs.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Any

from gateway import __version__
from gateway.errors import ConfigError, ConfigErrors, SafeGateError

LOG_LEVELS = ("debug", "info", "warning", "error")

# The order of `safegate --help`: each group module of gateway/cli/ and the commands it
# registers (tests/test_cli.py checks this table against what `register` adds).
GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("gateway", ("run", "check", "explain")),
    ("publisher", ("feed",)),          # feed keygen|serve|add|remove|list
    ("feeds", ("feeds",)),             # feeds status|confirm
    ("report", ("report",)),
    ("probe", ("probe",)),
    ("export", ("export",)),           # export rpz
    ("proxy", ("proxy",)),
    ("hotline", ("reports",)),         # reports list|export
    ("schema", ("schema",)),           # schema [gateway|policy|lists]
    ("admin", ("admin",)),             # admin passwd
)


def command_groups(command: str | None = None) -> tuple[ModuleType, ...]:
    """The group modules in order, imported now: only the one serving `command` if any does."""
    names = [m for m, commands in GROUPS if command in commands] or [m for m, _ in GROUPS]
    return tuple(importlib.import_module(f"gateway.cli.{m}") for m in names)


def __getattr__(name: str) -> Any:
    # COMMAND_GROUPS, every group imported: for tests and tools that walk the whole registry.
    if name == "COMMAND_GROUPS":
        return command_groups()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _command_of(argv: Sequence[str]) -> str | None:
    """The command word of a command line (the first word that is no global option)."""
    words = iter(argv)
    for word in words:
        if word == "--log-level":
            next(words, None)
        elif not word.startswith("-"):
            return word
    return None


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The `safegate` parser: every group registered in order, or only the one serving
    `command` (its parsing and errors are the same; `--help` lists every group)."""
    parser = argparse.ArgumentParser(
        prog="safegate", description="DNS content-filtering gateway that protects children online.")
    parser.add_argument("--version", action="version", version=f"safegate {__version__}")
    parser.add_argument("--log-level", default="info", choices=LOG_LEVELS,
                        help="log verbosity on stderr (default: info)")
    sub = parser.add_subparsers(dest="command", required=True)
    for group in command_groups(command):
        group.register(sub)
    # `safegate run -c gateway.yaml --log-level debug` (the README's order) works too: every
    # verb takes it after its own arguments, and only overrides the global one when given.
    for leaf in _verb_parsers(parser):
        leaf.add_argument("--log-level", default=argparse.SUPPRESS, choices=LOG_LEVELS,
                          help="log verbosity on stderr (default: info)")
    return parser


def _verb_parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """The parsers that take no sub-command: one per verb."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        return [parser]
    return [leaf for a in subs for p in dict.fromkeys(a.choices.values())
            for leaf in _verb_parsers(p)]


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser(_command_of(sys.argv[1:] if argv is None else argv)).parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args))
    except (ConfigError, ConfigErrors) as exc:
        # Already `file:line: message`, one per line: what an editor jumps to.
        for line in str(exc).splitlines():
            print(line, file=sys.stderr)
        return 1
    except SafeGateError as exc:
        print(f"safegate {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
