"""Nothing in the repository reads a folder outside it.

A plain clone is all a user has. The project's own CI machines keep reference files beside the
checkout; a test or build step that reaches for them passes in CI and fails for every user (it
happened: the TGI protocol server read TGI's spec from a sibling folder). This test reads every
tracked code, test and build file and refuses references to a folder above or beside the checkout.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CODE_SUFFIXES = {".py", ".sh", ".toml", ".cfg", ".ini", ".yaml", ".yml", ".sbatch", ".txt", ".j2", ".jinja"}
BUILD_NAMES = {"Makefile", "run"}  # .ci/run
# Spelled in pieces so that this file does not match itself.
SIBLING = "sh" + "ared"
FORBIDDEN = [
    (re.compile(r"\.\./" + SIBLING + r"\b"), "a sibling folder of the checkout"),
    (re.compile(SIBLING + r"/(reference|data)/"), "the CI machines' reference folder"),
    (re.compile(r"(?<![\w.~])/" + "work" + r"/"), "an absolute path of the build machines"),
    (re.compile(r"\b(REPO|ROOT|REPO_ROOT|HERE)\.parent\b"), "the folder above the checkout"),
]
# A relative path literal that climbs: resolved against the file's folder, it must stay inside.
CLIMBING = re.compile(r"(?<![\w.])((?:\.\./)+[\w.\-/]*)")


def tracked_files() -> list[Path]:
    names = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    files = []
    for name in names:
        path = ROOT / name
        if path == Path(__file__).resolve() or not path.is_file():
            continue
        if path.suffix in CODE_SUFFIXES or path.name in BUILD_NAMES:
            files.append(path)
    return files


def test_no_tracked_code_test_or_build_file_refers_outside_the_repository():
    problems = []
    for path in tracked_files():
        text = path.read_text(errors="replace")
        for number, line in enumerate(text.splitlines(), 1):
            for pattern, what in FORBIDDEN:
                if pattern.search(line):
                    problems.append(f"{path.relative_to(ROOT)}:{number}: refers to {what}: {line.strip()[:120]}")
            # tests build hostile relative paths on purpose (a recipe that tries to climb out); elsewhere a
            # climbing path is a real reference and must land inside the checkout
            if path.parts[len(ROOT.parts)] == "tests":
                continue
            for literal in CLIMBING.findall(line):
                target = (path.parent / literal).resolve()
                if ROOT not in target.parents and target != ROOT:
                    problems.append(f"{path.relative_to(ROOT)}:{number}: {literal} leaves the checkout")
    assert not problems, "\n".join(problems)


def test_the_check_sees_what_it_forbids(tmp_path):
    """The patterns are live: each catches the kind of line that once broke a plain clone."""
    lines = [
        'SPEC = Path("../' + SIBLING + '/reference/tgi/openapi.json")',
        'DATA = REPO.parent / "' + SIBLING + '" / "data"',
        "cp /" + "work/x y",
    ]
    for line in lines:
        assert any(pattern.search(line) for pattern, _ in FORBIDDEN), line
    assert not (ROOT / "recipes" / "../../outside").resolve().is_relative_to(ROOT)
