"""`safegate` with a memory-inspection hook, for bench/memory_profile.py (never shipped).

SIGUSR2 writes SAFEGATE_MEMDUMP (JSON: the deep size of each bounded structure of the live
Resolver) and, when SAFEGATE_TRACEMALLOC_FRAMES > 0, a tracemalloc snapshot next to it.
tracemalloc costs CPU and memory of its own, so RSS is read from untraced runs; the structure
sizes (sys.getsizeof over each structure's own objects) are cheap and come from both.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import sys
import tracemalloc
from collections.abc import Iterable
from types import FrameType, FunctionType, ModuleType

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_SHARED = (type, ModuleType, FunctionType)


def deep_size(roots: Iterable[object], seen: set[int]) -> int:
    """Bytes of `roots` and everything they reach that no earlier structure already counted
    (`seen` is shared, so an Entry in the cache and in a reply memo counts once)."""
    total = 0
    todo = list(roots)
    while todo:
        obj = todo.pop()
        if id(obj) in seen or isinstance(obj, _SHARED) or obj is None:
            continue
        seen.add(id(obj))
        total += sys.getsizeof(obj)
        if isinstance(obj, dict):
            todo.extend(obj.keys())
            todo.extend(obj.values())
        elif isinstance(obj, (tuple, list, set, frozenset)):
            todo.extend(obj)
        elif hasattr(obj, "__slots__") or hasattr(obj, "__dict__"):
            for cls in type(obj).__mro__:
                for slot in getattr(cls, "__slots__", ()):
                    if hasattr(obj, slot):
                        todo.append(getattr(obj, slot))
            if hasattr(obj, "__dict__"):
                todo.extend(vars(obj).values())
    return total


def structures() -> dict[str, float]:
    from gateway.dns.chain import Resolver
    from gateway.policy.decide import Profile
    gc.unfreeze()  # the gateway freezes what it loaded; get_objects() skips frozen objects
    objects = gc.get_objects()
    gc.freeze()
    resolvers = [o for o in objects if isinstance(o, Resolver)]
    out: dict[str, float] = {}
    seen: set[int] = set()
    # Module-level singletons (ALLOWED, interned strings) are shared: count them nowhere.
    from gateway.policy import decide
    seen.update(id(v) for v in vars(decide).values())
    for r in resolvers:
        view = r.view
        profiles = [p for p in objects if isinstance(p, Profile)]
        out["profiles"] = len(profiles)
        out["verdict_memo_entries"] = sum(len(p._memo) + len(p._older) for p in profiles)
        out["reply_memo_entries"] = sum(len(p.replies) for p in profiles)
        out["cache_entries"] = len(r.cache)
        out["blocked_bodies_entries"] = len(view.answers.bodies)
        mb = 2 ** 20
        out["answer_cache_MB"] = deep_size([r.cache._probation, r.cache._protected], seen) / mb
        out["reply_memo_MB"] = deep_size([p.replies for p in profiles], seen) / mb
        memos = [m for p in profiles for m in (p._memo, p._older)]
        out["verdict_memo_MB"] = deep_size(memos, seen) / mb
        out["blocked_bodies_MB"] = deep_size([view.answers.bodies.data], seen) / mb
    return out


def _trim(_sig: int, _frame: FrameType | None) -> None:
    """How much of RSS is free heap glibc keeps (bench/memory_profile.py --trim)."""
    import ctypes
    ctypes.CDLL("libc.so.6").malloc_trim(0)


def _dump(_sig: int, _frame: FrameType | None) -> None:
    gc.collect()
    path = os.environ["SAFEGATE_MEMDUMP"]
    if tracemalloc.is_tracing():
        tracemalloc.take_snapshot().dump(path + ".snapshot")
    sys._debugmallocstats()  # pymalloc's arenas and pools, on stderr (the gateway's log file)
    if os.environ.get("SAFEGATE_MODULES_OUT"):
        with open(os.environ["SAFEGATE_MODULES_OUT"], "w") as f:
            f.write("\n".join(sorted(sys.modules)) + "\n")
    with open(path + ".tmp", "w") as f:
        json.dump(structures(), f)
    os.replace(path + ".tmp", path)


if __name__ == "__main__":
    frames = int(os.environ.get("SAFEGATE_TRACEMALLOC_FRAMES", "0"))
    if frames:
        tracemalloc.start(frames)
    signal.signal(signal.SIGUSR2, _dump)
    signal.signal(signal.SIGUSR1, _trim)
    from gateway.cli import main
    sys.exit(main(sys.argv[1:]))
