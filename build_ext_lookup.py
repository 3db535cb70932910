"""The optional C accelerators, for setup.py: the list index lookup (gateway/lists/_lookup.c)
and the fast path's question parse (gateway/dns/_fastparse.c).

Why optional: a Raspberry Pi without a compiler must still install SafeGate; index.py and
fastpath.py then use their pure-Python versions. `optional=True` makes setuptools warn and skip the extension
when it does not compile instead of failing the install.
"""

from __future__ import annotations

from setuptools import Extension


def lookup_extension() -> Extension:
    """gateway.lists._lookup: C99, Python.h only."""
    return Extension(
        "gateway.lists._lookup",
        sources=["gateway/lists/_lookup.c"],
        extra_compile_args=["-std=c99"],
        optional=True,
    )


def fastparse_extension() -> Extension:
    """gateway.dns._fastparse: C99, Python.h only."""
    return Extension(
        "gateway.dns._fastparse",
        sources=["gateway/dns/_fastparse.c"],
        extra_compile_args=["-std=c99"],
        optional=True,
    )
