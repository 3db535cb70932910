"""The `safegate` command: the registry of command groups and the one error policy.

Each module of COMMAND_GROUPS serves the verbs its docstring names and adds them with
`register(subparsers)`, every verb setting `func`; `main` parses, calls `args.func(args)` and
turns a SafeGateError from any of them into a message on stderr and exit code 1.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from types import ModuleType

from gateway import __version__
from gateway.cli import export, feeds, gateway, hotline, probe, proxy, publisher, report
from gateway.errors import ConfigError, ConfigErrors, SafeGateError

LOG_LEVELS = ("debug", "info", "warning", "error")

# The order of `safegate --help`.
COMMAND_GROUPS: tuple[ModuleType, ...] = (
    gateway,      # run, check, explain
    publisher,    # feed keygen|serve|add|remove|list
    feeds,        # feeds status|confirm
    report,       # report
    probe,        # probe
    export,       # export rpz
    proxy,        # proxy
    hotline,      # reports list|export
)


def build_parser() -> argparse.ArgumentParser:
    """The whole `safegate` parser, every group of COMMAND_GROUPS registered in order."""
    parser = argparse.ArgumentParser(
        prog="safegate", description="DNS content-filtering gateway that protects children online.")
    parser.add_argument("--version", action="version", version=f"safegate {__version__}")
    parser.add_argument("--log-level", default="info", choices=LOG_LEVELS,
                        help="log verbosity on stderr (default: info)")
    sub = parser.add_subparsers(dest="command", required=True)
    for group in COMMAND_GROUPS:
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
    args = build_parser().parse_args(argv)
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
