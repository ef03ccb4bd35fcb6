"""The import graph of the server and the client: no circle of modules, no pair of packages that
import each other, and nothing imports a private generated-code package (the protocol is the public
`circuit_proto`). Read from the source with `ast`, so an import inside a function counts too."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = {"circuit_serve": ROOT / "server" / "circuit_serve", "circuit_client": ROOT / "client" / "circuit_client"}


def _modules() -> dict[str, Path]:
    mods = {}
    for name, root in PACKAGES.items():
        for path in root.rglob("*.py"):
            dotted = ".".join((name, *path.relative_to(root).with_suffix("").parts))
            mods[dotted.removesuffix(".__init__")] = path
    return mods


def _imports(mods: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the project modules it imports (`from pkg import submodule` names the submodule)."""
    edges: dict[str, set[str]] = defaultdict(set)
    for mod, path in mods.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
                subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in mods]
                targets = subs + ([base] if len(subs) < len(node.names) else [])
            else:
                continue
            edges[mod].update(t for t in targets if t in mods and t != mod)
    return edges


def _package(mod: str) -> str:
    return ".".join(mod.split(".")[:2])


def test_no_module_import_circle():
    mods = _modules()
    edges = _imports(mods)
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    circles = []

    def visit(mod: str, path: list[str]) -> None:
        state[mod] = 1
        for dep in sorted(edges[mod]):
            if state.get(dep) == 1:
                circles.append(path[path.index(dep) :] + [dep])
            elif dep not in state:
                visit(dep, [*path, dep])
        state[mod] = 2

    for mod in sorted(mods):
        if mod not in state:
            visit(mod, [mod])
    assert not circles, circles


def test_no_two_packages_import_each_other():
    edges = _imports(_modules())
    pairs = {(_package(a), _package(b)) for a, deps in edges.items() for b in deps if _package(a) != _package(b)}
    both_ways = sorted((a, b) for a, b in pairs if (b, a) in pairs and a < b)
    assert not both_ways


def test_nothing_imports_a_private_generated_package():
    offenders = []
    for tree_root in ("server", "client", "tests", "bench"):
        for path in (ROOT / tree_root).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom | ast.Import):
                    names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
                    offenders += [(str(path.relative_to(ROOT)), n) for n in names if "._pb" in n or n.startswith("_pb")]
    assert not offenders
