"""`safegate feed gateways add|list|revoke`: per-gateway tokens and enrollment codes.

Writes the publisher's database directly (as `safegate feed add` does), so it works whether or
not the server runs, and a revocation reaches every publisher process sharing the database on
its next request. The same operations are in the admin API (/v1/gateways, docs/publisher-ha.md).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from gateway.errors import SafeGateError


def register(verbs: argparse._SubParsersAction[Any]) -> None:
    """Add `gateways` under `safegate feed`."""
    p = verbs.add_parser("gateways", help="issue, list and revoke per-gateway tokens")
    p.set_defaults(func=list_cmd)   # never reached (a verb is required); each verb sets its own
    sub = p.add_subparsers(dest="gateways_command", required=True)
    a = sub.add_parser("add", help="issue a token (shown once) or, with --code, a one-time "
                                   "enrollment code")
    a.add_argument("-c", "--config", required=True, type=Path, help="publisher.yaml")
    a.add_argument("id", help="gateway id, e.g. school-hanoi-0042")
    a.add_argument("--code", action="store_true",
                   help="a short code to type into `safegate feeds enroll` instead of a token")
    a.add_argument("--expires", type=float, default=168.0, metavar="HOURS",
                   help="hours the code stays valid (default 168: one week)")
    a.add_argument("--json", action="store_true", help="machine-readable output")
    a.set_defaults(func=add)
    ls = sub.add_parser("list", help="gateways with a token or an outstanding code")
    ls.add_argument("-c", "--config", required=True, type=Path, help="publisher.yaml")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    ls.set_defaults(func=list_cmd)
    r = sub.add_parser("revoke", help="revoke a gateway's token (and unused codes) at once")
    r.add_argument("-c", "--config", required=True, type=Path, help="publisher.yaml")
    r.add_argument("id", help="gateway id")
    r.set_defaults(func=revoke)


def _open(config_path: Path) -> tuple[Any, Any, Any]:
    from gateway.publisher.config import load_publisher_config
    from gateway.publisher.enroll import GatewayTokens
    from gateway.publisher.store import Store

    config = load_publisher_config(config_path)
    store = Store(config.database)
    return config, store, GatewayTokens(store.db, config.limits.enroll_codes)


def add(args: argparse.Namespace) -> int:
    from gateway.publisher.enroll import EnrollError
    from gateway.publisher.gateways_api import issue

    config, store, tokens = _open(args.config)
    try:
        out = issue(tokens, config.gateways, args.id, args.code, args.expires)
        store.ensure_gateways([args.id])
    except EnrollError as exc:
        raise SafeGateError(str(exc)) from None
    finally:
        store.close()
    if args.json:
        print(json.dumps(out))
    elif "code" in out:
        print(f"gateway {args.id}: enrollment code {out['code']} (single use, expires "
              f"{out['expires_at']})")
        print(f"on the gateway: safegate feeds enroll {out['code']} --publisher URL "
              "-c /etc/safegate/gateway.yaml")
    else:
        print(f"gateway {args.id}: token (shown only now; the publisher keeps its hash):")
        print(out["token"])
        print(f"in the gateway's gateway.yaml: gateway: {{id: {args.id}, token: <the token>}}")
    return 0


def list_cmd(args: argparse.Namespace) -> int:
    from gateway.publisher.gateways_api import listing

    config, store, tokens = _open(args.config)
    try:
        rows = listing(tokens, config.gateways)
    finally:
        store.close()
    if args.json:
        print(json.dumps({"gateways": rows}, indent=2))
        return 0
    for r in rows:
        extra = ""
        if r.get("revoked_at"):
            extra = f"\trevoked {r['revoked_at']}"
        elif r.get("code_expires_at"):
            extra = f"\tcode expires {r['code_expires_at']}"
        print(f"{r['id']}\t{r['state']}\t{r['source']}{extra}")
    return 0


def revoke(args: argparse.Namespace) -> int:
    from gateway.publisher.enroll import EnrollError

    config, store, tokens = _open(args.config)
    try:
        if args.id in config.gateways:
            raise SafeGateError(f"gateway {args.id!r} is listed in {config.path} (gateways:): "
                                "remove it there and restart the publisher")
        tokens.revoke(args.id)
    except EnrollError as exc:
        raise SafeGateError(str(exc)) from None
    finally:
        store.close()
    print(f"revoked gateway {args.id}: its next request gets 401")
    return 0
