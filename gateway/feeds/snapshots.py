"""A signed feed's chain on disk: the last full snapshot and the signed diffs applied since.

STATE_DIR/feeds/NAME.json + NAME.sig is the last full signed snapshot and NAME.d/SERIAL.json +
.sig the signed diffs applied since, so a restart re-verifies every byte it enforces; a new
snapshot replaces the chain. Every file is written atomically (a crash leaves old or new).
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

from gateway.feedformat.document import Feed, FeedError, parse_feed
from gateway.feedformat.signing import Verifier
from gateway.util.atomic import atomic_write, durable_replace

log = logging.getLogger(__name__)


class SnapshotChain:
    """Stores and re-verifies one signed feed's snapshot + diffs."""

    def __init__(self, directory: Path, name: str, verifier: Verifier) -> None:
        self.dir = directory
        self.name = name
        self.verifier = verifier

    def _verified(self, body_path: Path, *sig_paths: Path) -> Feed | None:
        """The stored document if one of the signature files verifies it."""
        try:
            body = body_path.read_bytes()
        except OSError:
            return None
        problem = "no signature file"
        for sig_path in sig_paths:
            try:
                self.verifier.verify(body, sig_path.read_text().strip())
                return parse_feed(body)
            except OSError:
                continue
            except FeedError as exc:
                problem = str(exc)
        log.error("feed %s: stored %s does not verify (%s); not used", self.name,
                  body_path.name, problem)
        return None

    def load(self) -> list[Feed]:
        """The verified snapshot then each verified diff that follows it, in order; empty when
        there is no valid snapshot. The chain stops at the first diff that fails."""
        # .sig.new: a crash between writing a snapshot and renaming its signature
        snap = self._verified(self.dir / f"{self.name}.json", self.dir / f"{self.name}.sig",
                              self.dir / f"{self.name}.sig.new")
        if snap is None or snap.is_diff:
            return []
        chain, serial = [snap], snap.serial
        for path in sorted((self.dir / f"{self.name}.d").glob("*.json")):
            diff = self._verified(path, path.with_suffix(".sig"))
            if diff is None:
                break
            if diff.serial <= serial:
                continue  # left over from before the snapshot replaced the chain
            if diff.since != serial:
                log.warning("feed %s: stored diff %s does not follow serial %d; stopping there",
                            self.name, path.name, serial)
                break
            chain.append(diff)
            serial = diff.serial
        return chain

    def store_snapshot(self, body: bytes, sig: str) -> None:
        # The new signature is written aside first; start-up also tries NAME.sig.new, so a
        # crash at any point leaves a pair that verifies (the old one or the new one).
        atomic_write(self.dir / f"{self.name}.sig.new", sig.encode())
        atomic_write(self.dir / f"{self.name}.json", body)
        durable_replace(self.dir / f"{self.name}.sig.new", self.dir / f"{self.name}.sig")
        for p in (self.dir / f"{self.name}.d").glob("*"):
            with contextlib.suppress(OSError):
                p.unlink()

    def store_diff(self, serial: int, body: bytes, sig: str) -> None:
        d = self.dir / f"{self.name}.d"
        atomic_write(d / f"{serial:012d}.sig", sig.encode())
        atomic_write(d / f"{serial:012d}.json", body)
