"""Every relative link in README.md and docs/ leads to a file of the repository.

The README is a front door to the guides under docs/; a guide renamed or a section moved must
not leave a reader at a dead link."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LINK = re.compile(r"\]\(([^)\s]+)\)")


def documents() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def dead_links(doc: Path, root: Path = REPO) -> list[str]:
    dead = []
    in_code = False
    for number, line in enumerate(doc.read_text(encoding="utf-8").splitlines(), 1):
        if line.lstrip().startswith("```"):
            in_code = not in_code
        if in_code:
            continue
        for target in LINK.findall(line):
            if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
                continue        # a URL or an anchor of the same page
            path = target.split("#", 1)[0]
            if not (doc.parent / path).exists():
                dead.append(f"{doc.relative_to(root)}:{number}: {target}")
    return dead


def test_every_relative_link_of_the_docs_resolves() -> None:
    dead = [d for doc in documents() for d in dead_links(doc)]
    assert dead == []


def test_the_check_finds_a_dead_link(tmp_path: Path) -> None:
    doc = tmp_path / "guide.md"
    (tmp_path / "there.md").write_text("x\n")
    doc.write_text("[ok](there.md) [anchor](#x) [web](https://example.test/)\n"
                   "```\n[in code](nowhere.md)\n```\n[gone](missing.md#part)\n")
    assert dead_links(doc, tmp_path) == ["guide.md:5: missing.md#part"]
