"""No import circles in router/ or providers/: a module never imports one that imports it back.

Module-level imports count, those under `if TYPE_CHECKING:` too (a circle for the type
checker is still a circle for the reader); imports inside a function body do not.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("router", "providers")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def top_level_imports(source: str, module: str, is_package: bool) -> set[str]:
    """Every name a module imports outside its functions and classes, resolved to absolute
    dotted names (`from router import keys` gives both `router` and `router.keys`)."""
    out: set[str] = set()

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                continue
            if isinstance(node, ast.Import):
                out.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    here = module.split(".") if is_package else module.split(".")[:-1]
                    here = here[:len(here) - node.level + 1]
                    base = ".".join(here + ([base] if base else []))
                out.add(base)
                out.update(f"{base}.{a.name}" for a in node.names)
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.stmt):
                    visit([child])
                elif isinstance(child, ast.ExceptHandler):
                    visit(child.body)
    visit(ast.parse(source).body)
    return out


def import_graph(sources: dict[str, tuple[str, bool]]) -> dict[str, set[str]]:
    """module -> the modules of `sources` it imports; `sources`: module -> (text, is_package)."""
    return {m: {i for i in top_level_imports(text, m, pkg) if i in sources and i != m}
            for m, (text, pkg) in sources.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One circle per back edge of a depth-first walk, each as `a -> b -> ... -> a`; none: []."""
    found: list[list[str]] = []
    state: dict[str, int] = {}           # 1: on the current path, 2: done
    path: list[str] = []

    def walk(m: str) -> None:
        state[m] = 1
        path.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                found.append(path[path.index(n):] + [n])
            elif n not in state:
                walk(n)
        path.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            walk(m)
    return found


def project_sources() -> dict[str, tuple[str, bool]]:
    return {module_name(p): (p.read_text(encoding="utf-8"), p.name == "__init__.py")
            for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def test_no_module_imports_one_that_imports_it_back() -> None:
    graph = import_graph(project_sources())
    assert "router.routes" in graph and graph["router.routes"], "the graph must see the project's imports"
    circles = cycles(graph)
    assert not circles, "import circles (break them; see router/config.py and router/attempts.py):\n" + \
        "\n".join(" -> ".join(c) for c in circles)


@pytest.mark.parametrize(("sources", "expected"), [
    ({"p.a": ("from p.b import X\n", False), "p.b": ("import p.a\n", False)}, [["p.a", "p.b", "p.a"]]),
    ({"p.a": ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from p.b import X\n", False),
      "p.b": ("from p import a\n", False), "p": ("", True)}, [["p.a", "p.b", "p.a"]]),
    ({"p.a": ("from .b import X\n", False), "p.b": ("from .c import Y\n", False),
      "p.c": ("from . import a\n", False), "p": ("", True)}, [["p.a", "p.b", "p.c", "p.a"]]),
    ({"p.a": ("def f():\n    from p.b import X\n", False), "p.b": ("import p.a\n", False)}, []),
    ({"p.a": ("from p.b import X\n", False), "p.b": ("import os\n", False)}, []),
], ids=["direct", "type-checking", "relative-three", "function-body-not-counted", "no-circle"])
def test_cycles_finds_each_kind_of_circle(sources: dict[str, tuple[str, bool]], expected: list[list[str]]) -> None:
    assert cycles(import_graph(sources)) == expected
