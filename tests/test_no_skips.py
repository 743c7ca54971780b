"""`make test` passes --no-skips: a skipped test fails the run, with its reason printed."""

import shutil
import subprocess
import sys
from pathlib import Path


def test_a_skip_fails_the_run_only_under_no_skips(tmp_path):
    shutil.copy(Path(__file__).parent / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "test_example.py").write_text("import pytest\n\ndef test_ok():\n    pass\n\ndef test_missing():\n    pytest.skip('llama-server is not built')\n")
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)]
    plain = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True)
    strict = subprocess.run([*command, "--no-skips"], cwd=tmp_path, capture_output=True, text=True)
    assert plain.returncode == 0
    assert strict.returncode == 1 and "test_missing: Skipped: llama-server is not built" in strict.stdout
    # as `make test` runs it, on pytest-xdist workers: the skip is reported by a worker and still fails the run
    parallel = subprocess.run([*command, "--no-skips", "-n", "2", "--dist", "loadgroup"], cwd=tmp_path, capture_output=True, text=True)
    assert parallel.returncode == 1 and "test_missing: Skipped: llama-server is not built" in parallel.stdout, parallel.stdout[-2000:]
    (tmp_path / "test_example.py").write_text("def test_ok():\n    pass\n")
    assert subprocess.run([*command, "--no-skips"], cwd=tmp_path, capture_output=True, text=True).returncode == 0
    assert subprocess.run([*command, "--no-skips", "-n", "2"], cwd=tmp_path, capture_output=True, text=True).returncode == 0
