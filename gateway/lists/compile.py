"""Compile a lists.yaml catalog into one index file, normally in a short-lived subprocess.

Why a subprocess: building holds up to a million names as Python objects (~150 MB with its
workers, whatever the list size: the builder sorts the rest through temporary files beside
the output); the serving process only maps the finished file, so its memory stays small and
a failed build leaves the old index in service. Run as:

    python -m gateway.lists.compile [--jobs N] LISTS_YAML OUT_PATH

It prints a JSON summary on stdout, or `file:line: message` on stderr and exits 1. Files are
read in slices of ~2 MB (RPZ ones cut where the zone-file state is known, see slices.py); big
catalogs are parsed by two worker processes, at most four slices ahead of the builder:
parsing and hashing are CPU-bound and dominate, and the result is byte-identical to a
serial build.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import multiprocessing
import os
import subprocess
import sys
import time
from array import array
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.config.limits import FileLimits
from gateway.errors import ConfigError
from gateway.lists import SCOPE_BOTH, SCOPE_SELF, Action, ParsedRule, Rule, Skipped
from gateway.lists.catalog import (
    LIST_BYTES_KEY,
    URL_FORMAT,
    Catalog,
    Source,
    list_file_error,
    load_catalog,
)
from gateway.lists.index_builder import IndexBuilder
from gateway.lists.parsers import parse
from gateway.lists.rpz import RpzState, parse_rpz
from gateway.lists.runs import RUN_ENTRIES, remove_stale_scratch
from gateway.lists.slices import Task, bounded_map, decode_lines, slice_tasks
from gateway.util.readfile import open_regular, read_capped

__all__ = [
    "MAX_SKIPPED_EXAMPLES",
    "SLICE_BYTES",
    "CompileResult",
    "SkippedLine",
    "compile_catalog",
    "compile_subprocess",
    "find_rule_lines",
    "main",
]

MAX_SKIPPED_EXAMPLES = 1000
SLICE_BYTES = 2 << 20  # with workers, files are parsed in slices of about this size
_BAD_UTF8 = "not valid UTF-8"


@dataclass(frozen=True)
class SkippedLine:
    """A list line that produced no rule, located for `safegate lists check`."""

    path: str
    line: int
    text: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.reason}: {self.text}"


@dataclass
class SourceStats:
    """Per-source counts, kept in the index header for `safegate lists` and metrics."""

    category: str
    path: str
    format: str
    lines: int = 0
    rules: int = 0
    skipped: int = 0


@dataclass
class CompileResult:
    """What a build produced; `index` is the file written, or the bytes if none was asked."""

    entries_by_category: dict[str, int]
    skipped: list[SkippedLine]
    skipped_count: int
    total_lines: int
    rules: int
    entries: int
    seconds: float
    index: bytes | str
    sources: list[SourceStats] = field(default_factory=list)

    def summary(self, examples: int = 20) -> dict[str, Any]:
        """A JSON-able report; `examples` caps the skipped lines listed."""
        return {
            "index": self.index if isinstance(self.index, str) else None,
            "entries": self.entries,
            "entries_by_category": self.entries_by_category,
            "rules": self.rules,
            "total_lines": self.total_lines,
            "skipped_count": self.skipped_count,
            "skipped": [str(s) for s in self.skipped[:examples]],
            "seconds": round(self.seconds, 3),
            "sources": [vars(s) for s in self.sources],
        }


def _read_bytes(catalog: Catalog, source: Source) -> bytes:
    """A whole list file, within limits.files.list_bytes (never a device or FIFO)."""
    try:
        return read_capped(source.path, catalog.list_bytes, LIST_BYTES_KEY)
    except ConfigError as exc:
        raise list_file_error(source.path, exc.message, str(catalog.path),
                              source.line) from None


def _read_lines(catalog: Catalog, source: Source) -> tuple[list[str], list[int]]:
    """A whole list file as lines (see `slices.decode_lines`)."""
    return decode_lines(_read_bytes(catalog, source), True)


@dataclass
class _Parsed:
    """What a worker sends back: sorted key hashes per (scope, action) kind, and skips."""

    hashes: dict[int, array[int]]
    skipped: list[SkippedLine]
    skipped_count: int
    lines: int


def _parse_task(task: Task) -> _Parsed:
    """Parse and hash one slice; runs in worker processes, so it takes and returns data only."""
    with open_regular(task.path, task.limit, LIST_BYTES_KEY) as f:
        f.seek(task.start)
        data = f.read(task.stop - task.start)
    lines, bad = decode_lines(data, task.start == 0)
    offset = task.first_line - 1
    skipped: list[SkippedLine] = []
    skipped_count = len(bad)
    groups: dict[int, list[int]] = {}
    last_kind = -1
    append = groups.setdefault(last_kind, []).append  # replaced before first use
    blake2b = hashlib.blake2b
    from_bytes = int.from_bytes
    items = (parse(task.format, lines) if task.rpz is None
             else parse_rpz(lines, RpzState(*task.rpz)))
    for item in items:
        if type(item) is ParsedRule:
            key, scope, action, _ = item
            kind = scope << 2 | action
            if kind != last_kind:  # runs of one kind are the norm: skip the dict lookup
                append = groups.setdefault(kind, []).append
                last_kind = kind
            append(from_bytes(blake2b(key, digest_size=8).digest(), "little"))
        elif isinstance(item, Skipped):
            skipped_count += 1
            if len(skipped) < MAX_SKIPPED_EXAMPLES:
                skipped.append(SkippedLine(task.path, item.line + offset, item.text, item.reason))
    del groups[-1]
    if bad:  # examples in line order, whatever the slicing: the first N of the union
        skipped += [SkippedLine(task.path, no + offset, "", _BAD_UTF8) for no in bad]
        skipped = sorted(skipped, key=lambda s: s.line)[:MAX_SKIPPED_EXAMPLES]
    # sorted runs make the builder's final sort a cheap merge
    hashes = {kind: array("Q", sorted(hs)) for kind, hs in groups.items()}
    return _Parsed(hashes, skipped, skipped_count, len(lines))


def _default_jobs(catalog: Catalog) -> int:
    """Two workers for big catalogs (parsing is CPU-bound), else in-process."""
    try:
        size = sum(s.path.stat().st_size for s in catalog.sources())
    except OSError:
        return 1
    return min(2, os.cpu_count() or 1) if size > 4 * SLICE_BYTES else 1


def compile_catalog(
    catalog: Catalog, out_path: str | None, jobs: int = 1, slice_bytes: int = SLICE_BYTES,
    run_entries: int = RUN_ENTRIES,
) -> CompileResult:
    """Parse every source and build the index (written atomically to `out_path` if given).

    Files are parsed in slices of about `slice_bytes` (RPZ ones too), in `jobs` worker
    processes if > 1; the builder keeps at most `run_entries` names in memory and sorts the
    rest through temporary files beside `out_path`. The index is identical either way.
    """
    started = time.perf_counter()
    sources = catalog.sources()
    tasks = list(slice_tasks(catalog, slice_bytes))
    results: Iterable[_Parsed]
    pool: ProcessPoolExecutor | None = None
    if jobs > 1 and len(tasks) > 1:
        methods = multiprocessing.get_all_start_methods()
        ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
        pool = ProcessPoolExecutor(max_workers=jobs, mp_context=ctx)
        results = bounded_map(pool, _parse_task, tasks, 2 * jobs)
    else:
        results = map(_parse_task, tasks)
    tmp_dir = None if out_path is None else os.path.dirname(os.path.abspath(out_path))
    if tmp_dir is not None:
        remove_stale_scratch(tmp_dir)
    builder = IndexBuilder(run_entries=run_entries, tmp_dir=tmp_dir)
    skipped: list[SkippedLine] = []
    stats = [SourceStats(s.category, str(s.path), s.format) for s in sources]
    try:
        for task, parsed in zip(tasks, results, strict=True):
            source, st = sources[task.source], stats[task.source]
            st.lines += parsed.lines
            st.skipped += parsed.skipped_count
            skipped.extend(parsed.skipped[: MAX_SKIPPED_EXAMPLES - len(skipped)])
            for kind, hashes in parsed.hashes.items():
                scope = kind >> 2
                if source.match == "exact" and scope == SCOPE_BOTH:
                    scope = SCOPE_SELF
                rule = Rule(source.category, scope, Action(kind & 3), source.mandatory)
                builder.add_hashes(hashes, rule)
                st.rules += len(hashes)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    _fill_skipped_text(skipped, catalog.list_bytes)
    builder.build = {
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "catalog": str(catalog.path),
        "sources": [vars(s) for s in stats],
    }
    index: bytes | str
    with builder:
        if out_path is None:
            index = builder.to_bytes()
        else:
            builder.write(out_path)
            index = out_path
        by_category, entries = builder.entries_by_category(), len(builder)
    return CompileResult(
        entries_by_category=by_category,
        skipped=skipped,
        skipped_count=sum(st.skipped for st in stats),
        total_lines=sum(st.lines for st in stats),
        rules=sum(st.rules for st in stats),
        entries=entries,
        seconds=time.perf_counter() - started,
        index=index,
        sources=stats,
    )


def _fill_skipped_text(skipped: list[SkippedLine], limit: int) -> None:
    """Give not-UTF-8 examples their (replacement-decoded) text; workers left it empty."""
    for i, s in enumerate(skipped):
        if s.reason == _BAD_UTF8 and not s.text:
            text = ""
            with open_regular(s.path, limit, LIST_BYTES_KEY) as f:  # streamed: lists are big
                for no, raw in enumerate(f, 1):
                    if no == s.line:
                        text = raw.rstrip(b"\n").decode("utf-8", errors="replace").strip()
                        break
            skipped[i] = SkippedLine(s.path, s.line, text, s.reason)


def find_rule_lines(catalog: Catalog, category: str, key: bytes) -> list[tuple[str, int, str]]:
    """The (file, line, text) of every line in `category` that makes a rule for exactly `key`.

    Re-parses the sources (the index keeps hashes, not names): for `safegate explain`.
    """
    found: list[tuple[str, int, str]] = []
    for source in catalog.categories.get(category, []):
        if source.format == URL_FORMAT or source.pending:
            continue  # URL lists are the proxy's, not names; a pending download has no file
        lines, _ = _read_lines(catalog, source)
        for item in parse(source.format, lines):
            if type(item) is ParsedRule and item.key == key:
                found.append((str(source.path), item.line, lines[item.line - 1].strip()))
    return found


def compile_subprocess(
    lists_yaml: str | os.PathLike[str], out_path: str | os.PathLike[str],
    timeout: float | None = 600.0, limits: FileLimits | None = None,
) -> dict[str, Any]:
    """Run a build in a child process; its JSON summary, or ConfigError with its message.

    Blocking: async callers wrap it in `asyncio.to_thread`.
    """
    root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    proc = subprocess.run(
        [sys.executable, "-m", "gateway.lists.compile", *limit_args(limits or FileLimits()),
         os.fspath(lists_yaml), os.fspath(out_path)],
        capture_output=True, text=True, timeout=timeout, env=env, check=False,
    )
    if proc.returncode != 0:
        message = proc.stderr.strip() or f"list compiler exited with {proc.returncode}"
        raise ConfigError(message.splitlines()[-1])
    summary: dict[str, Any] = json.loads(proc.stdout)
    return summary


def limit_args(limits: FileLimits) -> list[str]:
    """The compiler's command-line options carrying gateway.yaml's file limits."""
    return [f"--config-bytes={limits.config_bytes}", f"--list-bytes={limits.list_bytes}"]


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m gateway.lists.compile`."""
    parser = argparse.ArgumentParser(
        prog="python -m gateway.lists.compile",
        description="Compile a lists.yaml catalog into a SafeGate list index.",
    )
    parser.add_argument("lists_yaml")
    parser.add_argument("out_path")
    parser.add_argument("--examples", type=int, default=20,
                        help="how many skipped lines to list (default 20)")
    parser.add_argument("--config-bytes", type=int, default=FileLimits.config_bytes,
                        help="largest lists.yaml read (limits.files.config_bytes)")
    parser.add_argument("--list-bytes", type=int, default=FileLimits.list_bytes,
                        help="largest list file read (limits.files.list_bytes)")
    parser.add_argument("--state-dir", default=None,
                        help="the gateway's state_dir, where lists.yaml url: sources are kept")
    parser.add_argument("--jobs", type=int, default=0,
                        help="worker processes for parsing (default: 2 for catalogs over "
                             "8 MB when there are 2+ CPUs, else 1)")
    args = parser.parse_args(argv)
    # A short-lived process that only allocates: cyclic GC passes over millions of objects
    # would cost seconds and can never free anything.
    gc.disable()
    try:
        catalog = load_catalog(args.lists_yaml, args.config_bytes, args.list_bytes,
                               Path(args.state_dir) if args.state_dir else None)
        jobs = args.jobs if args.jobs > 0 else _default_jobs(catalog)
        result = compile_catalog(catalog, args.out_path, jobs)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"{args.out_path}: cannot write index: {exc.strerror}", file=sys.stderr)
        return 1
    json.dump(result.summary(args.examples), sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
