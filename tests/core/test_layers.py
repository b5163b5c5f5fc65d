"""The import graph of dispytch-core: no cycle, and no module importing one above it.

Every ``import`` in every module counts, wherever it stands: at module level, under
``if TYPE_CHECKING:`` and inside functions (a function-level import that dodges a cycle
is still a cycle in the design). Read with :mod:`ast`, nothing is imported.
"""

from __future__ import annotations

import ast
from pathlib import Path

import dispytch

SRC = Path(dispytch.__file__).resolve().parent
if not (SRC / "dispatcher.py").exists():  # pragma: no cover - an unexpected layout
    raise RuntimeError(f"dispytch-core sources not found at {SRC}")

#: The floors, bottom up (review 1.4): a module may import its own floor or lower ones.
#: A module is placed by its longest matching prefix.
FLOORS: list[tuple[str, ...]] = [
    (
        "dispytch._version",
        "dispytch.errors",
        "dispytch.patterns",
        "dispytch.message",
        "dispytch.serialization",
        "dispytch.backoff",
        "dispytch.options",
        "dispytch.cqrs.errors",
    ),
    ("dispytch.routes",),
    ("dispytch.transport", "dispytch.event", "dispytch.cqrs.wire", "dispytch.cqrs.messages"),
    ("dispytch.context",),
    ("dispytch.di", "dispytch.middleware", "dispytch.memory", "dispytch.cqrs.handlers"),
    ("dispytch.plugins",),
    ("dispytch.router",),
    (
        "dispytch.emitter",
        "dispytch.dispatch",
        "dispytch.dispatcher",
        "dispytch.cqrs.serve",
        "dispytch.cqrs.bus",
    ),
    ("dispytch.durable",),
    ("dispytch.cli", "dispytch.testing", "dispytch", "dispytch.cqrs"),
]


def _modules() -> dict[str, Path]:
    out: dict[str, Path] = {}
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _target(name: str) -> str | None:
    """The core module an imported name refers to (a submodule, else its package)."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def _imports(module: str, path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_pkg = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module if is_pkg else module.rpartition(".")[0]
                for _ in range(node.level - 1):
                    package = package.rpartition(".")[0]
                base = f"{package}.{base}" if base else package
            # ``from pkg import sub`` imports the submodule when there is one.
            names = [f"{base}.{alias.name}" for alias in node.names] or [base]
            names = [n if _target(n) == n else base for n in names]
        else:
            continue
        for name in names:
            if not name.startswith("dispytch"):
                continue
            target = _target(name)
            # Importing ``a.b`` runs ``a/__init__`` first; that parent edge is how packages
            # work, not a dependency of the module, and is not counted.
            if target is not None and target != module:
                out.add(target)
    return out


GRAPH = {module: _imports(module, path) for module, path in MODULES.items()}


def _floor(module: str) -> int:
    best, best_len = -1, -1
    for i, prefixes in enumerate(FLOORS):
        for prefix in prefixes:
            # The root package is placed by its exact name only.
            nested = prefix != "dispytch" and module.startswith(prefix + ".")
            if (module == prefix or nested) and len(prefix) > best_len:
                best, best_len = i, len(prefix)
    return best


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_walk_sees_the_modules_and_their_edges() -> None:
    # Guard the guard: the walk must find the corridor's modules and known edges,
    # including a function-level and a TYPE_CHECKING one of the fixture below.
    for name in ("dispytch.dispatcher", "dispytch.context", "dispytch.message", "dispytch.cli"):
        assert name in MODULES
    assert "dispytch.context" in GRAPH["dispytch.di"]
    assert "dispytch.plugins.tables" in GRAPH["dispytch.plugins"]
    assert "dispytch.dispatch.scheduler" in GRAPH["dispytch.dispatcher"]
    cyclic = {
        "a": {"b"},
        "b": {"c"},
        "c": {"a"},
        "d": {"a"},
    }
    assert _cycles(cyclic) == [["a", "b", "c"]]
    tree = ast.parse(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from dispytch.router import Router\n"
        "def f():\n    from dispytch.plugins import serializer_for\n"
    )
    seen = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert {"dispytch.router", "dispytch.plugins"} <= seen


def test_no_import_cycle_in_core() -> None:
    cycles = _cycles(GRAPH)
    assert not cycles, (
        "Import cycle(s) in dispytch-core (counting TYPE_CHECKING and function-level "
        f"imports): {cycles}. Move what both sides need down a floor (see FLOORS)."
    )


def test_every_module_has_a_floor() -> None:
    unplaced = sorted(m for m in MODULES if _floor(m) < 0)
    assert not unplaced, f"Place these modules on a floor in FLOORS: {unplaced}"


def test_no_module_imports_one_above_it() -> None:
    upward = sorted(
        f"{module} (floor {_floor(module)}) -> {target} (floor {_floor(target)})"
        for module, targets in GRAPH.items()
        for target in targets
        if _floor(target) > _floor(module)
    )
    assert not upward, "Upward imports in dispytch-core:\n" + "\n".join(upward)
