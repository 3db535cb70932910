"""`safegate feed keygen|serve|add|remove|list|gateways`: the central publisher's keys, server,
entries and gateway tokens (gateways: cli/gateways.py).

(`safegate feeds`, a gateway's view of the feeds it follows, is cli/feeds.py.)
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.errors import SafeGateError

Command = Callable[[argparse.Namespace], int]


FORCE_HELP = ("allow a change larger than max_change; the flag travels in the signed document, "
              "so gateways apply it without holding it (their never_block still wins)")


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add `feed` and its verbs; each verb's `func(args)` returns the exit code."""
    feed = subparsers.add_parser("feed", help="publish the central signed feed")
    verbs = feed.add_subparsers(dest="feed_command", required=True)

    p = verbs.add_parser("keygen", help="create an Ed25519 signing key pair (DIR/feed.key, "
                                        "DIR/feed.pub)")
    p.add_argument("--out", required=True, type=Path, help="directory for the keys")
    p.add_argument("--name", default="feed", help="file name stem (default: feed)")
    p.set_defaults(func=keygen)

    p = verbs.add_parser("serve", help="serve the feed, the write API, acks and /metrics")
    p.add_argument("-c", "--config", required=True, type=Path, help="publisher.yaml")
    p.set_defaults(func=serve)

    p = verbs.add_parser("add", help="add one entry (or a batch with --file); one new serial")
    p.add_argument("-c", "--config", required=True, type=Path, help="publisher.yaml")
    p.add_argument("--type", choices=["domain", "domain-exact", "url", "ip", "cidr", "sha256",
                                      "pdq"], help="what the value is")
    p.add_argument("--value", help="domain, URL, IP, CIDR or hash")
    p.add_argument("--category", action="append", default=[],
                   help="category (repeat for several), e.g. csam")
    p.add_argument("--mandatory", action="store_true",
                   help="legally required: needs --authority, --decision and --date")
    p.add_argument("--authority", help="who ordered it (legal basis)")
    p.add_argument("--decision", help="decision or case reference (legal basis)")
    p.add_argument("--date", help="decision date, YYYY-MM-DD (legal basis)")
    p.add_argument("--deadline", help="enforce by, ISO 8601 with timezone "
                                      "(e.g. 2026-11-24T12:00:00+07:00)")
    p.add_argument("--id", help="reference (default: a generated SG-YYYYMMDD-xxxxxxxx)")
    p.add_argument("--action", choices=["block", "warn"], default="block")
    p.add_argument("--file", type=Path,
                   help="JSON file with a list of entries (or {\"entries\": [...]}) to add as "
                        "one batch, instead of --type/--value")
    p.add_argument("--force", action="store_true", help=FORCE_HELP)
    p.set_defaults(func=add)

    p = verbs.add_parser("remove", help="remove an entry; one new serial")
    p.add_argument("-c", "--config", required=True, type=Path, help="publisher.yaml")
    p.add_argument("--id", required=True, help="reference of the entry")
    p.add_argument("--force", action="store_true", help=FORCE_HELP)
    p.set_defaults(func=remove)

    p = verbs.add_parser("list", help="list live entries")
    p.add_argument("-c", "--config", required=True, type=Path, help="publisher.yaml")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--all", action="store_true", help="include removed entries")
    p.set_defaults(func=list_cmd)

    from gateway.cli.gateways import register as register_gateways

    register_gateways(verbs)


def keygen(args: argparse.Namespace) -> int:
    from gateway.feedformat.signing import generate_keys, load_public_key
    from gateway.feedformat.signing import key_id as kid

    try:
        key_path, pub_path = generate_keys(args.out, args.name)
    except (FileExistsError, OSError) as exc:
        raise SafeGateError(str(exc)) from None
    print(f"private key: {key_path} (keep secret; signing_key in publisher.yaml)")
    print(f"public key:  {pub_path} (give to gateways); key id {kid(load_public_key(pub_path))}")
    return 0


def serve(args: argparse.Namespace) -> int:
    from gateway.publisher.config import load_publisher_config
    from gateway.publisher.serve import run

    return run(load_publisher_config(args.config))


def _editor(config_path: Path) -> Any:
    from gateway.publisher.config import load_publisher_config
    from gateway.publisher.edits import Editor, Guard
    from gateway.publisher.store import Store

    config = load_publisher_config(config_path)
    return Editor(Store(config.database), Guard(config.never_block, config.max_change_ratio,
                                                config.max_change_entries))


def _raw_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """One entry object from the flags; make_entry validates it like any feed entry."""
    if args.type is None or args.value is None:
        raise SafeGateError("--type and --value are required (or --file)")
    if not args.category:
        raise SafeGateError("at least one --category is required (e.g. --category csam)")
    raw: dict[str, Any] = {"type": args.type, "value": args.value, "categories": args.category,
                           "action": args.action, "mandatory": args.mandatory}
    basis = {"authority": args.authority, "decision": args.decision, "date": args.date}
    given = [k for k, v in basis.items() if v]
    if args.mandatory and len(given) < 3:
        missing = ", ".join(f"--{k}" for k in basis if k not in given)
        raise SafeGateError(f"a mandatory entry needs its legal basis: missing {missing}")
    if given and len(given) < 3:
        raise SafeGateError("--authority, --decision and --date go together")
    if given:
        raw["legal_basis"] = basis
    if args.deadline:
        raw["deadline"] = args.deadline
    if args.id:
        raw["id"] = args.id
    return raw


def _raws_from_file(path: Path) -> list[Any]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SafeGateError(f"{path}: {exc.strerror}") from None
    except ValueError as exc:
        raise SafeGateError(f"{path}: not valid JSON: {exc}") from None
    if isinstance(doc, dict) and set(doc) == {"entries"}:
        doc = doc["entries"]
    if not isinstance(doc, list):
        raise SafeGateError(f"{path}: expected a list of entries or {{\"entries\": [...]}}")
    return doc


def add(args: argparse.Namespace) -> int:
    """Add entries (refused if invalid, on the never_block list, or too large a change)."""
    if args.file is not None:
        if args.type or args.value:
            raise SafeGateError("give either --file or --type/--value, not both")
        raws = _raws_from_file(args.file)
    else:
        raws = [_raw_from_args(args)]
    editor = _editor(args.config)
    try:
        serial, entries = editor.add(raws, args.force)
    finally:
        editor.store.close()
    for e in entries:
        print(f"added {e.id}: {e.type} {e.value} ({','.join(e.categories)})")
    print(f"serial {serial}")
    return 0


def remove(args: argparse.Namespace) -> int:
    editor = _editor(args.config)
    try:
        serial = editor.remove(args.id, args.force)
    finally:
        editor.store.close()
    print(f"removed {args.id}")
    print(f"serial {serial}")
    return 0


def list_cmd(args: argparse.Namespace) -> int:
    from gateway.publisher.config import load_publisher_config
    from gateway.publisher.store import Store

    config = load_publisher_config(args.config)
    store = Store(config.database)
    try:
        serial, rows = store.serial(), store.list_entries(args.all)
    finally:
        store.close()
    if args.json:
        items = []
        for s in rows:
            item = s.entry.to_json()
            item.update(added_serial=s.added_serial, removed_serial=s.removed_serial,
                        removed_at=s.removed_at)
            items.append(item)
        print(json.dumps({"serial": serial, "entries": items}, ensure_ascii=False, indent=2))
        return 0
    print(f"serial {serial}, {len(rows)} entries")
    for s in rows:
        e = s.entry
        flags = ["mandatory"] if e.mandatory else []
        if e.action != "block":
            flags.append(e.action)
        if s.removed_serial is not None:
            flags.append(f"removed@{s.removed_serial}")
        if e.deadline:
            flags.append(f"deadline {e.deadline}")
        print(f"{e.id}\t{e.type}\t{e.value}\t{','.join(e.categories)}\t"
              f"serial {s.added_serial}\t{' '.join(flags)}".rstrip())
    return 0
