"""The optional C accelerators (gateway/lists/_lookup.c, gateway/dns/_udpio.c), for setup.py.

Why optional: a Raspberry Pi without a compiler must still install SafeGate; index.py then
uses its pure-Python lookup and the DNS server its asyncio UDP protocol. `optional=True` makes
setuptools warn and skip an extension when it does not compile instead of failing the install.
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
    exts = [lookup_extension()]
    if sys.platform.startswith("linux"):
        exts.append(udpio_extension())
    return exts
