"""`safegate admin passwd -c gateway.yaml`: set the admin page's password (admin.password_file,
scrypt hash, mode 0600). Prompts twice, or reads one line from stdin with --password-stdin
(scripts, tests). Wiring: cli/__init__.py calls `register(sub)` then `args.func(args)`."""

from __future__ import annotations

import argparse
import getpass
import os
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
    path = config.admin.password_file
    write_password_file(path, password)
    _give_to_state_owner(path)
    print(f"admin password written to {path}; a new admin: section needs a restart of "
          "SafeGate", file=sys.stderr)
    return 0


def _give_to_state_owner(path: Path) -> None:
    """Run as root (`sudo safegate admin passwd`), the 0600 file would be root's, and the
    gateway, running as the owner of its state directory (user safegate), could not read it:
    the page would go on saying no password is set. Hand it to the directory's owner."""
    if os.geteuid() != 0:
        return
    owner = path.parent.stat()
    if (owner.st_uid, owner.st_gid) != (0, 0):
        os.chown(path, owner.st_uid, owner.st_gid)
