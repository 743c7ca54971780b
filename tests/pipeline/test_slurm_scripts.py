"""scripts/slurm/: the array and merge job scripts run as Slurm would run them, and submit.sh's sbatch lines.

Slurm itself cannot run here, so `sbatch` is a stand-in on PATH that records its arguments; the
job scripts themselves are executed for real with the variables Slurm sets for array tasks.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.servers.tgi_server import TGITestServer

REPO = Path(__file__).resolve().parents[2]
SLURM = REPO / "scripts" / "slurm"

pytestmark = pytest.mark.slow


def test_submit_chains_the_merge_after_the_whole_array(tmp_path):
    fake = tmp_path / "bin" / "sbatch"
    fake.parent.mkdir()
    fake.write_text('#!/usr/bin/env bash\necho "$@" >> "$SBATCH_LOG"\necho "$((4000 + $(wc -l < "$SBATCH_LOG")));cluster-a"\n')
    fake.chmod(0o755)
    log = tmp_path / "sbatch.log"
    env = {**os.environ, "PATH": f"{fake.parent}:{os.environ['PATH']}", "SBATCH_LOG": str(log)}
    result = subprocess.run([str(SLURM / "submit.sh"), "recipes/perturbqa.yaml", "runs/perturbqa", "8", "--gres=gpu:1"], capture_output=True, text=True, env=env, cwd=REPO)
    assert result.returncode == 0, result.stderr
    array, merge = log.read_text().splitlines()
    assert array.startswith("--parsable --array=0-7 --export=ALL,RECIPE=recipes/perturbqa.yaml,RUN_DIR=runs/perturbqa,SHARDS=8 --gres=gpu:1 ")
    assert array.endswith("scripts/slurm/curate-array.sbatch")
    assert merge.startswith("--parsable --dependency=afterok:4001 --export=ALL,RECIPE=recipes/perturbqa.yaml,RUN_DIR=runs/perturbqa ")
    assert "merge: job 4002" in result.stdout
    usage = subprocess.run([str(SLURM / "submit.sh")], capture_output=True, text=True)
    assert usage.returncode == 2 and "usage:" in usage.stderr


def test_array_tasks_then_merge_job_equal_an_unsharded_run(tmp_path, tgi_recipe, assert_same_run):
    with TGITestServer() as tgi:
        recipe = tgi_recipe(tgi.url)
        curate = [sys.executable, "-m", "curation.cli"]
        straight = subprocess.run([*curate, "run", str(recipe), "-o", str(tmp_path / "straight"), "-q"], capture_output=True, text=True, timeout=300)
        assert straight.returncode == 0, straight.stderr
        wrapper = tmp_path / "curate"
        wrapper.write_text(f'#!/usr/bin/env bash\nexec {sys.executable} -m curation.cli "$@"\n')
        wrapper.chmod(0o755)
        run_dir = tmp_path / "slurm-run"
        env = {**os.environ, "RECIPE": str(recipe), "RUN_DIR": str(run_dir), "CURATE": str(wrapper)}
        # a merge job started before the shards (no afterok) refuses and writes nothing
        early = subprocess.run(["bash", str(SLURM / "curate-merge.sbatch")], capture_output=True, text=True, env=env, timeout=300)
        assert early.returncode == 1 and "was not run with --shard" in early.stderr
        for task in range(3):
            task_env = {**env, "SLURM_ARRAY_TASK_ID": str(task), "SLURM_ARRAY_TASK_COUNT": "3"}
            shard = subprocess.run(["bash", str(SLURM / "curate-array.sbatch")], capture_output=True, text=True, env=task_env, timeout=300)
            assert shard.returncode == 0, shard.stderr
            assert f"shard {task}/3" in shard.stdout
        merged = subprocess.run(["bash", str(SLURM / "curate-merge.sbatch")], capture_output=True, text=True, env=env, timeout=300)
        assert merged.returncode == 0, merged.stderr
    assert_same_run(run_dir, tmp_path / "straight")
