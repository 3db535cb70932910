"""Whether a process still runs: for state files named after, or written by, a process that
may have died without cleaning up (a killed gateway's index, a stopped proxy's verdicts)."""

from __future__ import annotations

import os


def alive(pid: int) -> bool:
    """True while `pid` exists, also when it belongs to another user (signal 0 is refused)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
