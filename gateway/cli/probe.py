"""`safegate probe --resolver HOST:PORT --feed URL --public-key PEM`: test a resolver from outside.

The arguments, the output and the exit code; the probing itself (sampling, classifying answers,
the `--serve` metrics service) is gateway.compliance.probe.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import sys
from dataclasses import asdict
from pathlib import Path

from gateway.compliance.probe import (
    DEFAULT_METRICS_PORT,
    ProbeError,
    ProbeSettings,
    exit_code,
    probe_targets,
    render_text,
    run_once,
    serve,
    summarize,
)
from gateway.config.addresses import parse_address
from gateway.feedformat.document import FeedError
from gateway.feedformat.signing import Verifier


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `probe` to the `safegate` command."""
    p = subparsers.add_parser(
        "probe", help="check from outside that a resolver blocks a feed's entries",
        description="Fetch the signed feed, query a sample of its domain entries through the "
                    "resolver, and report which are blocked. Exit 0: all blocked; 2: some not; "
                    "1: the probe could not run.")
    p.add_argument("--resolver", required=True, help="HOST:PORT of the resolver to test")
    p.add_argument("--feed", required=True, help="feed URL, e.g. https://feed.example/v1/feed")
    p.add_argument("--public-key", required=True, type=Path, action="append",
                   help="the publisher's public key (PEM); repeat during a key rotation")
    p.add_argument("--sample", type=int, default=None, help="probe N random entries (default all)")
    p.add_argument("--seed", type=int, default=None, help="random seed for a reproducible sample")
    p.add_argument("--timeout", type=float, default=3.0, help="seconds per query and for the feed")
    p.add_argument("--blockpage-address", action="append", default=[],
                   help="an answer address that means blocked (repeatable)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--serve", metavar="LISTEN", default=None,
                   help="run as a service, exposing metrics on LISTEN (e.g. 127.0.0.1:9155)")
    p.add_argument("--interval", type=float, default=300.0,
                   help="seconds between runs with --serve (default 300)")
    p.set_defaults(func=run)


def settings_from_args(args: argparse.Namespace) -> ProbeSettings:
    """Validate the arguments; ProbeError with a message for the user."""
    try:
        host, port = parse_address(args.resolver, 53)
    except ValueError as exc:
        raise ProbeError(f"--resolver {args.resolver!r}: {exc}") from None
    blockpage = []
    for a in args.blockpage_address:
        try:
            blockpage.append(str(ipaddress.ip_address(a)))
        except ValueError:
            raise ProbeError(f"--blockpage-address {a!r} is not an IP address") from None
    if args.sample is not None and args.sample < 1:
        raise ProbeError("--sample must be at least 1")
    try:
        verifier = Verifier({}) if not args.public_key else Verifier.from_files(args.public_key)
    except (OSError, ValueError, FeedError) as exc:
        raise ProbeError(f"cannot load the public key: {exc}") from None
    return ProbeSettings(host, port, args.feed, verifier, args.sample, args.seed, args.timeout,
                         frozenset(blockpage))


def run(args: argparse.Namespace) -> int:
    """Exit 0: every sampled entry blocked; 2: some not. A ProbeError or FeedError (the probe
    could not run) goes to main's error policy: exit 1."""
    cfg = settings_from_args(args)
    if args.serve:
        try:
            listen = parse_address(args.serve, DEFAULT_METRICS_PORT)
        except ValueError as exc:
            raise ProbeError(f"--serve {args.serve!r}: {exc}") from None
        try:
            asyncio.run(serve(cfg, listen, args.interval))
        except OSError as exc:
            raise ProbeError(f"--serve {args.serve}: {exc.strerror or exc}") from None
        return 0
    feed, outcomes = asyncio.run(run_once(cfg))
    if args.json:
        doc = {"resolver": cfg.resolver, "feed": cfg.url, "serial": feed.serial,
               "entries_in_feed": len(probe_targets(feed)), **summarize(outcomes),
               "entries": [asdict(o) for o in outcomes]}
        sys.stdout.write(json.dumps(doc, ensure_ascii=False, indent=2) + "\n")
    else:
        sys.stdout.write(render_text(outcomes, cfg.resolver))
    return exit_code(outcomes)
