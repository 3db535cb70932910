"""`safegate proxy -c gateway.yaml`: the HTTP(S) filtering proxy (issue 5), a process of its own."""

from __future__ import annotations

import argparse
from pathlib import Path

from gateway.errors import SafeGateError

INSTALL_HINT = ("needs mitmproxy (and pdqhash for image hashes): pip install 'safegate[proxy]' "
                "(from a clone: .venv/bin/pip install -e '.[proxy]')")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "proxy", help="run the HTTP(S) filtering proxy (URL takedowns, image hashes, "
                      "restricted modes); `safegate run` starts it when proxy.enabled")
    p.add_argument("-c", "--config", required=True, type=Path, help="gateway.yaml")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    try:
        import mitmproxy  # noqa: F401  - an optional extra: say what to install, not a traceback
    except ImportError:
        raise SafeGateError(INSTALL_HINT) from None
    from gateway.proxy.runner import run

    return run(args.config)
