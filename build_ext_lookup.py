"""The optional C accelerator for the list index (gateway/lists/_lookup.c), for setup.py.

Why optional: a Raspberry Pi without a compiler must still install SafeGate; index.py then
uses its pure-Python lookup. `optional=True` makes setuptools warn and skip the extension
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
