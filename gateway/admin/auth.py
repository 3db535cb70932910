"""Who may use the admin page: the password file, sessions with their CSRF token, and the
lockout of an address that keeps guessing.

Everything is bounded (limits.admin): the session table drops its oldest entry when full, the
lockout table forgets its oldest address. Sessions live in memory only: a restart logs out.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import os
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gateway.config.limits import AdminLimits
from gateway.errors import SafeGateError
from gateway.util.atomic import atomic_write

# scrypt at N=2^14, r=8: 16 MiB and some tens of ms per check, affordable on a Raspberry Pi
# and costly for anyone who copied the file and guesses offline.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2 ** 14, 8, 1
_MAXMEM = 64 * 1024 * 1024
MIN_PASSWORD = 8


def hash_password(password: str, *, n: int = SCRYPT_N) -> str:
    """`scrypt$N$r$p$salt$hash` (base64): one line, the whole password file."""
    salt = os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=n, r=SCRYPT_R, p=SCRYPT_P,
                            maxmem=_MAXMEM)
    return "$".join(("scrypt", str(n), str(SCRYPT_R), str(SCRYPT_P),
                     base64.b64encode(salt).decode(), base64.b64encode(digest).decode()))


def verify_password(password: str, stored: str) -> bool:
    """Constant-time comparison against a `hash_password` line; False for a malformed one."""
    try:
        kind, n, r, p, salt, digest = stored.strip().split("$")
        if kind != "scrypt":
            return False
        want = base64.b64decode(digest)
        got = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), n=int(n),
                             r=int(r), p=int(p), maxmem=_MAXMEM, dklen=len(want))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, want)


def write_password_file(path: Path, password: str) -> None:
    """Mode 0600 from the first byte, replaced atomically (`safegate admin passwd`)."""
    if len(password) < MIN_PASSWORD:
        raise SafeGateError(f"the password needs at least {MIN_PASSWORD} characters")
    atomic_write(path, hash_password(password) + "\n", mode=0o600)


def read_password_file(path: Path) -> str | None:
    """The stored hash, or None when no password was set yet (the page then says how)."""
    try:
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return text or None


@dataclass
class Session:
    csrf: str
    expires: float


class Sessions:
    """Random cookie token -> session; at most `limits.sessions`, each for session_lifetime."""

    def __init__(self, limits: AdminLimits, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self.clock = clock
        self._table: OrderedDict[str, Session] = OrderedDict()

    def __len__(self) -> int:
        return len(self._table)

    def create(self) -> tuple[str, Session]:
        while len(self._table) >= self.limits.sessions:
            self._table.popitem(last=False)
        token = secrets.token_urlsafe(32)
        session = Session(secrets.token_urlsafe(32),
                          self.clock() + self.limits.session_lifetime)
        self._table[token] = session
        return token, session

    def get(self, token: str | None) -> Session | None:
        if not token:
            return None
        session = self._table.get(token)
        if session is None:
            return None
        if self.clock() >= session.expires:
            del self._table[token]
            return None
        return session

    def end(self, token: str | None) -> None:
        if token:
            self._table.pop(token, None)


def csrf_ok(session: Session, sent: object) -> bool:
    return isinstance(sent, str) and hmac.compare_digest(sent.encode(), session.csrf.encode())


def source_key(address: str) -> str:
    """What a lockout counts against: the address, or its /64 for IPv6 (one host's range)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if ip.version == 6:
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


class Lockout:
    """Failed logins per source; `lockout_failures` of them lock it for `lockout_seconds`."""

    def __init__(self, limits: AdminLimits, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self.clock = clock
        self._table: OrderedDict[str, tuple[int, float]] = OrderedDict()  # failures, until

    def __len__(self) -> int:
        return len(self._table)

    def locked(self, address: str) -> bool:
        entry = self._table.get(source_key(address))
        return entry is not None and entry[1] > self.clock()

    def failed(self, address: str) -> None:
        key = source_key(address)
        failures, until = self._table.pop(key, (0, 0.0))
        if until and until <= self.clock():
            failures, until = 0, 0.0      # the lock ran out: a fresh count
        failures += 1
        if failures >= self.limits.lockout_failures:
            until = self.clock() + self.limits.lockout_seconds
        while len(self._table) >= self.limits.lockout_table:
            self._table.popitem(last=False)
        self._table[key] = (failures, until)

    def succeeded(self, address: str) -> None:
        self._table.pop(source_key(address), None)
