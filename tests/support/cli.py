"""`safegate` as a user runs it, and a gateway.yaml with the standard test data."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support.data import LISTS, LISTS_YAML, POLICY
from tests.support.procs import REPO_ROOT, write_gateway_config


def safegate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True,
                          text=True, timeout=60, cwd=REPO_ROOT, check=False)


def check(cfg: Path) -> tuple[int, str, str]:
    """`safegate check -c CFG`: (exit code, stdout, stderr)."""
    r = safegate("check", "-c", str(cfg))
    return r.returncode, r.stdout, r.stderr


def config(tmp_path: Path, policy: str = POLICY, lists_yaml: str = LISTS_YAML,
           lists: dict[str, str] | None = None, extra: dict[str, object] | None = None) -> Path:
    return write_gateway_config(tmp_path, upstream_port=53000, policies={"p.yaml": policy},
                                lists=lists if lists is not None else LISTS,
                                lists_yaml=lists_yaml, extra=extra)
