"""What stands between a submitted form and the database: CSRF tokens and a rate limit.

The token is an HMAC of its issue time under a secret kept in state_dir (0600), so the proxy
process can mint tokens for the pages it renders too. The rate limit keeps client addresses
in memory only, for the window's length, and never writes them anywhere.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections import OrderedDict, deque
from pathlib import Path

SECRET_FILE = "reports-csrf.key"
TOKEN_TTL = 6 * 3600.0     # a block page may stay open in a tab for a school morning
CLOCK_SKEW = 60.0


def load_secret(state_dir: Path) -> bytes:
    """The secret in state_dir, created on first use (readable by this user only)."""
    path = state_dir / SECRET_FILE
    try:
        return bytes.fromhex(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        pass
    state_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32) + "\n")
    os.replace(tmp, path)
    return bytes.fromhex(path.read_text().strip())


class CsrfTokens:
    """Stateless tokens `<unix time>.<hmac>`; valid for TOKEN_TTL after issue."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def _mac(self, ts: str) -> str:
        return hmac.new(self._secret, b"report:" + ts.encode(), hashlib.sha256).hexdigest()[:32]

    def issue(self, now: float) -> str:
        ts = str(int(now))
        return f"{ts}.{self._mac(ts)}"

    def valid(self, token: str, now: float) -> bool:
        ts, _, mac = token.partition(".")
        if not ts.isdigit() or not hmac.compare_digest(mac, self._mac(ts)):
            return False
        return now - TOKEN_TTL <= int(ts) <= now + CLOCK_SKEW


class RateLimiter:
    """At most `limit` accepted submissions per address per `window` seconds (sliding)."""

    def __init__(self, limit: int = 5, window: float = 600.0, max_clients: int = 10_000) -> None:
        self.limit = limit
        self.window = window
        self.max_clients = max_clients
        self._seen: OrderedDict[str, deque[float]] = OrderedDict()

    def allow(self, address: str, now: float) -> bool:
        """True (and counted) if `address` is under its limit right now."""
        times = self._seen.pop(address, None)
        if times is None:
            times = deque()
        while times and times[0] <= now - self.window:
            times.popleft()
        allowed = len(times) < self.limit
        if allowed:
            times.append(now)
        if times:
            self._seen[address] = times   # most recent last: eviction drops the stalest
        while len(self._seen) > self.max_clients:
            self._seen.popitem(last=False)
        return allowed
