"""The package's shape, as DESIGN.md draws it: one folder per stage, no import cycles between modules
(imports inside functions count too), no import from a stage into an earlier one, imports at the top of
files, and the Linux-only calls only inside the helpers that fall back from them."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "midigen"
# Data flows left to right; a module may import from its own stage and from earlier ones only.
STAGES = ["music", "data", "model", "eval", "train", "generate", "studio", "cli"]  # train runs eval
BASE = {"midigen", "midigen.errors", "midigen.fsutil", "midigen.device"}  # shared by every stage


def module_name(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in PKG.rglob("*.py")}


def imports_of(path: Path, modules: dict[str, Path]) -> set[str]:
    """midigen modules that ``path`` imports anywhere in its code."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("midigen"):
            out |= {f"{node.module}.{a.name}" for a in node.names} | {node.module}
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("midigen")}
    return {m for m in out if m in modules and m != module_name(path)} - {"midigen"}


def stage_of(module: str) -> int:
    """-1 for the shared base modules; the stage's index otherwise."""
    parts = module.split(".")
    return STAGES.index(parts[1]) if len(parts) > 1 and parts[1] in STAGES else -1


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


def import_graph() -> dict[str, set[str]]:
    modules = all_modules()
    return {m: imports_of(p, modules) for m, p in modules.items()}


def test_every_module_sits_in_a_stage_folder():
    loose = {m for m in all_modules() if stage_of(m) == -1} - BASE - {"midigen.__main__"}
    assert not loose, f"modules outside the stage folders: {sorted(loose)}"
    folders = {p.name for p in PKG.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert folders == set(STAGES), folders


def test_no_import_cycles():
    graph = import_graph()
    assert {"midigen.data.workers", "midigen.fsutil"} <= graph["midigen.data.corpus"]
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]  # the check itself works


def test_no_import_from_a_later_stage():
    bad = [f"{m} -> {d}" for m, deps in import_graph().items() if m != "midigen.__main__"
           for d in deps if stage_of(d) > stage_of(m)]
    assert not bad, "imports against the data flow: " + "; ".join(sorted(bad))
    assert stage_of("midigen.cli.main") > stage_of("midigen.music.codec") > stage_of("midigen.errors")


def inner_imports(path: Path) -> list[int]:
    """Line numbers of midigen imports inside functions, less those marked ``# start-up time``."""
    lines = path.read_text(encoding="utf-8").splitlines()
    out = []
    for fn in (n for n in ast.walk(ast.parse("\n".join(lines))) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))):
        for node in ast.walk(fn):
            names = ([node.module or ""] if isinstance(node, ast.ImportFrom)
                     else [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            if any(n.startswith("midigen") for n in names) and "start-up time" not in lines[node.lineno - 1]:
                out.append(node.lineno)
    return out


def test_midigen_imports_sit_at_the_top():
    found = {str(p.relative_to(PKG)): ln for p in PKG.rglob("*.py") if (ln := inner_imports(p))}
    assert not found, f"midigen imports inside functions (move them up, or mark '# start-up time'): {found}"


def test_linux_only_calls_only_inside_their_fallbacks():
    allowed = {"sched_getaffinity": ("workers.py", "usable_cpus"), "fcntl": ("fsutil.py", "file_lock"),
               "msvcrt": ("fsutil.py", "file_lock"), "prctl": ("workers.py", "_die_with_parent")}
    for path in PKG.rglob("*.py"):
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


def test_child_process_modules_start_without_torch():
    """Worker and sandbox children import these modules at start; torch would cost them seconds each
    (the upload reader's time limit is 3 s), so they must not reach it through a top-level import."""
    for module in ("midigen.data.prepare", "midigen.data.corpus", "midigen.studio.upload", "midigen.generate.synth"):
        code = f"import sys, {module}; print('torch' in sys.modules)"
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PKG.parent, check=True)
        assert out.stdout.strip() == "False", f"{module} imports torch"
