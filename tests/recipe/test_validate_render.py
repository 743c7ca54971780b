"""`validate` catches what `run` would refuse: templates rendered once against the first row, and
YAML-loader failures that have no position of their own still name the file."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

QUICKSTART = (REPO / "recipes" / "quickstart.yaml").read_text()


def validate(path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "curation.cli", "validate", str(path)], capture_output=True, text=True, env=env)


def with_user(tmp_path: Path, user: str) -> Path:
    (tmp_path / "data").mkdir(exist_ok=True)
    (tmp_path / "data" / "perturbqa-k562-sample.csv").write_text((REPO / "recipes" / "data" / "perturbqa-k562-sample.csv").read_text())
    path = tmp_path / "recipe.yaml"
    path.write_text(re.sub(r"  user: >-\n(    .*\n)+", f"  user: {user}\n", QUICKSTART))
    return path


@pytest.mark.parametrize(
    "user, message",
    [
        ("\"{{ gene.__class__.__mro__ }}\"", "prompt.user: template refused by the sandbox on the first source row: access to attribute '__class__'"),
        ("\"{{ 'x' * 10000000 }}\"", "prompt.user: template refused by the sandbox on the first source row: repetition too large"),
        ("\"{{ '' }}  \"", "prompt.user: template renders an empty prompt on the first source row"),
        ("\"{{ gene | int + 1 }} {{ pert.nope.deeper }}\"", "prompt.user: template fails on the first source row"),
    ],
)
def test_templates_are_rendered_once_against_the_first_row(tmp_path, user, message):
    result = validate(with_user(tmp_path, user))
    assert result.returncode == 2, result.stdout
    line = result.stderr.strip()
    assert len(line.splitlines()) == 1 and "Traceback" not in line
    assert re.match(rf"{re.escape(str(tmp_path / 'recipe.yaml'))}:\d+:\d+: ", line), line
    assert message in line


def test_a_good_template_still_validates(tmp_path):
    result = validate(with_user(tmp_path, "\"Knockdown of {{ pert }}: is {{ gene }} changed?\""))
    assert result.returncode == 0, result.stderr


def test_deep_nesting_names_the_file(tmp_path):
    path = tmp_path / "deep.yaml"
    path.write_text("name: " + "[" * 5000 + "]" * 5000 + "\n")
    result = validate(path)
    assert result.returncode == 2
    assert result.stderr.strip() == f"{path}:1:1: invalid YAML: nested too deeply (a recipe is a few levels of mappings and lists)"


def test_bytes_that_are_not_utf8_name_the_file_and_the_place(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("name: ok\ndescription: caf\xe9\n".encode("latin-1"))
    result = validate(path)
    assert result.returncode == 2
    assert result.stderr.strip() == f"{path}:2:17: not UTF-8 text: byte 0xe9 cannot be decoded (save the recipe as UTF-8)"
