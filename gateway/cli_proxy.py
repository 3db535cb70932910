"""`safegate proxy -c gateway.yaml`: the HTTP(S) filtering proxy (issue 5), a process of its own."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "proxy", help="run the HTTP(S) filtering proxy (URL takedowns, image hashes, "
                      "restricted modes); `safegate run` starts it when proxy.enabled")
    p.add_argument("-c", "--config", required=True, type=Path, help="gateway.yaml")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from gateway.proxy.runner import run

    return run(args.config)
