"""The tests' own layout (issue #11): shared code lives in tests/support, and there is one
wait helper, so the next engineer finds each thing in one place."""

from __future__ import annotations

import re
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def test_no_test_module_imports_another() -> None:
    offenders = [f"{p.name}:{n}" for p in sorted(TESTS.rglob("*.py"))
                 for n, line in enumerate(p.read_text().splitlines(), 1)
                 if re.match(r"\s*(from|import) tests\.test_", line)]
    assert offenders == [], "move what they share to tests/support or conftest.py"


def test_one_wait_helper() -> None:
    defined = [f"{p.relative_to(TESTS)}:{n}" for p in sorted(TESTS.rglob("*.py"))
               for n, line in enumerate(p.read_text().splitlines(), 1)
               if re.match(r"(async )?def (\w*wait_for|wait_until|_until)\b", line)]
    assert [d for d in defined if not d.startswith("support/wait.py:")] == [], (
        "use tests.support.wait.wait_for / async_wait_for")
    assert len(defined) == 2, defined
