"""Has a set of files changed? Cheap enough to ask every second (stat only, no reading)."""

from __future__ import annotations

from pathlib import Path

Fingerprint = tuple[tuple[str, int, int, int], ...]


def fingerprint(paths: list[Path]) -> Fingerprint:
    """(path, mtime_ns, size, inode) of each file: any edit, replace or delete changes it."""
    out = []
    for p in sorted(set(paths)):
        try:
            st = p.stat()
            out.append((str(p), st.st_mtime_ns, st.st_size, st.st_ino))
        except OSError:
            out.append((str(p), -1, -1, -1))
    return tuple(out)
