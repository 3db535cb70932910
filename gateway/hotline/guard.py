"""What stands between a submitted form and the database: CSRF tokens and a rate limit.

A token is an HMAC of its expiry, a nonce and the address it was issued to, under a secret
kept in state_dir (0600), so the proxy process can mint tokens for the pages it renders too and
nothing per client is stored to check one. A token posted from another address, or after its
lifetime, is refused; one that was used is remembered (bounded, until it expires) and refused
again. The rate limit counts per IPv4 /24 and IPv6 /56, in memory only, and never writes an
address anywhere.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
from collections import OrderedDict, deque
from pathlib import Path

from gateway.config.limits import ReportLimits
from gateway.util.atomic import atomic_write

SECRET_FILE = "reports-csrf.key"
CLOCK_SKEW = 60.0
MAX_TOKEN = 64             # "<expiry>.<nonce>.<mac>" is 52 characters; more is not ours
HOUR = 3600.0


def load_secret(state_dir: Path) -> bytes:
    """The secret in state_dir, created on first use (readable by this user only)."""
    path = state_dir / SECRET_FILE
    try:
        return bytes.fromhex(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        pass
    atomic_write(path, secrets.token_hex(32) + "\n", mode=0o600)
    return bytes.fromhex(path.read_text().strip())


def _ip(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address, with IPv4-mapped IPv6 (a dual-stack socket's view) as plain IPv4."""
    try:
        ip = ipaddress.ip_address(address.strip("[]"))
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def canonical(address: str) -> str:
    """One spelling per address, so that the proxy's and the gateway's views agree."""
    ip = _ip(address)
    return str(ip) if ip is not None else ""


class CsrfTokens:
    """Stateless tokens `<expiry>.<nonce>.<hmac>`, valid from the address they were issued to
    until their expiry (`lifetime` after issue)."""

    def __init__(self, secret: bytes, lifetime: float) -> None:
        self._secret = secret
        self.lifetime = lifetime

    def _mac(self, expiry: str, nonce: str, address: str) -> str:
        msg = f"report:{expiry}:{nonce}:{canonical(address)}".encode()
        return hmac.new(self._secret, msg, hashlib.sha256).hexdigest()[:32]

    def issue(self, address: str, now: float) -> str:
        expiry = str(int(now + self.lifetime))
        nonce = secrets.token_hex(4)
        return f"{expiry}.{nonce}.{self._mac(expiry, nonce, address)}"

    def expiry(self, token: str, address: str, now: float) -> int | None:
        """The token's expiry if it is genuine, unexpired and was issued to `address`."""
        if len(token) > MAX_TOKEN:
            return None
        expiry, _, rest = token.partition(".")
        nonce, _, mac = rest.partition(".")
        if not expiry.isdigit() or not nonce.isalnum():
            return None
        if not hmac.compare_digest(mac.encode(), self._mac(expiry, nonce, address).encode()):
            return None
        # A token from a longer lifetime (before a config change) lives no longer than a new one.
        if not now <= int(expiry) <= now + self.lifetime + CLOCK_SKEW:
            return None
        return int(expiry)


class SpentTokens:
    """Tokens already used, until their expiry; at most `size` (the oldest are forgotten,
    after which the rate limit is still what bounds a replay)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._spent: OrderedDict[str, int] = OrderedDict()

    def __len__(self) -> int:
        return len(self._spent)

    def __contains__(self, token: str) -> bool:
        return token in self._spent

    def spend(self, token: str, expiry: int, now: float) -> bool:
        """True the first time `token` is spent, False if it was already."""
        while self._spent:
            oldest = next(iter(self._spent))
            if self._spent[oldest] >= now:
                break
            del self._spent[oldest]
        if token in self._spent:
            return False
        self._spent[token] = expiry
        while len(self._spent) > self.size:
            self._spent.popitem(last=False)
        return True


def prefix_of(address: str) -> str:
    """The network a rate limit counts: the IPv4 /24 or IPv6 /56 around `address`."""
    ip = _ip(address)
    if ip is None:
        return ""      # unreadable (fail closed): every such client shares one allowance
    bits = 24 if ip.version == 4 else 56
    return str(ipaddress.ip_network(f"{ip}/{bits}", strict=False))


class RateLimiter:
    """At most `per_v4_24` (`per_v6_56`) accepted submissions per IPv4 /24 (IPv6 /56) in any
    hour (sliding); at most `prefixes` networks tracked, the stalest forgotten beyond."""

    def __init__(self, limits: ReportLimits, window: float = HOUR) -> None:
        self.limits = limits
        self.window = window
        self._seen: OrderedDict[str, deque[float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._seen)

    def allow(self, address: str, now: float) -> bool:
        """True (and counted) if the network around `address` is under its limit right now."""
        key = prefix_of(address)
        limit = self.limits.per_v6_56 if ":" in key else self.limits.per_v4_24
        times = self._seen.pop(key, None)
        if times is None:
            times = deque()
        while times and times[0] <= now - self.window:
            times.popleft()
        allowed = len(times) < limit
        if allowed:
            times.append(now)
        if times:
            self._seen[key] = times   # most recent last: eviction drops the stalest
        while len(self._seen) > self.limits.prefixes:
            self._seen.popitem(last=False)
        return allowed
