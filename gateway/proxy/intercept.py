"""The proxy's intercept set on disk: the proxy writes it, the gateway's resolver reads it.

`<state_dir>/proxy-intercept.txt`, one name per line, `#` comments. Both sides go through
`read_intercept_file`/`write_intercept_file` here, with one normalisation (normalize_name:
lowercase, IDNA, no trailing dot), so the names the resolver steers are exactly the names the
proxy intercepts. This module imports nothing of the runtime: the gateway may import it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

from gateway.util.atomic import atomic_write
from gateway.util.names import normalize_name

log = logging.getLogger(__name__)

INTERCEPT_FILE = "proxy-intercept.txt"


def _names(lines: Iterable[str], where: str) -> list[bytes]:
    """Each line as a lookup key, in order, once; a line that is no name is logged and
    skipped (one bad host must not stop steering for the others)."""
    out: dict[bytes, None] = {}
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            out[normalize_name(line)] = None
        except ValueError as exc:
            log.warning("%s: ignoring %r: %s", where, line, exc)
    return list(out)


def write_intercept_file(state_dir: Path, hosts: Iterable[str], why: str = "") -> Path:
    """`<state_dir>/proxy-intercept.txt`, replaced atomically: one normalised name per line."""
    path = state_dir / INTERCEPT_FILE
    names = [n.decode("ascii") for n in _names(hosts, INTERCEPT_FILE)]
    lines = ["# SafeGate proxy intercept set: the resolver answers the proxy's address for "
             "these names.", f"# {why}" if why else "# written by safegate proxy", *names]
    atomic_write(path, "\n".join(lines) + "\n", encoding="ascii")
    return path


def read_intercept_file(path: Path) -> list[bytes]:
    """The names in an intercept file, normalised as the writer does; OSError if unreadable."""
    text = path.read_text(encoding="utf-8", errors="replace")
    return _names(text.splitlines(), str(path))
