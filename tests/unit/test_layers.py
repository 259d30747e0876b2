"""One-way layers: every import between top-level packages points down, and no module cycles.

``LAYERS`` is the rule, declared once, bottom to top. A package may import its own modules and
any package on a lower line; packages on one line are siblings and do not import each other.
Every import statement counts: at module level, inside functions, under ``TYPE_CHECKING``,
absolute or relative (``importlib.import_module`` with a string is not seen). ``tests`` and
``bench`` sit above everything and may import anything; their own cycles still count.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]

LAYERS: tuple[tuple[str, ...], ...] = (
    ("settings",),  # a leaf: imports nothing of ours
    ("schemas", "modelmora"),  # message contracts; generated gRPC code
    ("topology",),  # topics and consumer groups
    ("core",),  # domain rules, store interfaces and their Cassandra/S3 adapters
    ("producers",),  # the Kafka producer and the event sink over it
    ("messaging", "infra"),  # Kafka plumbing of ingress and workers; the local stack
    ("api", "consumers", "sdk"),  # the faces: ingress, workers and processors, client SDK
    ("cli",),  # the composition root
    ("tests", "bench"),  # not checked as importers
)
EXEMPT = {"tests", "bench"}
RANK = {package: rank for rank, line in enumerate(LAYERS) for package in line}


@dataclass(frozen=True)
class Edge:
    importer: str
    imported: str
    path: Path
    line: int

    def __str__(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}: {self.importer} -> {self.imported}"


def discover() -> dict[str, tuple[Path, bool]]:
    """Module name -> (file, is a package ``__init__``) for every module of every package in ``LAYERS``."""
    modules: dict[str, tuple[Path, bool]] = {}
    for package in RANK:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if any(part.startswith(".") for part in parts):  # e.g. modelmora/.codegen-* while generating
                continue
            is_package = parts[-1] == "__init__"
            modules[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return modules


def _known(name: str, modules: dict[str, tuple[Path, bool]]) -> str | None:
    """The module ``name`` refers to: itself, else its longest prefix that is one of ours (``a.b.Name`` -> ``a.b``)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _targets(node: ast.Import | ast.ImportFrom, module: str, is_package: bool,
             modules: dict[str, tuple[Path, bool]]) -> Iterator[str]:
    if isinstance(node, ast.Import):
        for alias in node.names:
            if found := _known(alias.name, modules):
                yield found
        return
    base = node.module or ""
    if node.level:
        package = module.split(".") if is_package else module.split(".")[:-1]
        package = package[: len(package) - (node.level - 1)]
        base = ".".join([*package, *([node.module] if node.module else [])])
    for alias in node.names:
        submodule = f"{base}.{alias.name}"  # ``from a import b`` where b is a module
        if found := _known(submodule if submodule in modules else base, modules):
            yield found


@cache
def import_edges() -> tuple[Edge, ...]:
    modules = discover()
    edges = []
    for module, (path, is_package) in modules.items():
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import | ast.ImportFrom):
                for target in dict.fromkeys(_targets(node, module, is_package, modules)):
                    if target != module:
                        edges.append(Edge(module, target, path, node.lineno))
    return tuple(edges)


def strongly_connected(edges: Sequence[Edge]) -> list[list[str]]:
    """Tarjan: the components with more than one module (each one holds at least one cycle)."""
    graph: dict[str, set[str]] = {}
    for edge in edges:
        graph.setdefault(edge.importer, set()).add(edge.imported)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in sorted(graph.get(node, ())):
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def test_every_top_level_package_has_a_layer() -> None:
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py") if not p.parent.name.startswith(".")}
    assert packages == set(RANK), "add the package to LAYERS (or remove a stale entry)"


def test_imports_only_point_down() -> None:
    upward = [
        edge for edge in import_edges()
        if (src := edge.importer.partition(".")[0]) not in EXEMPT
        and (dst := edge.imported.partition(".")[0]) != src
        and RANK[dst] >= RANK[src]
    ]
    assert not upward, "imports that point up or sideways (see LAYERS):\n" + "\n".join(map(str, upward))


def shortest_cycle(start: str, edges: Sequence[Edge]) -> list[Edge]:
    """The shortest import path from ``start`` back to itself (breadth first), as its edges."""
    by_importer: dict[str, list[Edge]] = {}
    for edge in edges:
        by_importer.setdefault(edge.importer, []).append(edge)
    paths: dict[str, list[Edge]] = {start: []}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for edge in by_importer.get(node, ()):
                if edge.imported == start:
                    return [*paths[node], edge]
                if edge.imported not in paths:
                    paths[edge.imported] = [*paths[node], edge]
                    following.append(edge.imported)
        frontier = following
    return []


def test_no_module_imports_itself_back() -> None:
    edges = import_edges()
    report = []
    for component in strongly_connected(edges):
        members = set(component)
        cycle = shortest_cycle(component[0], [e for e in edges if e.importer in members and e.imported in members])
        report.append(f"{len(component)} modules in a cycle ({', '.join(component)}), e.g.:\n"
                      + "\n".join(f"  {edge}" for edge in cycle))
    assert not report, "\n".join(report)


def test_the_checker_sees_lazy_and_from_imports() -> None:
    # The rules above pass vacuously if the walk misses edges: check it finds known ones.
    found = {(e.importer, e.imported) for e in import_edges()}
    assert ("schemas.codec", "schemas.json_views") in found  # inside a method
    assert ("cli.main", "messaging.redrive") in found  # inside a command
    assert ("consumers.inference.builtin", "consumers.inference.torch_models") in found  # from package import module
    assert ("core.serving.service", "core.serving.replies") in found


def test_the_checker_resolves_relative_imports() -> None:
    # None in the code today; resolved like Python does should one appear.
    modules = {name: (ROOT, name in ("p", "p.q")) for name in ("p", "p.a", "p.q", "p.q.b", "p.q.c")}
    source = "from . import c\nfrom .c import Name\nfrom .. import a\nfrom ..a import Name2\nimport p.q.b\n"
    nodes = [n for n in ast.parse(source).body if isinstance(n, ast.Import | ast.ImportFrom)]
    assert [t for n in nodes for t in _targets(n, "p.q.b", False, modules)] == ["p.q.c", "p.q.c", "p.a", "p.a", "p.q.b"]
    from_init = ast.parse("from . import b").body[0]
    assert isinstance(from_init, ast.ImportFrom)
    assert list(_targets(from_init, "p.q", True, modules)) == ["p.q.b"]
