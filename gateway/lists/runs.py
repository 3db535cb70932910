"""External sort of packed `hash << 16 | rule id` ints, for the list index builder.

Why: a national list (17.5M names) held as Python ints peaked at 1.9 GB, more than a 1 GB
Raspberry Pi has. Here at most `run_entries` ints are in memory: each full run is sorted and
spilled to a scratch file (uint64 hashes, then uint16 rule ids) and the runs are merged block
by block, each block cut below the smallest last hash in the runs' buffers, so that every
rule of one key is in the same block.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from array import array
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from itertools import islice, repeat
from operator import and_, lshift, or_, rshift
from pathlib import Path

__all__ = ["RULE_BITS", "RULE_MASK", "RUN_ENTRIES", "SCRATCH_PREFIX", "PackedRuns",
           "read_array", "remove_stale_scratch"]

RULE_BITS = 16  # the builder packs `hash << 16 | rule id` into one int
RULE_MASK = (1 << RULE_BITS) - 1
RUN_ENTRIES = 1 << 20  # packed ints held in memory (~56 bytes each with the list slot)
SCRATCH_PREFIX = ".sgidx-build-"  # + pid + "-": a builder's scratch directory


def remove_stale_scratch(directory: str | os.PathLike[str]) -> None:
    """Delete the scratch directories of builders whose process is gone (a compile killed by
    its timeout or the OOM killer leaves up to the list's size of runs behind)."""
    for entry in Path(directory).glob(f"{SCRATCH_PREFIX}*-*"):
        try:
            pid = int(entry.name[len(SCRATCH_PREFIX):].split("-")[0])
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(entry, ignore_errors=True)
        except (ValueError, PermissionError, OSError):
            continue  # not ours, or alive under another user


def read_array(fd: int, fmt: str, count: int, at: int) -> array[int]:
    """`count` items of type `fmt` from byte `at` of the open file `fd`."""
    out = array(fmt)
    out.frombytes(os.pread(fd, out.itemsize * count, at))
    return out


class _Run:
    """A sorted spilled run, read back in blocks into `buf` (packed ints, sorted)."""

    def __init__(self, path: Path, count: int) -> None:
        self.fd = os.open(path, os.O_RDONLY)
        self.count = count
        self.pos = 0
        self.buf: list[int] = []

    @property
    def exhausted(self) -> bool:
        return self.pos == self.count

    def refill(self, block: int) -> None:
        n = min(block, self.count - self.pos)
        keys = read_array(self.fd, "Q", n, 8 * self.pos)
        rids = read_array(self.fd, "H", n, 8 * self.count + 2 * self.pos)
        self.buf += map(or_, map(lshift, keys, repeat(RULE_BITS)), rids)
        self.pos += n

    def close(self) -> None:
        os.close(self.fd)


class PackedRuns:
    """Packed ints added in any order, read back sorted in blocks; scratch in `tmp_dir`
    (the system's temporary directory if None) until `close()`."""

    def __init__(self, run_entries: int = RUN_ENTRIES,
                 tmp_dir: str | os.PathLike[str] | None = None) -> None:
        self.run_entries = max(2, run_entries)
        self._tmp_parent = tmp_dir
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._buf: list[int] = []
        self._runs: list[tuple[Path, int]] = []

    @property
    def runs(self) -> int:
        """How many sorted runs were spilled to disk so far."""
        return len(self._runs)

    def directory(self) -> Path:
        """The scratch directory (created on first use)."""
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-",
                                                    dir=self._tmp_parent)
        return Path(self._tmp.name)

    def add(self, hashes: Iterable[int], rid: int) -> None:
        """Add `hash << RULE_BITS | rid` for every hash, spilling each full run."""
        it = iter(hashes)
        while True:
            room = self.run_entries - len(self._buf)
            before = len(self._buf)
            self._buf += map(or_, map(lshift, islice(it, room), repeat(RULE_BITS)),
                             repeat(rid))
            if len(self._buf) < self.run_entries:
                if len(self._buf) - before < room:
                    return
            else:
                self._spill()

    def _spill(self) -> None:
        """Sort the buffer and write it as a run: uint64 hashes, then uint16 rule ids."""
        buf = self._buf
        buf.sort()
        path = self.directory() / f"run{len(self._runs)}"
        with open(path, "wb") as f:  # scratch: no fsync, a crash discards the whole build
            array("Q", map(rshift, buf, repeat(RULE_BITS))).tofile(f)
            array("H", map(and_, buf, repeat(RULE_MASK))).tofile(f)
        self._runs.append((path, len(buf)))
        self._buf = []

    def blocks(self) -> Iterator[list[int]]:
        """The packed ints of every run in sorted order, in lists that never split a key."""
        if not self._runs:
            self._buf.sort()
            yield self._buf
            self._buf = []
            return
        if self._buf:
            self._spill()
        runs = [_Run(path, n) for path, n in self._runs]
        block = max(16, self.run_entries // (2 * len(runs)))
        try:
            while True:
                for r in runs:
                    if len(r.buf) < block // 2 and not r.exhausted:
                        r.refill(block)
                runs = [r for r in runs if r.buf or not r.exhausted]
                if not runs:
                    return
                live = [r.buf[-1] >> RULE_BITS for r in runs if not r.exhausted]
                # A run not exhausted may hold more of its last key: take only smaller keys.
                bound = min(live) << RULE_BITS if live else None
                out: list[int] = []
                for r in runs:
                    take = len(r.buf) if bound is None else bisect_left(r.buf, bound)
                    if take:
                        out += r.buf[:take]
                        del r.buf[:take]
                if out:
                    out.sort()  # a merge of sorted pieces: timsort does it in linear time
                    yield out
                else:  # the bounding buffer holds a single key: read more of that run
                    for r in runs:
                        if not r.exhausted and r.buf[-1] >> RULE_BITS == min(live):
                            r.refill(block)
        finally:
            for r in runs:
                r.close()
            for path, _ in self._runs:
                path.unlink(missing_ok=True)

    def close(self) -> None:
        """Remove the scratch directory now rather than at garbage collection."""
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
