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


def _defined_names(path: Path) -> set[str]:
    """Names a module binds itself at top level (def, class, assignment), not names it imports from elsewhere."""
    defined: set[str] = set()

    def visit(statements) -> None:
        for node in statements:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                defined.add(node.name)
            elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for target in targets:
                    defined.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
            elif isinstance(node, (ast.If, ast.Try, ast.With)):
                for block in ("body", "orelse", "finalbody"):
                    visit(getattr(node, block, []))
                for handler in getattr(node, "handlers", []):
                    visit(handler.body)

    visit(ast.parse(path.read_text(encoding="utf-8")).body)
    return defined


def _module_path(module: str) -> Path | None:
    base = ROOT.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.exists():
            return candidate
    return None


def test_every_name_is_imported_from_the_module_that_defines_it():
    """No re-export shims: `from curation.x import name` must name the module where `name` is defined,
    in the package, its tests, scripts and benchmarks alike, so a reader finds a name where it is imported from."""
    offenders = []
    files = [p for folder in ("curation", "tests", "scripts", "bench") for p in (ROOT / folder).rglob("*.py")]
    defined_in: dict[str, set[str]] = {}
    for path in files:
        for module, names in _imports(path):
            target = _module_path(module)
            if target is None:
                continue
            if module not in defined_in:
                defined_in[module] = _defined_names(target)
            offenders.extend(f"{path.relative_to(ROOT)}: from {module} import {name}" for name in names if name not in defined_in[module])
    assert not offenders, "imported from a module that does not define them:\n" + "\n".join(sorted(set(offenders)))


def test_no_function_in_the_package_is_over_80_lines():
    """A function a newcomer can hold in their head; the orchestration is split into named passes instead."""
    long = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 80:
                long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)")
    assert not long, "\n".join(long)


def test_no_test_module_imports_another():
    """Tests mirror the stages, a folder each; what several need is a builder (tests/builders/) or a fixture (a
    folder's conftest.py), never a name taken from another test module."""
    offenders = []
    for path in (ROOT / "tests").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tests.") and node.module.rsplit(".", 1)[-1].startswith("test_"):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: from {node.module} import ...")
    assert not offenders, "\n".join(offenders)
