"""The admin page's guards, one piece at a time: the scrypt password file, the session table
(bounded, expiring), the CSRF comparison and the per-address lockout (bounded table). The
browser test (test_admin_browser.py) runs them together against a real gateway."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from gateway.admin.auth import (
    Lockout,
    Sessions,
    csrf_ok,
    hash_password,
    read_password_file,
    source_key,
    verify_password,
    write_password_file,
)
from gateway.config.limits import AdminLimits
from gateway.errors import SafeGateError


class Clock:
    """The one fake: time."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_password_file_is_a_salted_scrypt_hash_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "var" / "admin.passwd"
    write_password_file(path, "correct horse battery")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    stored = read_password_file(path)
    assert stored is not None and stored.startswith("scrypt$16384$8$1$")
    assert "correct horse" not in stored
    assert verify_password("correct horse battery", stored)
    assert not verify_password("correct horse batterY", stored)
    # Same password, new salt: the two lines differ.
    assert hash_password("correct horse battery", n=1024) != hash_password(
        "correct horse battery", n=1024)


def test_short_password_refused_and_garbage_file_never_verifies(tmp_path: Path) -> None:
    with pytest.raises(SafeGateError, match="at least 8"):
        write_password_file(tmp_path / "p", "short")
    assert not (tmp_path / "p").exists()
    assert read_password_file(tmp_path / "missing") is None
    for garbage in ("", "plain", "scrypt$x$8$1$AA==$AA==", "md5$1$2$3$4$5"):
        assert not verify_password("anything", garbage)


def test_sessions_are_bounded_and_expire() -> None:
    clock = Clock()
    sessions = Sessions(AdminLimits(sessions=3, session_lifetime=60.0), clock)
    tokens = [sessions.create()[0] for _ in range(5)]
    assert len(sessions) == 3                       # the two oldest were dropped
    assert sessions.get(tokens[0]) is None and sessions.get(tokens[1]) is None
    assert sessions.get(tokens[4]) is not None
    assert sessions.get("forged") is None and sessions.get(None) is None
    clock.now += 60.0
    assert sessions.get(tokens[4]) is None          # lifetime over
    token, _ = sessions.create()
    sessions.end(token)
    assert sessions.get(token) is None


def test_csrf_token_must_match_the_session() -> None:
    sessions = Sessions(AdminLimits())
    _, one = sessions.create()
    _, two = sessions.create()
    assert csrf_ok(one, one.csrf)
    assert not csrf_ok(one, two.csrf)
    assert not csrf_ok(one, None) and not csrf_ok(one, "") and not csrf_ok(one, 42)


def test_lockout_after_five_failures_for_fifteen_minutes() -> None:
    clock = Clock()
    lockout = Lockout(AdminLimits(), clock)
    for _ in range(4):
        lockout.failed("192.0.2.1")
    assert not lockout.locked("192.0.2.1")
    lockout.failed("192.0.2.1")
    assert lockout.locked("192.0.2.1")
    assert not lockout.locked("192.0.2.2")          # per source address
    clock.now += 899.0
    assert lockout.locked("192.0.2.1")
    clock.now += 1.0
    assert not lockout.locked("192.0.2.1")
    # After the lock, a fresh count: five more failures lock it again.
    for _ in range(5):
        lockout.failed("192.0.2.1")
    assert lockout.locked("192.0.2.1")
    lockout.succeeded("192.0.2.2")
    assert lockout.locked("192.0.2.1")


def test_lockout_counts_an_ipv6_client_by_its_64() -> None:
    lockout = Lockout(AdminLimits(lockout_failures=2), Clock())
    lockout.failed("2001:db8:1:2::1")
    lockout.failed("2001:db8:1:2::ffff")            # another address of the same /64
    assert lockout.locked("2001:db8:1:2::99")
    assert not lockout.locked("2001:db8:1:3::1")
    assert source_key("2001:db8:1:2::1") == "2001:db8:1:2::/64"


def test_lockout_table_is_bounded() -> None:
    lockout = Lockout(AdminLimits(lockout_table=100), Clock())
    for i in range(1000):
        lockout.failed(f"10.0.{i // 256}.{i % 256}")
    assert len(lockout) == 100
