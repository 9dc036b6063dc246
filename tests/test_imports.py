"""The package's import graph: no module of xsoftmax/ imports one that imports it back."""

from __future__ import annotations

import ast
from pathlib import Path

import xsoftmax

PACKAGE = Path(xsoftmax.__file__).parent


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every xsoftmax module ``path`` imports, at module level or inside a function."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("xsoftmax")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            if not target.startswith("xsoftmax"):
                continue
            found.add(target)
            found |= {f"{target}.{a.name}" for a in node.names}  # `from . import x` names modules
    return found


def test_no_import_cycles():
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {m: {t for t in _imports(p) if t in modules and t != m} for m, p in modules.items()}

    def reaches(start: str, goal: str) -> list[str] | None:
        stack, seen = [(start, [start])], set()
        while stack:
            node, path = stack.pop()
            for nxt in graph[node]:
                if nxt == goal:
                    return path + [nxt]
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, path + [nxt]))
        return None

    # The package __init__ re-exports everything, and `from . import x` in it
    # names submodules, so cycles through xsoftmax itself are not counted.
    cycles = []
    for m in modules:
        if m == "xsoftmax":
            continue
        for nxt in graph[m] - {"xsoftmax"}:
            back = reaches(nxt, m)
            if back and "xsoftmax" not in back:
                cycles.append([m, *back])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)
