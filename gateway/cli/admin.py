"""`safegate admin passwd -c gateway.yaml`: set the admin page's password (admin.password_file,
scrypt hash, mode 0600). Prompts twice, or reads one line from stdin with --password-stdin
(scripts, tests). Wiring: cli/__init__.py calls `register(sub)` then `args.func(args)`."""

from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path
from typing import Any

from gateway.admin.auth import write_password_file
from gateway.config.gateway import load_config
from gateway.errors import SafeGateError


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("admin", help="the admin page: set its password")
    verbs = p.add_subparsers(dest="admin_verb", required=True)
    pw = verbs.add_parser("passwd", help="set the admin page's password")
    pw.add_argument("-c", "--config", required=True, type=Path, help="gateway.yaml")
    pw.add_argument("--password-stdin", action="store_true",
                    help="read the password from the first line of stdin (no prompt)")
    pw.set_defaults(func=_passwd)


def _passwd(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    if config.admin is None:
        raise SafeGateError(f"{config.path} has no admin: section (see docs/admin.md)")
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass("New admin password: ")
        if getpass.getpass("Again: ") != password:
            raise SafeGateError("the two passwords differ; nothing was changed")
    write_password_file(config.admin.password_file, password)
    print(f"admin password written to {config.admin.password_file}", file=sys.stderr)
    return 0
