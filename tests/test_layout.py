"""The shape of gateway/, enforced (issue #11): no import cycles, the layering between parts,
no module over 400 lines, no class name defined in two modules.

Every import counts: at module level, inside functions, under TYPE_CHECKING, relative ones and
`importlib.import_module("gateway....")` with a literal name. A part is a folder of gateway/
(or a top-level module such as errors.py); docs/architecture.md says what each one owns.

KNOWN_VIOLATIONS lists what today's tree still breaks, each with the issue #11 work that removes
it. It only shrinks: a violation not in it fails, and so does an entry that no longer occurs
(delete it when its fix merges). Failure messages print the key to paste or delete.
"""

from __future__ import annotations

import ast
from collections import defaultdict, deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import pytest

PACKAGE = "gateway"
ROOT = Path(__file__).resolve().parent.parent / PACKAGE
MAX_LINES = 400

# What a part may import besides itself, as parts ("dns") or single modules ("dns.wire").
# The package root (gateway/__init__.py, only __version__) may be imported by every part.
# A new part goes in _PARTS (what "anything" means) and gets its own row in LAYERS.
_PARTS = frozenset({
    "errors", "util", "config", "policy", "lists", "feedformat", "dns", "feeds", "publisher",
    "compliance", "hotline", "blockpage", "proxy", "http", "runtime", "cli", "__main__", "admin",
    "querylog",
})
_ABOVE_RUNTIME = frozenset({"runtime", "cli", "__main__"})
LAYERS: dict[str, frozenset[str]] = {
    "gateway": frozenset(),  # the package root imports nothing of its own
    "errors": frozenset(),
    "util": frozenset({"errors"}),
    "config": frozenset({"util", "errors"}),
    "policy": frozenset({"lists", "config", "util", "errors"}),
    "lists": frozenset({"policy", "config", "util", "errors"}),
    "feedformat": frozenset({"util", "errors"}),
    # The query log's store and writer: the runtime hands its hook to the profiles it builds.
    "querylog": frozenset({"policy", "config", "util", "errors"}),
    # HTTP listener plumbing shared by the gateway and its proxy process (connection guard,
    # /metrics and health endpoints): no DNS, no runtime.
    "http": frozenset({"config", "util", "errors"}),
    # dns gets its stats object passed in: it never reaches up into runtime.
    "dns": frozenset({"policy", "lists", "config", "util", "errors"}),
    "feeds": frozenset({"feedformat", "lists", "policy", "config", "util", "errors", "dns.wire",
                        "dns.stats"}),
    # The publisher runs on a central server without a resolver: no gateway parts at all.
    "publisher": frozenset({"feedformat", "util", "errors", "config.yamlconf", "config.limits",
                            "config.addresses"}),
    "compliance": _PARTS - _ABOVE_RUNTIME,
    "hotline": _PARTS - _ABOVE_RUNTIME,
    "blockpage": _PARTS - _ABOVE_RUNTIME,
    # The admin page reads the running gateway through admin/host.py's AdminHost, which the
    # runtime implements: it never imports the runtime.
    "admin": _PARTS - _ABOVE_RUNTIME,
    # The proxy is its own process; it learns the gateway's state through files, not imports.
    "proxy": _PARTS - _ABOVE_RUNTIME,
    "runtime": _PARTS - {"cli", "__main__"},
    "cli": _PARTS - {"__main__"},
    "__main__": frozenset({"cli"}),
}

# Modules allowed over MAX_LINES because they are one cohesive thing a split would only scatter.
# Each needs a reason.
LONG_MODULES: dict[str, str] = {
    # Issue #11 makes the ledger the only owner of its SQL: its schema and every query on it
    # stay in one module (a few lines over the guideline) rather than spread over several.
    "gateway/feeds/ledger.py": "the ledger's schema and all of its SQL, in one place",
}

# Today's violations. Key format is what the failure messages print:
#   "cycle A -> B -> ... -> A"          (the modules of one cycle, smallest first)
#   "layer IMPORTER -> IMPORTED"        (modules; the message adds the line)
#   "size gateway/x/y.py"               (over MAX_LINES)
#   "class NAME"                        (defined in several modules)
KNOWN_VIOLATIONS: dict[str, str] = {
    # -- cycles
    # -- layering
    # -- size
    # -- duplicate class names
}


@dataclass(frozen=True)
class Module:
    name: str  # dotted: gateway.dns.chain
    rel: str  # as the reader finds it: gateway/dns/chain.py
    is_package: bool
    lines: int
    tree: ast.Module


@dataclass(frozen=True)
class Import:
    importer: str
    imported: str
    line: int


def module_name(root: Path, path: Path) -> tuple[str, bool]:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = rel.parts
    if parts[-1] == "__init__":
        return ".".join(parts[:-1]), True
    return ".".join(parts), False


def load(root: Path) -> dict[str, Module]:
    modules: dict[str, Module] = {}
    for path in sorted(root.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        name, is_package = module_name(root, path)
        rel = path.relative_to(root.parent).as_posix()
        modules[name] = Module(name, rel, is_package, len(text.splitlines()),
                               ast.parse(text, filename=str(path)))
    return modules


def part_of(module: str) -> str:
    """gateway.dns.chain -> dns; gateway.errors -> errors; gateway -> gateway."""
    pieces = module.split(".")
    return pieces[1] if len(pieces) > 1 else pieces[0]


def _resolve(base: str, modules: dict[str, Module]) -> str | None:
    """The module that `base` names: itself, or the nearest enclosing module for an attribute."""
    while base:
        if base in modules:
            return base
        base = base.rpartition(".")[0]
    return None


def _from_base(mod: Module, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    package = mod.name if mod.is_package else mod.name.rpartition(".")[0]
    for _ in range(node.level - 1):
        package = package.rpartition(".")[0]
    return f"{package}.{node.module}" if node.module else package


def imports_of(mod: Module, modules: dict[str, Module], package: str) -> Iterable[Import]:
    """Every import of a package module in `mod`, wherever it sits in the file."""
    for node in ast.walk(mod.tree):
        if not isinstance(node, ast.Import | ast.ImportFrom | ast.Call):
            continue
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _from_base(mod, node)
            # `from pkg import sub` imports the module pkg.sub; `from mod import f` imports mod.
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                       for a in node.names]
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == "import_module" and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            targets = [node.args[0].value]
        for target in targets:
            if target != package and not target.startswith(package + "."):
                continue
            resolved = _resolve(target, modules)
            if resolved is not None and resolved != mod.name:
                yield Import(mod.name, resolved, node.lineno)


@dataclass
class Tree:
    modules: dict[str, Module]
    imports: list[Import]

    @classmethod
    def scan(cls, root: Path) -> Tree:
        modules = load(root)
        imports = [imp for mod in modules.values() for imp in imports_of(mod, modules, root.name)]
        return cls(modules, imports)

    def graph(self) -> dict[str, set[str]]:
        edges: dict[str, set[str]] = {name: set() for name in self.modules}
        for imp in self.imports:
            edges[imp.importer].add(imp.imported)
        return edges

    def parts(self) -> set[str]:
        return {part_of(name) for name in self.modules}


def _components(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for start in sorted(edges):
        if start in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def _shortest_cycle(edges: dict[str, set[str]], members: list[str]) -> list[str]:
    """The shortest cycle through the component's first module, as a path back to it."""
    start, inside = members[0], set(members)
    parent: dict[str, str] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for child in sorted(edges[node] & inside):
            if child == start:
                path = [node]
                while path[-1] != start:
                    path.append(parent[path[-1]])
                return [*reversed(path), start]
            if child not in parent:
                parent[child] = node
                queue.append(child)
    raise AssertionError(f"no cycle through {start} in {members}")


def cycles(tree: Tree) -> dict[str, str]:
    edges = tree.graph()
    lines: dict[tuple[str, str], int] = {}
    for imp in tree.imports:
        lines.setdefault((imp.importer, imp.imported), imp.line)
    found: dict[str, str] = {}
    for members in _components(edges):
        path = _shortest_cycle(edges, members)
        steps = [f"{a} (line {lines[(a, b)]}) -> {b}" for a, b in pairwise(path)]
        key = "cycle " + " -> ".join(path)
        extra = f"; the cycle is part of a knot of {len(members)} modules: {', '.join(members)}"
        found[key] = "import cycle: " + ", ".join(steps) + (extra if len(members) > 2 else "")
    return found


def _allowed(importer: str, imported: str, layers: dict[str, frozenset[str]]) -> bool:
    source, target = part_of(importer), part_of(imported)
    if source == target or target == imported.partition(".")[0]:  # itself, or the package root
        return True
    rel = imported.partition(".")[2]
    return any(target == a or rel == a or rel.startswith(a + ".") for a in layers[source])


def layering(tree: Tree, layers: dict[str, frozenset[str]] = LAYERS) -> dict[str, str]:
    found: dict[str, str] = {}
    for imp in sorted(tree.imports, key=lambda i: (i.importer, i.line)):
        if part_of(imp.importer) not in layers:
            continue  # reported by test_every_part_has_a_row
        if not _allowed(imp.importer, imp.imported, layers):
            key = f"layer {imp.importer} -> {imp.imported}"
            rel = tree.modules[imp.importer].rel
            found.setdefault(key, f"{rel}:{imp.line}: {part_of(imp.importer)} may not import "
                                  f"{part_of(imp.imported)} ({imp.imported})")
    return found


def sizes(tree: Tree, limit: int = MAX_LINES,
          allowed: dict[str, str] = LONG_MODULES) -> dict[str, str]:
    found: dict[str, str] = {}
    for mod in tree.modules.values():
        if mod.lines > limit and mod.rel not in allowed:
            found[f"size {mod.rel}"] = f"{mod.rel} has {mod.lines} lines (limit {limit})"
    return found


def duplicate_classes(tree: Tree) -> dict[str, str]:
    where: dict[str, list[str]] = defaultdict(list)
    for mod in tree.modules.values():
        names: dict[str, int] = {}
        for node in ast.walk(mod.tree):
            if isinstance(node, ast.ClassDef):
                names.setdefault(node.name, node.lineno)
        for name, line in names.items():
            where[name].append(f"{mod.rel}:{line}")
    return {f"class {name}": f"class {name} is defined in {len(places)} modules: "
            + ", ".join(sorted(places))
            for name, places in sorted(where.items()) if len(places) > 1}


def compare(kind: str, found: dict[str, str], known: dict[str, str]) -> list[str]:
    """What to tell the reader: new violations, and known ones that are gone."""
    problems = [f"NEW: {found[key]}\n    key: {key!r}" for key in sorted(found) if key not in known]
    problems += [f"FIXED, delete it from KNOWN_VIOLATIONS: {key!r} ({known[key]})"
                 for key in sorted(known) if key.startswith(kind + " ") and key not in found]
    return problems


@pytest.fixture(scope="module")
def tree() -> Tree:
    return Tree.scan(ROOT)


def _check(kind: str, found: dict[str, str]) -> None:
    problems = compare(kind, found, KNOWN_VIOLATIONS)
    assert not problems, "\n".join(problems)


def test_no_import_cycles(tree: Tree) -> None:
    _check("cycle", cycles(tree))


def test_layering(tree: Tree) -> None:
    _check("layer", layering(tree))


def test_no_module_over_400_lines(tree: Tree) -> None:
    _check("size", sizes(tree))


def test_no_class_name_in_two_modules(tree: Tree) -> None:
    _check("class", duplicate_classes(tree))


def test_every_part_has_a_row(tree: Tree) -> None:
    """A new folder must say what it may import before its first import can be checked."""
    assert tree.parts() - set(LAYERS) == set(), "add these parts to LAYERS"
    assert set(LAYERS) - tree.parts() == set(), "these LAYERS rows name no part of gateway/"


def test_known_violations_are_well_formed() -> None:
    for key, why in KNOWN_VIOLATIONS.items():
        assert key.split(" ", 1)[0] in {"cycle", "layer", "size", "class"}, key
        assert "#11" in why, f"{key!r}: say which issue #11 work removes it"
    for rel, why in LONG_MODULES.items():
        assert (ROOT.parent / rel).is_file() and why, rel


# The checker itself, on a small package written to disk: each rule must catch what it claims.

def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / PACKAGE


def test_checker_sees_every_kind_of_import(tmp_path: Path) -> None:
    pkg = _write(tmp_path, {
        "gateway/__init__.py": "",
        "gateway/errors.py": "",
        "gateway/util/__init__.py": "",
        "gateway/util/names.py": "",
        "gateway/dns/__init__.py": "",
        "gateway/dns/wire.py": "",
        "gateway/config/__init__.py": "",
        "gateway/config/gateway.py": (
            "from __future__ import annotations\n"
            "from typing import TYPE_CHECKING\n"
            "if TYPE_CHECKING:\n"
            "    from gateway.dns.wire import Query\n"            # line 4
            "def f() -> None:\n"
            "    import gateway.util.names\n"                     # line 6
            "    from ..dns import wire\n"                        # line 7
            "    from . import limits\n"                          # line 8 (missing: ignored)
            "import importlib\n"
            "m = importlib.import_module('gateway.errors')\n"     # line 10
            "from gateway import __version__\n"                   # line 11: the root
        ),
    })
    tree = Tree.scan(pkg)
    got = {(i.imported, i.line) for i in tree.imports if i.importer == "gateway.config.gateway"}
    assert got == {("gateway.dns.wire", 4), ("gateway.util.names", 6), ("gateway.dns.wire", 7),
                   ("gateway.config", 8), ("gateway.errors", 10), ("gateway", 11)}
    assert layering(tree) == {
        "layer gateway.config.gateway -> gateway.dns.wire":
            "gateway/config/gateway.py:4: config may not import dns (gateway.dns.wire)",
    }


def test_checker_finds_each_violation_and_stale_entries(tmp_path: Path) -> None:
    pkg = _write(tmp_path, {
        "gateway/__init__.py": "",
        "gateway/feeds/__init__.py": "",
        "gateway/feeds/client.py": "import gateway.runtime.state\nclass Entry: pass\n",
        "gateway/runtime/__init__.py": "",
        "gateway/runtime/state.py": "def f():\n    from gateway.feeds import client\n",
        "gateway/publisher/__init__.py": "",
        "gateway/publisher/store.py": "from gateway.config.limits import X\nclass Entry: pass\n",
        "gateway/publisher/app.py": "from gateway.config.gateway import Y\n" + "x = 1\n" * 400,
        "gateway/config/__init__.py": "",
        "gateway/config/limits.py": "X = 1\n",
        "gateway/config/gateway.py": "Y = 1\n",
    })
    tree = Tree.scan(pkg)
    assert list(cycles(tree)) == [
        "cycle gateway.feeds.client -> gateway.runtime.state -> gateway.feeds.client"]
    assert "(line 2)" in cycles(tree)[next(iter(cycles(tree)))]
    assert sorted(layering(tree)) == ["layer gateway.feeds.client -> gateway.runtime.state",
                                      "layer gateway.publisher.app -> gateway.config.gateway"]
    assert list(sizes(tree)) == ["size gateway/publisher/app.py"]
    assert list(sizes(tree, allowed={"gateway/publisher/app.py": "cohesive"})) == []
    assert duplicate_classes(tree) == {"class Entry": "class Entry is defined in 2 modules: "
                                       "gateway/feeds/client.py:2, gateway/publisher/store.py:2"}
    known = {"class Entry": "#11", "class Verdict": "#11 fixed already"}
    assert compare("class", duplicate_classes(tree), known) == [
        "FIXED, delete it from KNOWN_VIOLATIONS: 'class Verdict' (#11 fixed already)"]
    assert compare("class", duplicate_classes(tree), {})[0].startswith("NEW: class Entry")
