"""`safegate export rpz -c gateway.yaml`: the mandatory list as an RPZ zone for any resolver.

An ISP's Unbound or BIND loads the zone (and `safegate probe` can then test it); the zone is
built by gateway.compliance.export from the gateway's ledger and its blocklists.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import time
from pathlib import Path

from gateway.cli.report import write_output
from gateway.compliance import export as export_mod
from gateway.errors import SafeGateError


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `export rpz` to the `safegate` command."""
    e = subparsers.add_parser("export", help="export the mandatory list (as an RPZ zone)")
    e.add_argument("what", choices=["rpz"], help="export format")
    e.add_argument("-c", "--config", required=True, type=Path, help="gateway.yaml")
    e.add_argument("--out", type=Path, default=None, help="zone file to write (default stdout)")
    e.add_argument("--origin", default="rpz.safegate.invalid", help="zone name")
    e.add_argument("--serial", type=int, default=None, help="SOA serial (default: unix time)")
    e.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    from gateway.config.gateway import load_config

    cfg = load_config(args.config)
    serial = args.serial if args.serial is not None else int(time.time())
    try:
        result = export_mod.build_export(cfg.state_dir / export_mod.LEDGER_FILE, cfg.blocklists,
                                         serial, args.origin, cfg.state_dir)
    except sqlite3.Error as exc:
        raise SafeGateError(f"ledger database error: {exc}") from None
    for w in result.warnings:
        print(f"warning: {w}", file=sys.stderr)
    write_output(result.zone, args.out)
    print(f"exported {result.from_ledger} feed entries and {result.from_lists} list rules "
          f"(serial {serial})", file=sys.stderr)
    return 0
