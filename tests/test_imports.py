"""The import graph of the repository's own modules has no circle, library modules do not edit
sys.path or import command scripts, and every module imports on its own.

The graph is read from the source (every ``import`` statement, also those inside functions), so
a circle hidden behind a lazy import counts too.
"""
from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Set

import pytest

REPO = Path(__file__).resolve().parent.parent
LIBRARY = ("datasets", "demo", "engine", "extensions", "models", "utils")
COMMANDS = ("main.py", "main_vis.py", "segmentation/main.py", "tools", "bench")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def repo_modules() -> Dict[str, Path]:
    files = [p for top in LIBRARY for p in (REPO / top).rglob("*.py")]
    files += [REPO / "main.py", REPO / "main_vis.py", REPO / "segmentation" / "main.py"]
    files += list((REPO / "tools").glob("*.py")) + list((REPO / "bench").glob("*.py"))
    return {module_name(p): p for p in files}


def imports_of(name: str, path: Path, known: Set[str]) -> Set[str]:
    """The repository modules ``name`` imports (``from pkg import sub`` counts as ``pkg.sub``)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)] if package else []
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def find_cycle(graph: Dict[str, Set[str]]) -> List[str]:
    state: Dict[str, int] = {}
    stack: List[str] = []

    def visit(node: str) -> List[str]:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return []

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return []


def import_graph() -> Dict[str, Set[str]]:
    modules = repo_modules()
    known = set(modules)
    return {name: imports_of(name, path, known) for name, path in modules.items()}


def test_cycle_finder_sees_a_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []


def test_no_import_circle():
    cycle = find_cycle(import_graph())
    assert not cycle, "import circle: " + " -> ".join(cycle)


def test_library_does_not_import_commands_or_edit_sys_path():
    graph = import_graph()
    commands = {m for m in graph if m in ("main", "main_vis", "segmentation.main") or m.startswith(("tools", "bench"))}
    for name, path in repo_modules().items():
        if name.split(".")[0] in LIBRARY:
            assert not graph[name] & commands, f"{name} imports command scripts {sorted(graph[name] & commands)}"
            assert "sys.path" not in path.read_text(), f"library module {name} edits sys.path"


def test_utils_imports_no_package_above_it():
    """utils/ is the bottom layer: its modules (lazy imports included) import nothing from the
    models, the ops, the datasets or the engine, which build on it."""
    above = ("models", "extensions", "datasets", "engine")
    for name, found in import_graph().items():
        if name.split(".")[0] == "utils":
            upward = sorted(m for m in found if m.split(".")[0] in above)
            assert not upward, f"{name} imports {upward}"


def test_import_graph_sees_lazy_imports(tmp_path):
    path = tmp_path / "mod.py"
    path.write_text("def f():\n    from models.layers import EMBED_COMPUTE_MODES\n    import engine.svm\n")
    assert imports_of("utils.mod", path, {"models.layers", "engine.svm", "utils.mod"}) == {"models.layers",
                                                                                         "engine.svm"}


@pytest.mark.parametrize("name", sorted(m for m in repo_modules() if m.split(".")[0] in LIBRARY))
def test_library_module_imports(name):
    importlib.import_module(name)


def test_commands_show_help_from_another_directory(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    scripts = ["main.py", "main_vis.py", "segmentation/main.py", *sorted(
        str(p.relative_to(REPO)) for p in (REPO / "tools").glob("*.py"))]

    def show_help(script):
        return subprocess.run([sys.executable, str(REPO / script), "--help"], cwd=tmp_path, capture_output=True,
                              text=True, timeout=300)

    with ThreadPoolExecutor(max_workers=4) as pool:  # each process mostly waits on imports: run a few at once
        results = list(pool.map(show_help, scripts))
    for script, result in zip(scripts, results):
        assert result.returncode == 0 and "usage" in result.stdout.lower(), f"{script}: {result.stderr[-2000:]}"
