"""`safegate run|check|explain -c gateway.yaml`: serve DNS, validate a config, say why.

`explain` prints the decision a query from CLIENT for NAME gets (the same code the query
path runs) and where each rule, network and schedule that made it is defined.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.errors import SafeGateError

if TYPE_CHECKING:
    from datetime import datetime
    from zoneinfo import ZoneInfo

    from gateway.config.gateway import GatewayConfig
    from gateway.policy.decide import Profile
    from gateway.policy.identify import Identity
    from gateway.policy.quota_table import QuotaTable
    from gateway.runtime.state import Loaded


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `run`, `check` and `explain` to the `safegate` command."""
    p_run = subparsers.add_parser("run", help="serve DNS with the configured policies")
    p_run.add_argument("-c", "--config", required=True, type=Path, help="gateway.yaml")
    p_run.set_defaults(func=_run)

    p_check = subparsers.add_parser("check",
                                    help="validate gateway.yaml, policies and blocklists")
    p_check.add_argument("-c", "--config", required=True, type=Path, help="gateway.yaml")
    p_check.add_argument("-v", "--verbose", action="store_true",
                         help="list every skipped list line (by default: how many, one line)")
    p_check.set_defaults(func=_check)

    p_explain = subparsers.add_parser("explain",
                                      help="say what SafeGate does with a name, and why")
    p_explain.add_argument("-c", "--config", required=True, type=Path, help="gateway.yaml")
    p_explain.add_argument("client", help="client IP address (IPv4 or IPv6)")
    p_explain.add_argument("name", help="domain name, e.g. www.example.com")
    p_explain.add_argument("--json", action="store_true", help="machine-readable output")
    p_explain.add_argument("--at", metavar="ISO8601",
                           help="evaluate schedule windows at this time (e.g. 2025-03-03T08:00; "
                                "without an offset, in the configured timezone)")
    p_explain.add_argument("--token", metavar="TOKEN",
                           help="as a DoH client of /dns-query/TOKEN (the token's tier decides, "
                                "not the client address)")
    p_explain.add_argument("--proxy-source", metavar="ADDRESS",
                           help="CLIENT is a front end (dnsdist) whose PROXY v2 header names "
                                "ADDRESS as the real client")
    p_explain.add_argument("--ecs", metavar="SUBNET",
                           help="the query carries EDNS Client Subnet SUBNET (e.g. "
                                "2001:db8:1200::/56), as a front end adds it")
    p_explain.set_defaults(func=_explain)


def _run(args: argparse.Namespace) -> int:
    import errno

    from gateway.runtime.app import run

    hints = {errno.EADDRINUSE: "another program (or another SafeGate) listens there: "
                               "`sudo ss -ltnup` shows which",
             errno.EACCES: "ports below 1024 need root or CAP_NET_BIND_SERVICE (the systemd "
                           "unit has it)",
             errno.EADDRNOTAVAIL: "no interface of this machine has that address"}
    try:
        return run(args.config)
    except OSError as exc:
        if exc.errno not in hints or "bind on address" not in str(exc):
            raise
        # A listener that cannot be bound at start: one line that says which, not a traceback.
        raise SafeGateError(f"cannot listen: {exc.strerror or exc}; "
                            f"{hints[exc.errno]}") from None


def _check(args: argparse.Namespace) -> int:
    return check(args.config, verbose=args.verbose)


def _explain(args: argparse.Namespace) -> int:
    return explain(args.config, args.client, args.name, args.json, args.at, args.token,
                   proxy_source=args.proxy_source, ecs=args.ecs)


def check(config: Path, *, verbose: bool = False) -> int:
    """Validate everything; errors as `file:line: message`, exit 1.

    Skipped list lines warn in one line (the shipped lists skip hundreds of IP addresses, and
    a screenful of them hides the result); `verbose` lists them (the compiler keeps the first
    MAX_SKIPPED_EXAMPLES).
    """
    from gateway.runtime.state import load_in_process

    loaded = load_in_process(config)
    summary = loaded.summary
    skipped = summary.get("skipped", [])
    total_skipped = summary.get("skipped_count", len(skipped))
    if verbose:
        for item in skipped:
            print(f"warning: skipped {item}", file=sys.stderr)
        if total_skipped > len(skipped):
            print(f"... and {total_skipped - len(skipped)} more skipped lines", file=sys.stderr)
    elif skipped:
        print(f"warning: {total_skipped} list lines skipped, e.g. {skipped[0]} "
              "(`safegate check --verbose` lists them)", file=sys.stderr)
    entries = summary.get("entries_by_category", {})
    print(f"{config}: OK: {len(loaded.policy.tiers)} tiers, {len(loaded.policy.networks)} "
          f"networks, {sum(entries.values())} list entries in {len(entries)} categories, "
          f"{total_skipped} list lines skipped"
          + (f", {loaded.subscribers.count} subscriber prefixes in "
             f"{len(loaded.subscribers.profiles)} profiles" if loaded.subscribers else ""))
    return 0


def explain(config: Path, client: str, name: str, as_json: bool, at: str | None = None,
            token: str | None = None, *, proxy_source: str | None = None,
            ecs: str | None = None) -> int:
    """The decision function plus printing: the same code a query takes."""
    from datetime import UTC, datetime
    from zoneinfo import ZoneInfo

    from gateway.config.gateway import load_config
    from gateway.lists.compile import find_rule_lines
    from gateway.runtime.intercept import steering
    from gateway.runtime.state import load_in_process
    from gateway.util.names import normalize_name

    try:
        ipaddress.ip_address(client)
    except ValueError:
        raise SafeGateError(f"{client!r} is not an IP address") from None
    try:
        key = normalize_name(name)
    except ValueError as exc:
        raise SafeGateError(f"{name!r}: {exc}") from None
    tz = ZoneInfo(load_config(config).timezone)
    when = datetime.now(UTC)
    if at is not None:
        try:
            when = datetime.fromisoformat(at)
        except ValueError:
            raise SafeGateError(f"--at {at!r} is not an ISO 8601 date-time") from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=tz)  # a wall time in the gateway's zone
    loaded = load_in_process(config, at=when)
    out: dict[str, Any] = {"client": client, "name": key.decode()}
    found = _identity(loaded, client, proxy_source, ecs, token)
    out["identity"] = found.source
    if token is None:
        out["identity_detail"] = found.ignored
    profile = found.profile
    if profile is None:
        out.update(network=None, tier=None, verdict="refused", rcode="REFUSED", ede=18,
                   reason="the client is in no configured network (SafeGate is not an open "
                          "resolver)")
    else:
        v = profile.decide(key)
        table, quotas = None, None
        if profile.quotas:
            table, quotas = _explain_quotas(loaded, profile, found.address or client, when,
                                            tz)
        if v.reason == "quota":   # the query path's own charge, looked at without counting
            from gateway.policy.quota_table import charged

            v = charged(table, profile, v, found.address or client, peek=True)
        if profile.id.kind == "token":
            tok = loaded.policy.tokens[profile.id.index]
            out.update(network=None, token_defined_at=f"{tok.path}:{tok.line}",
                       tier=profile.tier)
        elif profile.id.kind == "subscriber":
            out.update(_explain_subscriber(loaded, found.address, profile))
        else:
            net = loaded.policy.networks[profile.id.index]
            out.update(network=profile.network, network_defined_at=f"{net.path}:{net.line}",
                       tier=profile.tier)
        out.update(_explain_tier(loaded, profile.tier, when, tz))
        if quotas is not None:   # after the tier's schedules: both say what is limited when
            out["quotas"] = quotas
        if v.steer:
            out.update(verdict="intercepted", reason="intercept", rule=v.rule.decode(),
                       answer="A/AAAA: the proxy's address ("
                              + ", ".join(steering(loaded.config)) + "); HTTPS/SVCB: NODATA",
                       rcode="NOERROR", ede=None,
                       why="the proxy must see this name (URL-level entries, image scanning or "
                           "a restricted mode); other names never pass through it")
        elif v.rewrite:
            out.update(verdict="rewritten", reason="safesearch", rule=v.rule.decode(),
                       answer=f"CNAME {v.rewrite.decode()} + its A/AAAA from upstream",
                       rcode="from upstream", ede=None)
        elif v.blocked:
            out.update(verdict="blocked", reason=v.reason, category=v.category,
                       rule=v.rule.decode(), answer=v.answer, ede=v.ede,
                       ede_text=v.ede_text(),
                       rcode="NXDOMAIN" if v.answer == "nxdomain" else "NOERROR")
        else:
            out.update(verdict="allowed", reason=v.reason, rule=v.rule.decode() or None,
                       answer="forwarded to upstream", rcode="from upstream", ede=None)
            out.update(_answered_locally(loaded.config, key.decode()))
            if v.reason == "quota":
                out.update(category=v.category, why="a quota-limited category: allowed while "
                           "the client has minutes left today (each minute it is looked up "
                           "counts)")
        if v.category and v.reason in ("mandatory", "policy"):
            out["sources"] = [f"{p}:{line}: {text}" for p, line, text in
                              find_rule_lines(loaded.catalog, v.category, v.rule)]
    if as_json:
        print(json.dumps(out, ensure_ascii=False, indent=2, default=str))
    else:
        for k, val in out.items():
            if isinstance(val, list):
                print(f"{k}:")
                for item in val:
                    print(f"  {item}")
            elif val is not None:
                print(f"{k}: {val}")
    return 0


def _identity(loaded: Loaded, client: str, proxy_source: str | None, ecs: str | None,
              token: str | None) -> Identity:
    """The query path's identify(), with `ignored` turned into the words explain prints."""
    from gateway.policy import identify as ident

    for flag, value in (("--proxy-source", proxy_source), ("--ecs", ecs)):
        if value is None:
            continue
        try:
            ipaddress.ip_network(value, strict=False)
        except ValueError:
            raise SafeGateError(f"{flag} {value!r} is not an address or subnet") from None
    subnet = ipaddress.ip_network(ecs, strict=False) if ecs is not None else None
    # As dns/wire.py's ecs_address reads the option: the subnet's address, "" for /0.
    ecs_address = (None if subnet is None
                   else str(subnet.network_address) if subnet.prefixlen else "")
    found = ident.identify(loaded.view, client, proxy_source, ecs_address, token)
    if token is not None:
        if found.profile is None:
            raise SafeGateError("no policy file defines that DoH token")
        return found
    config = loaded.config
    why = {ident.UNTRUSTED: (f"a PROXY v2 header or ECS is ignored: {client} is not in "
                             f"dns.trusted_frontends of {config.path}"),
           ident.NOT_READ: "dns.proxy_protocol is off, so a PROXY v2 header is not read",
           ident.NOBODY: "an ECS of /0 names nobody"}.get(found.ignored or "")
    if found.source == ident.PROXY:
        why = f"the header from trusted front end {client} names {proxy_source}"
    elif found.source == ident.ECS:
        forwarded = ("forwarded upstream cut to /24 or /56 (dns.forward_ecs)" if
                     config.forward_ecs else "stripped before forwarding upstream")
        why = f"EDNS Client Subnet {subnet} from trusted front end {client}; {forwarded}"
    return found._replace(ignored=why)


def _answered_locally(config: GatewayConfig, name: str) -> dict[str, str]:
    """A name the policy lets through that dns.local_records answers, or that a
    dns.forward_zones zone sends to the school's own servers, never reaches dns.upstreams."""
    records = [r for r in config.local_records if r.name == name]
    if records:
        return {"answer": "from dns.local_records: " + ", ".join(
                    f"{r.rtype} {r.value} ({config.path}:{r.line})" for r in records),
                "rcode": "NOERROR (NODATA for a type with no local record)"}
    zones = [z for z in config.forward_zones if name == z.zone or name.endswith("." + z.zone)]
    if not zones:
        return {}
    zone = max(zones, key=lambda z: len(z.zone))   # the longest zone wins, as on the query path
    return {"answer": f"forwarded to {', '.join(u.label for u in zone.servers)} "
                      f"(dns.forward_zones: {zone.zone}), not to dns.upstreams",
            "rcode": "from those servers"}


def _explain_subscriber(loaded: Loaded, address: str, profile: Profile) -> dict[str, Any]:
    from gateway.policy.subscribers import find_line

    path = loaded.config.subscribers
    assert path is not None and loaded.subscribers is not None
    found = loaded.view.clients.match(address)
    prefix = found[0] if found else "?"
    line = find_line(path, prefix) if found else 0
    spec = loaded.subscribers.profiles[profile.id.index]
    out: dict[str, Any] = {"network": None, "subscriber": prefix,
                           "subscriber_defined_at": f"{path}:{line}", "tier": profile.tier,
                           "filtered": ("yes: blocks carry EDE 17 Filtered (the subscriber "
                                        "chose this filtering)") if spec.filtered else "no"}
    if spec.allow:
        out["subscriber_allow"] = [n.decode() for n in spec.allow]
    if spec.deny:
        out["subscriber_deny"] = [n.decode() for n in spec.deny]
    return out


def _explain_quotas(loaded: Loaded, profile: Profile, address: str, when: datetime,
                    tz: ZoneInfo) -> tuple[QuotaTable, list[str]]:
    """Minutes used and left today for `address` under each quota of the profile, as the
    running gateway last saved them to state_dir (every limits.quota.save_interval)."""
    from gateway.policy.quota_table import QuotaTable

    config = loaded.config
    table = QuotaTable(tz, config.limits.quota.clients, clock=when.timestamp)
    table.load(config.state_dir)
    lines = []
    for quota in dict.fromkeys(profile.quotas.values()):
        status, used = table.peek(address, quota)
        used = min(used, quota.minutes)
        state = {0: "", 1: " (used up: blocked until midnight)",
                 2: " (counter table full: blocked)"}[status]
        lines.append(f"{quota.label()}: {used} used, {quota.minutes - used} left today{state} "
                     f"({quota.path}:{quota.line})")
    return table, lines


def _explain_tier(loaded: Loaded, tier_name: str, when: datetime, tz: ZoneInfo
                  ) -> dict[str, Any]:
    """Time, schedule windows (active or not at `when`), SafeSearch and bypass settings."""
    from gateway.policy.schedules import holiday_on, is_active, local_time

    tier = loaded.policy.tiers[tier_name]
    local = local_time(when, tz)
    holidays = loaded.policy.holidays
    holiday = holiday_on(local.date(), holidays)
    out: dict[str, Any] = {"time": f"{local.isoformat()} ({tz.key})"}
    if holiday is not None:
        out["holiday"] = f"{holiday.name or 'holiday'} ({holiday.start} to {holiday.end})"
    out["schedules"] = [
        f"{'ACTIVE  ' if is_active(w, local, holidays) else 'inactive'} {w.label()} "
        f"({w.path}:{w.line})" for w in tier.schedules] or None
    out["safesearch"] = tier.safesearch
    out["bypass_protection"] = ("on: use-application-dns.net, mask.icloud.com, "
                                "mask-h2.icloud.com -> NXDOMAIN; resolver.arpa -> NODATA; ECH "
                                "stripped from HTTPS/SVCB answers" if tier.bypass_protection
                                else "off")
    return out
