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
    parser.add_argument("--log-level", default="info",
                        choices=["debug", "info", "warning", "error"],
                        help="log verbosity on stderr (default: info)")
    sub = parser.add_subparsers(dest="command", required=True)
    for group in COMMAND_GROUPS:
        group.register(sub)
    return parser


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
