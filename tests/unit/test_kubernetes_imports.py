"""The Kubernetes backend's modules import each other without a cycle: every import counts,
those under ``TYPE_CHECKING`` and inside functions too (a cycle hidden there is still one)."""

from __future__ import annotations

import ast
from pathlib import Path

import juliarun.backends.kubernetes as package

PACKAGE = package.__name__
ROOT = Path(package.__file__).parent


def imports_of(path: Path) -> set[str]:
    """The modules of the package that the module at ``path`` imports."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(PACKAGE):
            if node.module == PACKAGE:  # from the package import a module (or a name)
                found |= {
                    f"{PACKAGE}.{a.name}" for a in node.names if (ROOT / f"{a.name}.py").exists()
                }
            else:
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith(PACKAGE + ".")}
    return found


def graph() -> dict[str, set[str]]:
    return {
        f"{PACKAGE}.{path.stem}": imports_of(path) - {f"{PACKAGE}.{path.stem}"}
        for path in sorted(ROOT.glob("*.py"))
        if path.stem != "__init__"
    }


def cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, as the modules along it, or ``None``."""
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> list[str] | None:
        if module in path:
            return [*path[path.index(module) :], module]
        if module in done or module not in edges:
            return None
        for dep in sorted(edges[module]):
            found = visit(dep, [*path, module])
            if found:
                return found
        done.add(module)
        return None

    for module in sorted(edges):
        found = visit(module, [])
        if found:
            return found
    return None


def test_the_checker_finds_a_cycle() -> None:
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_no_module_of_the_kubernetes_backend_is_in_an_import_cycle() -> None:
    edges = graph()
    assert f"{PACKAGE}.collector" in edges and f"{PACKAGE}.backend" in edges
    assert f"{PACKAGE}.backend" not in edges[f"{PACKAGE}.collector"]
    assert cycle(edges) is None
