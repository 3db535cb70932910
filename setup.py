"""setuptools entry point for what pyproject.toml cannot declare: compiled extensions.

Everything else (metadata, packages) lives in pyproject.toml.
"""

import os
import sys

from setuptools import setup

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # PEP 517 builds: find ours
from build_ext_lookup import extensions

setup(ext_modules=extensions())
