"""The day's salt for client addresses in the query log.

A row stores blake2b(address, key=salt) instead of the address. The salt is random, new every
UTC day, and the previous one is overwritten when the day changes: rows of one day can be
grouped by client (what one machine tried to open today), rows of two days cannot be linked,
and once the salt is gone nobody can test an address against old rows. It is kept in
state_dir (mode 0600) so that a restart within the day keeps the same hashes.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

from gateway.util.atomic import atomic_write

FILENAME = "querylog.salt"


def day_of(t: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(t))


class DailySalt:
    """Today's salt, kept in state_dir so a restart keeps one day's hashes comparable."""

    def __init__(self, state_dir: Path, clock: Callable[[], float] = time.time) -> None:
        self.path = state_dir / FILENAME
        self.clock = clock
        self.day = ""
        self.salt = b""
        try:
            saved = json.loads(self.path.read_text())
            self.day, self.salt = str(saved["day"]), bytes.fromhex(saved["salt"])
        except (OSError, ValueError, KeyError, TypeError):
            pass   # none or damaged: key() makes a new one (today's earlier rows unlinkable)

    def key(self, t: float) -> bytes:
        """The salt of `t`'s day; a new day makes (and saves) a new one, the old is gone."""
        day = day_of(t)
        if day != self.day or len(self.salt) != 32:
            self.day, self.salt = day, os.urandom(32)
            atomic_write(self.path, json.dumps({"day": day, "salt": self.salt.hex()}),
                         mode=0o600)
        return self.salt

    def client(self, address: str, t: float) -> str:
        """16 hex digits: enough to tell a day's clients apart, never the address."""
        return hashlib.blake2b(address.encode(), key=self.key(t), digest_size=8).hexdigest()
