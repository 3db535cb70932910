"""Per-gateway tokens issued by the publisher, and one-time enrollment codes.

Beside publisher.yaml's hand-kept `gateways:` list (still fine for a few gateways), the
publisher issues tokens itself (`safegate feed gateways add`, POST /v1/gateways). A token is
shown once and stored only as its SHA-256: a copy of the database (a backup, a replica) lets
nobody ack as a school. A school that cannot be sent a 43-character secret gets a short code
instead (XXXX-XXXX-XXXX-XXXX, Crockford base32: no I, L, O, U to misread), which
`safegate feeds enroll CODE` exchanges once for a token before it expires.

Every check reads the database, so a revocation made by the CLI or by another publisher
process takes effect on the very next request. Failed code attempts are rate limited
(limits.enroll_failures_per_minute); outstanding codes are bounded (limits.enroll_codes).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from gateway.errors import SafeGateError
from gateway.publisher.db import Database

SCHEMA = """
CREATE TABLE IF NOT EXISTS gateway_tokens (gateway TEXT PRIMARY KEY,
  token_hash TEXT NOT NULL UNIQUE, created_at REAL NOT NULL, revoked_at REAL);
CREATE TABLE IF NOT EXISTS enroll_codes (code_hash TEXT PRIMARY KEY, gateway TEXT NOT NULL,
  created_at REAL NOT NULL, expires_at REAL NOT NULL, used_at REAL);
"""
ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"   # Crockford base32
CODE_GROUPS, GROUP_LEN = 4, 4                    # 16 characters: 80 bits
DEFAULT_CODE_HOURS = 168.0
# safegate_publisher_enroll_attempts_total{result}
ATTEMPT_RESULTS = ("enrolled", "unknown", "expired", "used", "rate_limited")
_READ_AS = str.maketrans({"O": "0", "I": "1", "L": "1"})


class EnrollError(SafeGateError):
    """Refused: `kind` is conflict, not_found, invalid, limit, unknown, expired or used."""

    def __init__(self, message: str, kind: str) -> None:
        self.kind = kind
        super().__init__(message)


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_token() -> str:
    return secrets.token_urlsafe(32)


def new_code() -> str:
    chars = "".join(secrets.choice(ALPHABET) for _ in range(CODE_GROUPS * GROUP_LEN))
    return "-".join(chars[i:i + GROUP_LEN] for i in range(0, len(chars), GROUP_LEN))


def normalize_code(text: str) -> str:
    """What a person typed, as issued: case, spaces and dashes do not matter; O/I/L read as
    0/1 (Crockford)."""
    chars = "".join(c for c in text.upper() if c not in " -\t").translate(_READ_AS)
    return "-".join(chars[i:i + GROUP_LEN] for i in range(0, len(chars), GROUP_LEN))


@dataclass(frozen=True)
class EnrolledGateway:
    gateway: str
    state: str                  # active | revoked | pending (a code, no token yet)
    created_at: float
    revoked_at: float | None = None
    code_expires_at: float | None = None


@dataclass(frozen=True)
class TokenCheck:
    """The gateway a token belongs to, or why it does not (revoked: its id, for the 401)."""

    gateway: str | None
    revoked: str | None = None


class GatewayTokens:
    """The two tables on the publisher's connection (SQLite or PostgreSQL)."""

    def __init__(self, db: Database, max_codes: int, clock: Callable[[], float] = time.time
                 ) -> None:
        self.db = db
        self.max_codes = max_codes
        self.clock = clock
        db.executescript(SCHEMA)

    def check(self, token: str) -> TokenCheck:
        """Who bears `token` (looked up by its hash: timing says nothing about the token)."""
        want = digest(token)
        row = self.db.execute("SELECT gateway, token_hash, revoked_at FROM gateway_tokens "
                              "WHERE token_hash=?", (want,)).fetchone()
        if row is None or not hmac.compare_digest(str(row[1]), want):
            return TokenCheck(None)
        if row[2] is not None:
            return TokenCheck(None, str(row[0]))
        return TokenCheck(str(row[0]))

    def active(self) -> list[str]:
        return [str(r[0]) for r in self.db.execute(
            "SELECT gateway FROM gateway_tokens WHERE revoked_at IS NULL ORDER BY gateway")]

    def issue(self, gateway: str, static: set[str]) -> str:
        """A new token for a new (or revoked) gateway; returns it (shown once)."""
        token = new_token()
        with self.db.write() as db:
            self._check_new(db, gateway, static)
            db.execute("DELETE FROM gateway_tokens WHERE gateway=?", (gateway,))
            db.execute("INSERT INTO gateway_tokens (gateway, token_hash, created_at) "
                       "VALUES (?,?,?)", (gateway, digest(token), self.clock()))
        return token

    def issue_code(self, gateway: str, static: set[str], hours: float = DEFAULT_CODE_HOURS
                   ) -> tuple[str, float]:
        """A one-time code for `gateway`; returns (code, expires_at)."""
        if not 0 < hours <= 24 * 365:
            raise EnrollError("a code expires after more than 0 and at most 8760 hours",
                              "invalid")
        code, now = new_code(), self.clock()
        with self.db.write() as db:
            self._check_new(db, gateway, static)
            db.execute("DELETE FROM enroll_codes WHERE expires_at<=? OR used_at IS NOT NULL",
                       (now,))
            outstanding = int(db.execute("SELECT count(*) FROM enroll_codes").fetchone()[0])
            if outstanding >= self.max_codes:
                raise EnrollError(f"{outstanding} enrollment codes are outstanding "
                                  f"(limits.enroll_codes = {self.max_codes}); wait for them "
                                  "to be used or expire, or revoke some", "limit")
            db.execute("INSERT INTO enroll_codes (code_hash, gateway, created_at, expires_at) "
                       "VALUES (?,?,?,?)", (digest(code), gateway, now, now + hours * 3600))
        return code, now + hours * 3600

    @staticmethod
    def _check_new(db: Database, gateway: str, static: set[str]) -> None:
        if gateway in static:
            raise EnrollError(f"gateway {gateway!r} has a token in publisher.yaml (gateways:); "
                              "remove it there first", "conflict")
        row = db.execute("SELECT revoked_at FROM gateway_tokens WHERE gateway=?",
                         (gateway,)).fetchone()
        if row is not None and row[0] is None:
            raise EnrollError(f"gateway {gateway!r} already has a token (revoke it first to "
                              "issue a new one)", "conflict")

    def redeem(self, code: str) -> tuple[str, str]:
        """Exchange a code for (gateway, token); single use. EnrollError(kind unknown,
        expired or used) otherwise."""
        want, now, token = digest(normalize_code(code)), self.clock(), new_token()
        with self.db.write() as db:
            row = db.execute("SELECT gateway, expires_at, used_at FROM enroll_codes "
                             "WHERE code_hash=?", (want,)).fetchone()
            if row is None:
                raise EnrollError("unknown enrollment code (check what you typed)", "unknown")
            gateway, expires_at, used_at = str(row[0]), float(row[1]), row[2]
            if used_at is not None:
                raise EnrollError("this enrollment code was already used; ask the publisher "
                                  "for a new one", "used")
            if expires_at <= now:
                raise EnrollError("this enrollment code has expired; ask the publisher for a "
                                  "new one", "expired")
            db.execute("UPDATE enroll_codes SET used_at=? WHERE code_hash=?", (now, want))
            # A reinstalled school enrolls again with a new code: its old token goes.
            db.execute("DELETE FROM gateway_tokens WHERE gateway=?", (gateway,))
            db.execute("INSERT INTO gateway_tokens (gateway, token_hash, created_at) "
                       "VALUES (?,?,?)", (gateway, digest(token), now))
        return gateway, token

    def revoke(self, gateway: str) -> None:
        """The token stops working at once; unused codes for the gateway go too."""
        now = self.clock()
        with self.db.write() as db:
            n = db.execute("UPDATE gateway_tokens SET revoked_at=? WHERE gateway=? AND "
                           "revoked_at IS NULL", (now, gateway)).rowcount
            codes = db.execute("DELETE FROM enroll_codes WHERE gateway=? AND used_at IS NULL",
                               (gateway,)).rowcount
            if not n and not codes:
                raise EnrollError(f"no enrolled gateway {gateway!r} with a live token or code",
                                  "not_found")

    def outstanding_codes(self) -> int:
        return int(self.db.execute(
            "SELECT count(*) FROM enroll_codes WHERE used_at IS NULL AND expires_at>?",
            (self.clock(),)).fetchone()[0])

    def list(self) -> list[EnrolledGateway]:
        out = {str(g): EnrolledGateway(str(g), "revoked" if r is not None else "active",
                                       float(c), None if r is None else float(r))
               for g, c, r in self.db.execute(
                   "SELECT gateway, created_at, revoked_at FROM gateway_tokens")}
        for g, c, e in self.db.execute(
                "SELECT gateway, created_at, expires_at FROM enroll_codes WHERE used_at IS NULL "
                "AND expires_at>?", (self.clock(),)):
            if str(g) not in out or out[str(g)].state == "revoked":
                out[str(g)] = EnrolledGateway(str(g), "pending", float(c), None, float(e))
        return [out[g] for g in sorted(out)]


class FailureLimiter:
    """At most `per_minute` failed code attempts in any 60 s, publisher-wide: guessing codes
    stays hopeless (80 bits) and a flood of wrong codes costs no more than that many lookups.
    While the budget is spent every attempt is refused (429), right or wrong."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute = per_minute
        self.clock = clock
        self._failures: deque[float] = deque(maxlen=per_minute)

    def retry_after(self) -> float:
        """Seconds until an attempt may be made (0: now)."""
        if len(self._failures) < self.per_minute:
            return 0.0
        return max(0.0, self._failures[0] + 60.0 - self.clock())

    def failed(self) -> None:
        self._failures.append(self.clock())
