"""`safegate feeds status|confirm|enroll`: a gateway's feeds as its files and ledger show them;
enroll exchanges a publisher's one-time code for this gateway's token (cli/enroll.py).

`confirm` applies an update the change guard held: it writes STATE_DIR/feeds/NAME.confirm with
the held update's id, which the running gateway picks up within a second (and a gateway that
is stopped picks up at its next start). Wiring: cli/__init__.py calls `register(sub)` and then
`args.func(args)` for these commands.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any

from gateway.config.gateway import GatewayConfig, load_config
from gateway.errors import SafeGateError
from gateway.feeds.acks import refused_path
from gateway.feeds.client import status_of
from gateway.feeds.hold import confirm_held


def register(subparsers: Any) -> None:
    """Add `feeds` with the `status` and `confirm` verbs (`feed` is the publisher's)."""
    p = subparsers.add_parser("feeds", help="this gateway's feeds: status, confirm a held update")
    verbs = p.add_subparsers(dest="feeds_verb", required=True)
    st = verbs.add_parser("status", help="serial, entries and held updates of every feed")
    st.add_argument("-c", "--config", required=True, type=Path, help="gateway.yaml")
    st.add_argument("--json", action="store_true", help="machine-readable output")
    st.set_defaults(func=_status)
    cf = verbs.add_parser("confirm", help="apply an update the change guard held")
    cf.add_argument("-c", "--config", required=True, type=Path, help="gateway.yaml")
    cf.add_argument("--feed", required=True, help="feed name (from gateway.yaml)")
    cf.set_defaults(func=_confirm)
    en = verbs.add_parser("enroll", help="exchange a one-time enrollment code for this "
                                         "gateway's publisher token")
    en.add_argument("code", help="the code the publisher gave, e.g. ABCD-EFGH-JKMN-PQRS")
    en.add_argument("--publisher", required=True, help="the publisher's URL, "
                                                       "e.g. https://feed.example")
    en.add_argument("-c", "--config", required=True, type=Path, help="gateway.yaml")
    en.set_defaults(func=_enroll)


def _feed_names(config: GatewayConfig) -> list[str]:
    return [f.name for f in config.feeds]


def status(config: GatewayConfig) -> list[dict[str, Any]]:
    """Per feed: stored serial, held update, ledger counts (read-only: safe while running)."""
    out = [status_of(config.state_dir, name) for name in _feed_names(config)]
    db = config.state_dir / "ledger.sqlite3"
    if db.exists():
        from gateway.feeds.ledger import Ledger

        ledger = Ledger(db, readonly=True)
        try:
            now = time.time()
            for item in out:
                with contextlib.suppress(OSError):
                    item["acks_refused"] = refused_path(config.state_dir,
                                                        item["feed"]).read_text().strip()
                item["outcomes"] = ledger.counts(item["feed"])
                item["overdue"] = ledger.overdue(item["feed"], now)
            pending = ledger.outbox_pending()
        finally:
            ledger.close()
        for item in out:
            item["acks_pending"] = pending
    return out


def _status(args: argparse.Namespace) -> int:
    items = status(load_config(args.config))
    if args.json:
        print(json.dumps(items, indent=2))
        return 0
    if not items:
        print("no feeds configured")
    for item in items:
        outcomes = ", ".join(f"{n} {k}" for k, n in sorted(item.get("outcomes", {}).items()))
        print(f"{item['feed']}: serial {item.get('serial', '-')}"
              + (f", {outcomes}" if outcomes else "")
              + (f", {item['overdue']} overdue" if item.get("overdue") else ""))
        if item.get("acks_refused"):
            print(f"  ACKS REFUSED by the publisher (they wait in the outbox): "
                  f"{item['acks_refused']}")
        held = item.get("held")
        if held and "ids" in held:
            shown = ", ".join(held["ids"]) + (", ..." if held["changes"] > len(held["ids"])
                                              else "")
            print(f"  HELD: {held['changes']} changes (update {held['id']}, limit "
                  f"{held['limit']}) stay out of force; later updates still apply. Held: "
                  f"{shown}. Apply them with "
                  f"`safegate feeds confirm -c {args.config} --feed {item['feed']}`")
        elif held:
            print(f"  HELD: update {held['id']} changes {held['changes']} entries of "
                  f"{held['current']} (limit {held['limit']}); apply it with "
                  f"`safegate feeds confirm -c {args.config} --feed {item['feed']}`")
    return 0


def confirm(config: GatewayConfig, feed: str) -> dict[str, Any]:
    """Write the confirm marker for the feed's held update; SafeGateError if none is held."""
    if feed not in _feed_names(config):
        raise SafeGateError(f"no feed named {feed!r} in {config.path}")
    return confirm_held(config.state_dir, feed)


def _confirm(args: argparse.Namespace) -> int:
    held = confirm(load_config(args.config), args.feed)
    print(f"confirmed update {held['id']} of feed {args.feed} ({held['changes']} changes); the "
          "running gateway applies it within a few seconds (or at its next start)",
          file=sys.stderr)
    return 0


def _enroll(args: argparse.Namespace) -> int:
    from gateway.cli.enroll import enroll

    return enroll(args.code, args.publisher, args.config)
