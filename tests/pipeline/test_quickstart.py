"""End to end on the embedded model: the quickstart recipe, and a kill -9 in the middle of a run."""

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import datasets
import pyarrow.parquet as pq
import pytest

from curation import run_folder
from tests.conftest import REPO

pytestmark = pytest.mark.slow

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "CURATE_DEBUG": "1"}


def curate(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "curation.cli", *args], env=ENV, capture_output=True, text=True, **kwargs)


def test_quickstart_end_to_end(quickstart_run, tmp_path):
    import shutil

    made, stdout = quickstart_run  # the session's run (tests/conftest.py); copied, since this test runs it again
    assert "kept" in stdout and f"run folder: {made}" in stdout
    run_dir = tmp_path / "quickstart"
    shutil.copytree(made, run_dir)
    scored = datasets.load_dataset(str(run_dir), split="scored")
    filtered = datasets.load_dataset(str(run_dir), split="filtered")
    traces = datasets.load_dataset(str(run_dir), "traces", split="train")
    import yaml

    recipe = yaml.safe_load((REPO / "recipes" / "quickstart.yaml").read_text())
    k, n = recipe["generator"]["samples"], recipe["source"]["limit"]
    assert len(scored) == n and len(traces) == n * (k + 1)
    assert len(filtered) == sum(scored["kept"])
    assert {"id", "answer", "uncertainty", "cocoa_ppl", "perplexity", "msp", "self_consistency", "label", "kept"} <= set(scored.column_names)
    assert all(isinstance(x, float) for x in traces[0]["token_logprobs"])
    # rerunning the same folder generates nothing new
    again = curate("run", str(REPO / "recipes" / "quickstart.yaml"), "-o", str(run_dir), "--no-push", "-q")
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"{n * (k + 1)} from the journal, 0 generated" in again.stdout


SMALL = """\
extends: {quickstart}
name: resume-test
source:
  limit: 5
generator:
  samples: 2
  max_new_tokens: 24
"""


def _outputs(run_dir: Path):
    traces = pq.read_table(run_dir / run_folder.TRACES_FILE).sort_by([("id", "ascending"), ("sample_index", "ascending")])
    scored = pq.read_table(run_dir / run_folder.SCORED_FILE).sort_by("id")
    return traces.to_pylist(), scored.to_pylist()


def test_kill_9_then_resume_equals_uninterrupted_run(tmp_path):
    recipe = tmp_path / "small.yaml"
    recipe.write_text(SMALL.format(quickstart=REPO / "recipes" / "quickstart.yaml"))

    straight = tmp_path / "straight"
    assert curate("run", str(recipe), "-o", str(straight), "-q").returncode == 0

    resumed = tmp_path / "resumed"
    process = subprocess.Popen([sys.executable, "-m", "curation.cli", "run", str(recipe), "-o", str(resumed), "-q"], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    journal = resumed / run_folder.JOURNAL_FILE
    deadline = time.monotonic() + 300
    committed = 0
    while time.monotonic() < deadline and process.poll() is None:
        if journal.exists():
            try:
                committed = sqlite3.connect(journal).execute("SELECT COUNT(*) FROM traces WHERE status='ok'").fetchone()[0]
            except sqlite3.OperationalError:
                committed = 0
            if committed >= 6:  # two of five questions done
                break
        time.sleep(0.2)
    assert process.poll() is None, "the run finished before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    survived = sqlite3.connect(journal).execute("SELECT COUNT(*) FROM traces WHERE status='ok'").fetchone()[0]
    assert 6 <= survived < 15

    result = curate("run", str(recipe), "-o", str(resumed))
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"{survived} from the journal, {15 - survived} generated" in result.stdout
    assert _outputs(resumed) == _outputs(straight)
