"""The optional C accelerators, for setup.py: the list index lookup (gateway/lists/_lookup.c),
the fast path's question parse and blocked reply (gateway/dns/_fastparse.c) and batched UDP
I/O (gateway/dns/_udpio.c, Linux only).

Why optional: a Raspberry Pi without a compiler must still install SafeGate; index.py,
fastpath.py and the DNS server then use their pure-Python versions (SAFEGATE_PURE=1 forces
those). `optional=True` makes setuptools warn and skip an extension when it does not compile
instead of failing the install.
"""

from __future__ import annotations

import sys

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


def udpio_extension() -> Extension:
    """gateway.dns._udpio: recvmmsg/sendmmsg (Linux only), Python.h and libc only."""
    return Extension(
        "gateway.dns._udpio",
        sources=["gateway/dns/_udpio.c"],
        extra_compile_args=["-std=gnu99"],
        optional=True,
    )


def extensions() -> list[Extension]:
    """Every extension this platform can build: _udpio needs Linux's recvmmsg/sendmmsg."""
    exts = [lookup_extension(), fastparse_extension()]
    if sys.platform.startswith("linux"):
        exts.append(udpio_extension())
    return exts
