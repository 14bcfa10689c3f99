"""The layer rule (DESIGN.md), read from the source: which juliarun module imports what.

- Prefect is imported only by ``deployments/``, ``flows/``, ``tasks/``, ``blocks/`` and the
  facade (``juliarun``, ``api``, ``cli``, ``demo``, ``hooks``), never by the plain layers below;
- the plain layers never import ``tasks``, ``flows``, ``deployments``, ``blocks`` or the facade;
- no import cycle among juliarun's modules.

Every import counts, also those inside functions and under ``TYPE_CHECKING``: a lazy import is
still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import juliarun

SRC = Path(juliarun.__file__).parent
PREFECT_LAYERS = ("deployments", "flows", "tasks", "blocks")
FACADE = ("__init__", "api", "cli", "cli_login", "demo", "demo_autoscale", "demo_cluster", "hooks")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def layer(module: str) -> str:
    """``prefect`` (a Prefect layer), ``facade`` or ``plain``."""
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else "__init__"
    if top in PREFECT_LAYERS:
        return "prefect"
    if top in FACADE:
        return "facade"
    return "plain"


def resolve(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = module.split(".")
    is_package = MODULES[module].name == "__init__.py"
    base = package if is_package else package[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports(module: str) -> set[str]:
    """Every module ``module`` imports (a name imported from a package that is one of its
    submodules counts as that submodule)."""
    tree = ast.parse(MODULES[module].read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            target = resolve(module, node)
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in MODULES else target)
    return found


GRAPH = {m: {i for i in imports(m) if i in MODULES and i != m} for m in MODULES}


def test_the_modules_are_found() -> None:
    assert {"juliarun.api", "juliarun.backends.base", "juliarun.flows.run_job"} <= set(MODULES)
    assert layer("juliarun.backends.base") == "plain"
    assert layer("juliarun.tasks.jobs") == "prefect"
    assert layer("juliarun.api") == layer("juliarun") == "facade"
    # the router is its own ASGI app, a plain layer: no Prefect, no facade
    assert {"juliarun.router", "juliarun.router.app", "juliarun.router.session"} <= set(MODULES)
    assert {layer(m) for m in MODULES if m.startswith("juliarun.router")} == {"plain"}


def test_no_prefect_below_the_blocks() -> None:
    offenders = sorted(
        f"{m} imports {i}"
        for m in MODULES
        if layer(m) == "plain"
        for i in imports(m)
        if i == "prefect" or i.startswith(("prefect.", "prefect_"))
    )
    assert offenders == []


def test_plain_layers_import_no_task_flow_block_or_facade() -> None:
    offenders = sorted(
        f"{m} imports {i}"
        for m, targets in GRAPH.items()
        if layer(m) == "plain"
        for i in targets
        if layer(i) != "plain"
    )
    assert offenders == []


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (as a path that ends where it starts), or ``None``."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)) is not None:
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)) is not None:
            return cycle
    return None


def without_parents(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """A package's ``__init__`` re-exporting its own submodules is not a cycle with them."""
    return {
        m: {i for i in targets if not (m.startswith(i + ".") or i.startswith(m + "."))}
        for m, targets in graph.items()
    }


def test_no_import_cycle() -> None:
    assert find_cycle(without_parents(GRAPH)) is None


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
