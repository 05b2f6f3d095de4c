"""The package's shape: no import cycles (lazy imports inside functions count too), and the
Linux-only calls appear only inside the helpers that fall back from them."""
from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "midigen"


def imports_of(path: Path) -> set[str]:
    """midigen modules that ``path`` imports anywhere in its code."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module == "midigen":
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("midigen."):
            out.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            out |= {a.name.split(".")[1] for a in node.names if a.name.startswith("midigen.")}
    return {m for m in out if (PKG / f"{m}.py").exists() and m != path.stem}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(m):
        state[m] = 1
        path.append(m)
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                return path[path.index(d):] + [d]
            if d not in state and (found := visit(d)):
                return found
        path.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_no_import_cycles():
    graph = {p.stem: imports_of(p) for p in PKG.glob("*.py")}
    assert {"workers", "fsutil"} <= graph["corpus"] and "prepare" not in graph["corpus"]
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]  # the check itself works


def test_linux_only_calls_only_inside_their_fallbacks():
    allowed = {"sched_getaffinity": ("workers.py", "usable_cpus"), "fcntl": ("fsutil.py", "file_lock"),
               "msvcrt": ("fsutil.py", "file_lock"), "prctl": ("workers.py", "_die_with_parent")}
    for path in PKG.glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for fn in [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.Module))]:
            body = fn.body if isinstance(fn, ast.FunctionDef) else [n for n in fn.body
                                                                    if not isinstance(n, (ast.FunctionDef, ast.ClassDef))]
            for node in (n for stmt in body for n in ast.walk(stmt)):
                names = ({node.attr} if isinstance(node, ast.Attribute) else {node.id} if isinstance(node, ast.Name)
                         else {a.name for a in node.names} if isinstance(node, ast.Import) else set())
                for name in names & set(allowed):
                    where = (path.name, getattr(fn, "name", "<module>"))
                    assert where == allowed[name], f"{name} used in {where}; keep it in {allowed[name]}"
