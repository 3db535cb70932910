"""`safegate check` and `safegate explain` as an admin runs them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.support.cli import config, safegate
from tests.support.data import LISTS, LISTS_YAML, POLICY

REPO = Path(__file__).resolve().parents[1]


def test_check_accepts_a_good_config(tmp_path: Path) -> None:
    r = safegate("check", "-c", str(config(tmp_path)))
    assert r.returncode == 0, r.stderr
    assert "OK: 4 tiers, 4 networks, 4 list entries in 3 categories" in r.stdout


def test_check_accepts_the_shipped_example() -> None:
    r = safegate("check", "-c", str(REPO / "deploy/example/gateway.yaml"))
    assert r.returncode == 0, r.stderr
    assert "OK: 5 tiers" in r.stdout


def test_check_of_the_shipped_lists_says_skipped_lines_in_one_line_unless_verbose() -> None:
    """The shipped lists skip hundreds of IP addresses: one warning, the list with -v."""
    cfg = str(REPO / "deploy/example/isp/gateway.yaml")
    r = safegate("check", "-c", cfg)
    assert r.returncode == 0, r.stderr
    skipped = int(re.search(r"(\d+) list lines skipped", r.stdout).group(1))  # type: ignore[union-attr]
    assert skipped > 100
    assert r.stderr.splitlines() == [
        line for line in r.stderr.splitlines() if line.startswith(f"warning: {skipped} list lines")]
    assert len(r.stderr.splitlines()) == 1 and "--verbose" in r.stderr
    r = safegate("check", "--verbose", "-c", cfg)
    assert r.returncode == 0, r.stderr
    assert len([x for x in r.stderr.splitlines() if x.startswith("warning: skipped ")]) == skipped


def test_explain_of_the_shipped_example_prints_no_skipped_lines() -> None:
    """Issue #14: every `explain` used to print 450 "warning: skipped" lines for the shipped
    lists; what the lists skip is `check`'s to say, not each explanation's."""
    r = safegate("explain", "-c", str(REPO / "deploy/example/gateway.yaml"), "10.0.0.5",
                 "example.com")
    assert r.returncode == 0, r.stderr
    assert "skipped" not in r.stderr and "skipped" not in r.stdout


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        (POLICY.replace("teens: {block: [adult]", "teens: {block: [adlt]"),
         "p.yaml:3: tier 'teens' blocks unknown category 'adlt'"),
        (POLICY.replace("kids: {block", "kids: {blok"),
         "p.yaml:2: unknown key 'blok' in tier 'kids'"),
        (POLICY.replace('"127.0.0.3/32"', '"127.0.0.300/32"'),
         "p.yaml:10: bad CIDR '127.0.0.300/32'"),
        (POLICY.replace('"127.0.0.3/32"', '"127.0.0.3/24"'),
         "p.yaml:10: bad CIDR '127.0.0.3/24': 127.0.0.3/24 has host bits set"),
        (POLICY.replace("tier: staff}", "tier: stuff}"),
         "p.yaml:11: network 'staff-net' uses unknown tier 'stuff'"),
        (POLICY.replace("answer: nxdomain", "answer: refuse"),
         "p.yaml:3: answer must be one of blockpage, nxdomain, nodata, null, got 'refuse'"),
        (POLICY + "  - {name: dup, cidrs: ['::1/128'], tier: kids}\n",
         "p.yaml:12: ::1/128 is already used by network 'teens-v6'"),
        ("tiers:\n  kids: {block: [adult]\nnetworks: []\n", "p.yaml:3: YAML syntax error"),
        (POLICY.replace('deny: ["games.test"]', 'deny: ["bad name.test"]'),
         "p.yaml:7: deny: 'bad name.test' contains a space"),
    ],
)
def test_check_reports_file_line_and_problem(tmp_path: Path, policy: str, message: str) -> None:
    r = safegate("check", "-c", str(config(tmp_path, policy=policy)))
    assert r.returncode == 1
    assert message in r.stderr, r.stderr
    assert str(tmp_path / "policies" / "p.yaml") in r.stderr


def test_check_unknown_gateway_key(tmp_path: Path) -> None:
    r = safegate("check", "-c", str(config(tmp_path, extra={"dns": {"listne": ["x"]}})))
    assert r.returncode == 1
    assert "gateway.yaml:" in r.stderr and "unknown key 'listne' in dns" in r.stderr


def test_check_lists_errors_and_skipped_lines(tmp_path: Path) -> None:
    bad = LISTS_YAML.replace("format: hosts", "format: host")
    r = safegate("check", "-c", str(config(tmp_path, lists_yaml=bad)))
    assert r.returncode == 1
    assert "lists.yaml:5:" in r.stderr and "host" in r.stderr
    lists = dict(LISTS, **{"adult.txt": "adult-site.test\nnot a domain\n"})
    r = safegate("check", "-c", str(config(tmp_path / "2", lists=lists)))
    assert r.returncode == 0, r.stderr
    assert "adult.txt:2:" in r.stderr
    assert "1 list lines skipped" in r.stdout


def test_explain_blocked_allowed_refused(tmp_path: Path) -> None:
    cfg = str(config(tmp_path))
    r = safegate("explain", "-c", cfg, "127.0.0.1", "WWW.Adult-Site.test.", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["network"] == "kids-v4" and out["tier"] == "kids"
    assert out["verdict"] == "blocked" and out["category"] == "adult"
    assert out["rule"] == "adult-site.test" and out["ede"] == 15
    assert out["sources"] == [f"{tmp_path / 'blocklists' / 'adult.txt'}:2: adult-site.test"]
    r = safegate("explain", "-c", cfg, "::1", "x.csam-test.invalid", "--json")
    out = json.loads(r.stdout)
    assert (out["verdict"], out["reason"], out["ede"], out["answer"]) == (
        "blocked", "mandatory", 16, "nxdomain")
    r = safegate("explain", "-c", cfg, "127.0.0.4", "gamble.test", "--json")
    assert json.loads(r.stdout)["verdict"] == "allowed"
    r = safegate("explain", "-c", cfg, "192.0.2.1", "gamble.test", "--json")
    assert json.loads(r.stdout)["verdict"] == "refused"
    text = safegate("explain", "-c", cfg, "127.0.0.1", "play.games.test")
    assert "reason: deny" in text.stdout and "rule: games.test" in text.stdout


def test_explain_as_a_doh_token_client(tmp_path: Path) -> None:
    policy = POLICY + "tokens:\n  - {token: k7f3q9x, tier: staff}\n"
    cfg = str(config(tmp_path, policy=policy))
    # by address, 127.0.0.1 is the kids network: gambling is blocked ...
    r = safegate("explain", "-c", cfg, "127.0.0.1", "gamble.test", "--json")
    out = json.loads(r.stdout)
    assert (out["identity"], out["verdict"]) == ("client address", "blocked")
    # ... but with the staff token, the token's tier decides
    r = safegate("explain", "-c", cfg, "127.0.0.1", "gamble.test", "--token", "k7f3q9x",
                 "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert (out["identity"], out["tier"], out["verdict"]) == ("DoH path token", "staff",
                                                              "allowed")
    assert out["token_defined_at"].endswith("p.yaml:13")
    r = safegate("explain", "-c", cfg, "127.0.0.1", "gamble.test", "--token", "nope-token")
    assert r.returncode == 1 and "no policy file defines that DoH token" in r.stderr


def test_explain_names_the_identity_behind_a_front_end(tmp_path: Path) -> None:
    """Subscribers, ECS and PROXY v2: explain shows which address decided, and why."""
    (tmp_path / "subscribers.csv").write_text(
        "prefix,tier,filtered,deny\n# a comment\n2001:db8:1200::/56,kids,yes,games.example\n")
    cfg = str(config(tmp_path, extra={
        "subscribers": "subscribers.csv",
        "dns": {"trusted_frontends": ["127.0.0.4/32"], "proxy_protocol": True}}))
    r = safegate("explain", "-c", cfg, "127.0.0.4", "gamble.test", "--proxy-source",
                 "2001:db8:1200:ab::1", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert (out["identity"], out["subscriber"], out["tier"], out["verdict"], out["ede"]) == (
        "PROXY v2", "2001:db8:1200::/56", "kids", "blocked", 17)
    assert out["subscriber_defined_at"] == f"{tmp_path / 'subscribers.csv'}:3"
    assert out["subscriber_deny"] == ["games.example"]
    r = safegate("explain", "-c", cfg, "127.0.0.4", "gamble.test", "--ecs",
                 "2001:db8:1200:ab::/56", "--json")
    out = json.loads(r.stdout)
    assert (out["identity"], out["tier"], out["verdict"]) == ("ECS", "kids", "blocked")
    assert "stripped before forwarding upstream" in out["identity_detail"]
    # From an address that is not a trusted front end, the ECS is not believed: 127.0.0.3's
    # own network decides.
    r = safegate("explain", "-c", cfg, "127.0.0.3", "gamble.test", "--ecs",
                 "2001:db8:1200:ab::/56", "--json")
    out = json.loads(r.stdout)
    assert (out["identity"], out["network"], out["tier"]) == ("client address", "zero-net",
                                                              "zero")
    assert "not in dns.trusted_frontends" in out["identity_detail"]
    text = safegate("explain", "-c", cfg, "127.0.0.4", "gamble.test", "--proxy-source",
                    "2001:db8:1200::9").stdout
    assert "filtered: yes: blocks carry EDE 17 Filtered" in text


def test_the_isp_example_checks_and_explains_a_subscriber_behind_dnsdist() -> None:
    cfg = str(REPO / "deploy/example/isp/gateway.yaml")
    r = safegate("check", "-c", cfg)
    assert r.returncode == 0, r.stderr
    assert "OK: 4 tiers, 4 networks" in r.stdout
    assert "5 subscriber prefixes in 3 profiles" in r.stdout
    # dnsdist (127.0.0.2, dns.trusted_frontends) health-checks with a PROXY v2 LOCAL header:
    # placed by its own address, the probe is answered by the node itself.
    r = safegate("explain", "-c", cfg, "127.0.0.2", "dnsdist-probe.safegate.invalid", "--json")
    out = json.loads(r.stdout)
    assert (out["network"], out["tier"], out["verdict"], out["rcode"], out["ede"]) == (
        "frontends", "frontend", "blocked", "NXDOMAIN", 15)
    r = safegate("explain", "-c", cfg, "127.0.0.2", "007win.com", "--proxy-source",
                 "2001:db8:1200::9", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert (out["identity"], out["subscriber"], out["tier"], out["verdict"], out["ede"]) == (
        "PROXY v2", "2001:db8:1200::/56", "tre-em", "blocked", 17)
    r = safegate("explain", "-c", cfg, "2001:db8:7777::1", "007win.com", "--json")
    out = json.loads(r.stdout)
    assert (out["network"], out["tier"], out["verdict"]) == ("isp-ipv6", "co-ban", "allowed")


# ---------------------------------------------------------------- the registry and its one policy


def cli_doc_commands() -> list[tuple[str, list[str], set[str]]]:
    """(command, its verbs, the flags shown) for each `safegate ...` of docs/cli.md.

    `feeds status|confirm` is one command with verbs; `report | probe | export rpz` are three
    commands (an alternative of one word each, or `export` with its argument `rpz`).
    """
    text = (REPO / "docs" / "cli.md").read_text(encoding="utf-8")
    block = text.split("```", 2)[1]
    commands: list[tuple[str, list[str], set[str]]] = []
    for line in block.splitlines():
        line = line.split("#", 1)[0]
        flags = set(re.findall(r"(?<![\w-])--?[a-z][\w-]*", line))
        if not line.startswith("safegate "):
            if commands and flags:   # a continuation line: more flags of the command above
                commands[-1][2].update(flags)
            continue
        head = re.split(r"\s(?:-|\[|…)", line[len("safegate "):], maxsplit=1)[0]
        alternatives = [a.split() for a in re.split(r"\s*\|\s*", head.strip())]
        if len(alternatives[0]) > 1:            # `feeds status|confirm`
            first, *rest = alternatives
            commands.append((first[0], [first[1], *(a[0] for a in rest)], flags))
        else:                                   # `report | probe | export rpz`
            commands += [(a[0], a[1:], set(flags)) for a in alternatives]
    return commands


def help_text(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    from gateway.cli import main

    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0, f"safegate {' '.join(argv)} --help: {out}"
    return out


def test_every_verb_of_the_documented_command_line_is_registered(
        capsys: pytest.CaptureFixture[str]) -> None:
    commands = cli_doc_commands()
    assert {c for c, _, _ in commands} >= {"run", "check", "explain", "feeds", "feed", "report",
                                          "probe", "export"}, commands
    for command, verbs, flags in commands:
        texts = [help_text(capsys, command)]
        texts += [help_text(capsys, command, verb) for verb in verbs]
        for flag in flags:
            assert any(flag in t for t in texts), f"safegate {command}: no {flag}"


def test_every_verb_is_served_by_the_group_whose_docstring_names_it() -> None:
    """One registry, one module per command group, each verb with its `func`."""
    import argparse

    from gateway.cli import COMMAND_GROUPS

    seen: list[str] = []
    for group in COMMAND_GROUPS:
        parser = argparse.ArgumentParser()
        sub = parser.add_subparsers(dest="command")
        group.register(sub)
        # "`safegate run|check|explain ...`", "`safegate feeds status|confirm ...`"
        named = re.findall(r"`safegate ([a-z|]+)(?: ([a-z|]+))?", group.__doc__ or "")
        for command, sub_parser in sub.choices.items():
            assert any(command in c.split("|") for c, _ in named), (group.__name__, command)
            seen.append(command)
            verbs = [a for a in sub_parser._actions if isinstance(a, argparse._SubParsersAction)]
            leaves = dict(verbs[0].choices) if verbs else {command: sub_parser}
            for verb, leaf in leaves.items():
                assert callable(leaf.get_default("func")), (command, verb)
                if verbs:
                    assert (command, verb) in {(c, v) for c, vs in named
                                               for v in vs.split("|")}, (group.__name__, verb)
    assert len(seen) == len(set(seen)), seen
    assert set(seen) == {"run", "check", "explain", "feed", "feeds", "report", "probe", "export",
                         "proxy", "reports", "schema", "admin"}


def test_no_command_prints_its_own_errors() -> None:
    """Only main() turns an error into `safegate COMMAND: message` and an exit code."""
    pattern = re.compile(r"print\(f?\"safegate [a-z]+: ")
    offenders = [str(p.relative_to(REPO)) for p in sorted((REPO / "gateway").rglob("*.py"))
                 if p != REPO / "gateway/cli/__init__.py"
                 and pattern.search(p.read_text(encoding="utf-8"))]
    assert offenders == []


def test_the_readme_order_of_log_level_works(tmp_path: Path) -> None:
    r = safegate("check", "-c", str(config(tmp_path)), "--log-level", "debug")
    assert r.returncode == 0, r.stderr
    r = safegate("check", "-c", str(config(tmp_path)), "--log-level", "loud")
    assert r.returncode == 2 and "invalid choice: 'loud'" in r.stderr


def _mitmproxy_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("mitmproxy") is not None


def test_an_error_from_any_command_goes_through_the_one_policy(tmp_path: Path) -> None:
    """Every command, one real failure each: exit 1, the message alone on stderr, no traceback.

    A SafeGateError prints as `safegate COMMAND: message`; a ConfigError as `file:line: message`.
    """
    cfg = config(tmp_path)
    missing = tmp_path / "missing.yaml"
    (tmp_path / "var" / "ledger.sqlite3").write_text("not a database\n")
    (tmp_path / "var" / "reports.sqlite3").write_text("not a database\n")
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "feed.key").write_text("")
    proxy = ((["proxy", "-c", str(missing)], f"{missing}: file not found\n")
             if _mitmproxy_installed() else
             (["proxy", "-c", str(cfg)], "safegate proxy: needs mitmproxy"))
    cases: list[tuple[list[str], str]] = [
        (["run", "-c", str(missing)], f"{missing}: file not found\n"),
        (["check", "-c", str(missing)], f"{missing}: file not found\n"),
        (["explain", "-c", str(cfg), "1.2.3", "a.example"],
         "safegate explain: '1.2.3' is not an IP address\n"),
        (["feed", "keygen", "--out", str(tmp_path / "keys")],
         f"safegate feed: {tmp_path / 'keys' / 'feed.key'} exists"),
        (["feed", "add", "-c", str(missing)],
         "safegate feed: --type and --value are required (or --file)\n"),
        (["feeds", "confirm", "-c", str(cfg), "--feed", "nope"],
         f"safegate feeds: no feed named 'nope' in {cfg}\n"),
        (["report", "-c", str(cfg), "--from", "2026-02-30", "--to", "2026-03-01"],
         "safegate report: --from: '2026-02-30' is not YYYY-MM-DD or an ISO 8601 time\n"),
        (["probe", "--resolver", "127.0.0.1:x", "--feed", "http://feed.invalid/",
          "--public-key", str(missing)], "safegate probe: --resolver '127.0.0.1:x': bad port"),
        (["export", "rpz", "-c", str(cfg)],
         "safegate export: ledger database error: file is not a database\n"),
        proxy,
        (["reports", "list", "-c", str(cfg)],
         "safegate reports: cannot read the reports database: file is not a database\n"),
        (["schema", "--write", "--root", str(tmp_path)],
         f"safegate schema: {tmp_path / 'docs' / 'configuration.md'} not found"),
        (["admin", "passwd", "-c", str(cfg), "--password-stdin"],
         f"safegate admin: {cfg} has no admin: section (see docs/admin.md)\n"),
    ]
    import argparse

    from gateway.cli import build_parser

    registered = {command for a in build_parser()._actions
                  if isinstance(a, argparse._SubParsersAction) for command in a.choices}
    assert {argv[0] for argv, _ in cases} == registered
    for argv, message in cases:
        r = safegate(*argv)
        assert (r.returncode, r.stdout) == (1, ""), (argv, r.stdout, r.stderr)
        assert r.stderr.startswith(message) and r.stderr.count("\n") == 1, (argv, r.stderr)


def test_the_group_table_names_the_commands_each_group_registers() -> None:
    """cli.GROUPS (command -> module, used to import one group only) matches `register`."""
    import argparse

    from gateway.cli import GROUPS, command_groups

    for name, commands in GROUPS:
        (group,) = command_groups(commands[0])
        assert group.__name__ == f"gateway.cli.{name}"
        sub = argparse.ArgumentParser().add_subparsers()
        group.register(sub)
        assert tuple(sub.choices) == commands, name


def test_safegate_run_imports_no_other_command_group(tmp_path: Path) -> None:
    """A serving process holds the serving code only: the report, export, probe, feed-client
    and reports groups (the compliance code, the feed ledger, cryptography) were ~11 MB of RSS."""
    import subprocess
    import sys

    missing = str(tmp_path / "no.yaml")
    code = ("import sys\nfrom gateway.cli import main\n"
            f"assert main(['--log-level', 'error', 'run', '-c', {missing!r}]) == 1\n"
            "print(' '.join(sorted(m for m in sys.modules if m.startswith('gateway.cli')"
            " or m in ('gateway.compliance.export', 'gateway.feeds.ledger'))))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=REPO, check=True, timeout=60).stdout.split()
    assert out == ["gateway.cli", "gateway.cli.gateway"]
