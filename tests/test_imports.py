"""The package's module graph: every module imports on its own, and no two modules import each other, even lazily.

The graph is read from the source (every ``import curation...`` / ``from curation... import``, at
module level or inside functions, except under ``if TYPE_CHECKING:``), so a cycle hidden in a
function-level import counts too. No private names (``_x``) are imported across modules either.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "curation"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = sorted(_module_name(p) for p in PACKAGE.rglob("*.py"))


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module imported, names taken from it) for every curation import in the file."""
    found = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for sub in child.orelse:
                    visit(sub)
                continue
            if isinstance(child, ast.Import):
                found.extend((alias.name, []) for alias in child.names if alias.name.startswith("curation"))
            elif isinstance(child, ast.ImportFrom) and child.module and child.module.startswith("curation") and child.level == 0:
                names = [alias.name for alias in child.names]
                submodules = [f"{child.module}.{n}" for n in names if f"{child.module}.{n}" in MODULES]
                if submodules:
                    found.extend((m, []) for m in submodules)
                    names = [n for n in names if f"{child.module}.{n}" not in MODULES]
                if names:
                    found.append((child.module, names))
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    return found


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        name = _module_name(path)
        # `import curation` (the package itself, for __version__) is not a dependency on a stage
        graph[name] = {m for m, _ in _imports(path) if m != name and m != "curation"}
    return graph


def test_no_import_cycles():
    graph = _graph()
    cycles = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def walk(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                cycles.append(stack[stack.index(target) :] + [target])
            elif target not in state:
                walk(target)
        stack.pop()
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            walk(module)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_no_private_names_imported_across_modules():
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        for module, names in _imports(path):
            offenders.extend(f"{_module_name(path)}: from {module} import {n}" for n in names if n.startswith("_") and not n.startswith("__"))
    assert not offenders, "\n".join(offenders)


def test_each_module_imports_alone():
    """Each module in a fresh interpreter of its own (a few at a time), so no import relies on another having run first."""
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}
    failures = []
    for start in range(0, len(MODULES), 8):
        batch = MODULES[start : start + 8]
        running = [(m, subprocess.Popen([sys.executable, "-c", f"import {m}"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)) for m in batch]
        for module, process in running:
            _, stderr = process.communicate(timeout=300)
            if process.returncode:
                failures.append(f"{module}: {stderr.strip().splitlines()[-1] if stderr.strip() else process.returncode}")
    assert not failures, "\n".join(failures)
