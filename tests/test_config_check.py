"""`safegate check` on broken configuration files: each says file:line and what is wrong.

Issue #10 items 5, 6 and 14: empty files, NUL bytes, devices/FIFOs/directories where a file
belongs, files past limits.files.*, `answer: null`, and errors that named no line.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from tests.support.cli import check, config, safegate
from tests.support.data import POLICY


def policy_path(tmp_path: Path) -> Path:
    return tmp_path / "policies" / "p.yaml"


def edit_gateway(cfg: Path, **changes: object) -> None:
    doc = yaml.safe_load(cfg.read_text())
    doc.update(changes)
    cfg.write_text(yaml.safe_dump(doc, sort_keys=False))


def gateway_line(cfg: Path, key: str) -> int:
    """The line of `key:` at the top level of the gateway.yaml written by the tests."""
    for n, text in enumerate(cfg.read_text().splitlines(), 1):
        if text.startswith(f"{key}:"):
            return n
    raise AssertionError(f"{key} not in {cfg}")


# ---------------------------------------------------------------- item 5: empty policy files


@pytest.mark.parametrize("text", ["", "\n\n", "# every network was here\n", "---\n", "~\n"])
def test_an_empty_policy_file_is_an_error(tmp_path: Path, text: str) -> None:
    rc, out, err = check(config(tmp_path, policy=text))
    assert rc == 1 and "OK" not in out
    assert f"{policy_path(tmp_path)}: policy file is empty" in err.splitlines()


def test_run_refuses_to_start_on_an_empty_policy_file(tmp_path: Path) -> None:
    cfg = config(tmp_path, policy="")
    r = safegate("run", "-c", str(cfg))   # exits at once; the 60 s timeout is a bound only
    assert r.returncode == 1
    assert f"{policy_path(tmp_path)}: policy file is empty" in r.stderr.splitlines()


def test_policies_that_define_no_network_are_an_error(tmp_path: Path) -> None:
    cfg = config(tmp_path, policy="tiers:\n  kids: {block: [adult]}\n")
    rc, _, err = check(cfg)
    assert rc == 1
    assert err.strip() == (f"{cfg}:{gateway_line(cfg, 'policies') + 1}: no network is defined "
                           f"(policy files: {policy_path(tmp_path)}): every client would be "
                           "REFUSED")
    policy_path(tmp_path).unlink()   # an empty policies/ directory: the same, said so
    rc, _, err = check(cfg)
    assert rc == 1
    assert err.strip() == (f"{cfg}:{gateway_line(cfg, 'policies') + 1}: no network is defined "
                           f"(no *.yaml or *.yml file in {tmp_path / 'policies'}): every client "
                           "would be REFUSED")
    # A DoH token (or a subscribers file) gives clients a tier without a network: fine.
    cfg = config(tmp_path / "t", policy="tiers:\n  kids: {block: [adult]}\n"
                                        "tokens:\n  - {token: k7f3q9x, tier: kids}\n")
    rc, out, err = check(cfg)
    assert rc == 0, err
    assert "OK: 1 tiers, 0 networks" in out


# ---------------------------------------------------------------- item 14e: empty gateway.yaml


@pytest.mark.parametrize("text", ["", "# nothing yet\n"])
def test_an_empty_gateway_yaml_is_an_error(tmp_path: Path, text: str) -> None:
    cfg = config(tmp_path)
    cfg.write_text(text)
    rc, _, err = check(cfg)
    assert rc == 1
    assert err.strip() == f"{cfg}: gateway.yaml is empty; see deploy/example/gateway.yaml"


def test_an_explicit_empty_mapping_is_not_the_empty_file_error(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    cfg.write_text("{}\n")
    _, _, err = check(cfg)
    assert "is empty" not in err


# ---------------------------------------------------------------- item 6: NUL bytes


def test_a_nul_byte_in_a_policy_file_names_file_and_line(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    p = policy_path(tmp_path)
    p.write_bytes(POLICY.encode().replace(b"teens: {", b"teens: {\x00", 1))
    rc, _, err = check(cfg)
    assert rc == 1
    assert err.strip() == (f"{p}:3: non-printable character '\\x00' (#x0000) is not allowed "
                           "in YAML (is this a text file?)")


# ---------------------------------------------------------------- item 14a: size and file type


def test_a_device_named_as_a_policy_file_is_refused_without_reading_it(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    edit_gateway(cfg, policies=["/dev/zero"])
    rc, _, err = check(cfg)
    assert rc == 1
    assert err.strip() == (f"{cfg}:{gateway_line(cfg, 'policies') + 1}: policies: /dev/zero is "
                           "not a regular file (a device, FIFO or socket)")
    assert "MemoryError" not in err and "Traceback" not in err


def test_a_fifo_in_the_policies_directory_does_not_hang_check(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    fifo = tmp_path / "policies" / "q.yaml"
    os.mkfifo(fifo)   # nobody ever writes: an open() without O_NONBLOCK would wait forever
    rc, _, err = check(cfg)   # safegate() has a 60 s timeout: a hang fails the test
    assert rc == 1
    assert f"{fifo}: is not a regular file (a device, FIFO or socket)" in err.splitlines()


@pytest.mark.parametrize("which", ["policy", "lists.yaml", "subscribers.yaml"])
def test_config_files_past_config_bytes_are_refused(tmp_path: Path, which: str) -> None:
    (tmp_path / "subscribers.yaml").write_text("- {prefix: 10.9.0.0/16, tier: kids}\n")
    cfg = config(tmp_path, extra={"limits": {"files": {"config_bytes": 2000}},
                                  "subscribers": "subscribers.yaml"})
    target = {"policy": policy_path(tmp_path),
              "lists.yaml": tmp_path / "blocklists" / "lists.yaml",
              "subscribers.yaml": tmp_path / "subscribers.yaml"}[which]
    rc, _, err = check(cfg)
    assert rc == 0, err   # all of them fit
    with target.open("a") as f:
        f.write("# padding\n" * 200)   # 2000 bytes more
    rc, _, err = check(cfg)
    assert rc == 1
    assert f"{target}: larger than 2000 bytes (limits.files.config_bytes)" in err.splitlines()


def test_gateway_yaml_itself_is_bounded_by_the_default(tmp_path: Path) -> None:
    from gateway.config.limits import FileLimits

    cfg = config(tmp_path)
    limit = FileLimits().config_bytes
    with cfg.open("a") as f:
        f.write(("#" * 1023 + "\n") * (limit // 1024 + 1))
    rc, _, err = check(cfg)
    assert rc == 1
    assert err.strip() == f"{cfg}: larger than {limit} bytes (limits.files.config_bytes)"


def test_a_list_file_past_list_bytes_is_refused(tmp_path: Path) -> None:
    cfg = config(tmp_path, extra={"limits": {"files": {"list_bytes": 300}}})
    rc, _, err = check(cfg)
    assert rc == 0, err
    adult = tmp_path / "blocklists" / "adult.txt"
    with adult.open("a") as f:
        f.write("".join(f"n{i}.adult.example\n" for i in range(20)))
    rc, _, err = check(cfg)
    assert rc == 1
    assert err.strip() == f"{adult}: larger than 300 bytes (limits.files.list_bytes)"


@pytest.mark.parametrize(
    ("make", "problem"),
    [
        (lambda p: p.mkdir(), "is a directory (expected a file)"),
        (lambda p: os.mkfifo(p), "is not a regular file (a device, FIFO or socket)"),
        (lambda p: p.symlink_to("/dev/zero"), "is not a regular file (a device, FIFO or socket)"),
    ],
    ids=["directory", "fifo", "dev-zero"],
)
def test_a_list_path_that_is_not_a_file_says_what_it_is(tmp_path: Path,
                                                        make: Callable[[Path], None],
                                                        problem: str) -> None:
    cfg = config(tmp_path)
    adult = tmp_path / "blocklists" / "adult.txt"
    adult.unlink()
    make(adult)
    rc, _, err = check(cfg)
    assert rc == 1
    assert err.strip() == f"{tmp_path / 'blocklists' / 'lists.yaml'}:3: list file {adult} {problem}"


def test_a_subscribers_csv_past_subscribers_bytes_or_a_device_is_refused(tmp_path: Path) -> None:
    subs = tmp_path / "subscribers.csv"
    subs.write_text("prefix,tier\n2001:db8:1200::/56,kids\n")
    cfg = config(tmp_path, extra={"subscribers": "subscribers.csv",
                                  "limits": {"files": {"subscribers_bytes": 40}}})
    rc, _, err = check(cfg)
    assert rc == 0, err
    with subs.open("a") as f:
        f.write("2001:db8:1300::/56,kids\n")
    rc, _, err = check(cfg)
    assert rc == 1
    assert err.strip() == f"{subs}: larger than 40 bytes (limits.files.subscribers_bytes)"
    edit_gateway(cfg, subscribers="/dev/zero")
    rc, _, err = check(cfg)
    assert rc == 1
    assert err.strip() == (f"{cfg}:{gateway_line(cfg, 'subscribers')}: subscribers: file "
                           "/dev/zero is not a regular file (a device, FIFO or socket)")


# ---------------------------------------------------------------- item 14c: answer: null


@pytest.mark.parametrize("spelling", ["null", "~", '"null"'])
def test_answer_null_is_the_null_answer_mode(tmp_path: Path, spelling: str) -> None:
    cfg = config(tmp_path, policy=POLICY.replace('answer: "null"', f"answer: {spelling}"))
    rc, _, err = check(cfg)
    assert rc == 0, err
    r = safegate("explain", "-c", str(cfg), "127.0.0.3", "x.adult-site.test", "--json")
    out = json.loads(r.stdout)
    assert (out["tier"], out["verdict"], out["answer"]) == ("zero", "blocked", "null")


# ---------------------------------------------------------------- item 14d: errors with no line


def _append_gateway(text: str) -> Callable[[Path], None]:
    def edit(d: Path) -> None:
        cfg = d / "gateway.yaml"
        cfg.write_text(cfg.read_text() + text)
    return edit


def _write(rel: str, data: bytes) -> Callable[[Path], None]:
    def edit(d: Path) -> None:
        (d / rel).write_bytes(data)
    return edit


def _gateway(**changes: object) -> Callable[[Path], None]:
    return lambda d: edit_gateway(d / "gateway.yaml", **changes)


def _subscribers_csv(data: bytes) -> Callable[[Path], None]:
    def edit(d: Path) -> None:
        _write("s.csv", data)(d)
        edit_gateway(d / "gateway.yaml", subscribers="s.csv")
    return edit


# (what to break, the exact error line; {d} is the config directory). Each of these printed
# no line before (or no file at all, or a traceback).
NO_LINE_BEFORE = [
    ("policy-scalar-root", _write("policies/p.yaml", b"# a policy\n\n42\n"),
     "{d}/policies/p.yaml:3: expected a mapping or a list, got int 42"),
    ("lists-scalar-root", _write("blocklists/lists.yaml", b"5\n"),
     "{d}/blocklists/lists.yaml:1: expected a mapping or a list, got int 5"),
    ("policy-not-utf8", _write("policies/p.yaml", POLICY.encode().replace(b"staff", b"st\xffff")),
     "{d}/policies/p.yaml:5: not UTF-8 text (invalid start byte)"),
    ("gateway-control-char", _append_gateway("timezone: \x01\n"),
     "{d}/gateway.yaml:{last}: non-printable character '\\x01' (#x0001) is not allowed in "
     "YAML (is this a text file?)"),
    ("policies-entry-missing", _gateway(policies=["policies/p.yaml", "nope.yaml"]),
     "{d}/gateway.yaml:{policies+2}: policies: {d}/nope.yaml not found"),
    ("policies-empty", _gateway(policies=[]),
     "{d}/gateway.yaml:{policies}: policies lists no file or directory"),
    ("blocklists-missing", _gateway(blocklists="nope.yaml"),
     "{d}/gateway.yaml:{blocklists}: blocklists: {d}/nope.yaml not found"),
    ("blocklists-directory", _gateway(blocklists="policies"),
     "{d}/gateway.yaml:{blocklists}: blocklists: {d}/policies is a directory (expected a file)"),
    ("subscribers-csv-not-utf8", _subscribers_csv(b"10.1.0.0/16,kids\n10.2.0.0/16,k\xe9\n"),
     "{d}/s.csv:2: not UTF-8 text (invalid continuation byte)"),
    ("policy-nested-deeply", _write("policies/p.yaml", b"tiers: " + b"[" * 600 + b"]" * 600),
     "{d}/policies/p.yaml: YAML nested too deeply"),
]


@pytest.mark.parametrize(("name", "edit", "expected"), NO_LINE_BEFORE,
                         ids=[n for n, _, _ in NO_LINE_BEFORE])
def test_errors_name_file_and_line(tmp_path: Path, name: str, edit: Callable[[Path], None],
                                   expected: str) -> None:
    cfg = config(tmp_path)
    edit(tmp_path)
    lines = {"d": str(tmp_path), "last": str(len(cfg.read_text().splitlines()))}
    for key in ("policies", "blocklists"):
        if f"{{{key}" in expected:
            lines[key] = str(gateway_line(cfg, key))
            lines[f"{key}+2"] = str(gateway_line(cfg, key) + 2)
    for key, value in lines.items():
        expected = expected.replace("{" + key + "}", value)
    rc, _, err = check(cfg)
    assert rc == 1
    assert err.strip() == expected
