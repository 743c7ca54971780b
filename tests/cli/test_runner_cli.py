"""`curate run` as a user runs it, against the TGI protocol server: Ctrl-C, resume, failures."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq

from curation import run_folder
from tests.builders.tgi_run import RECIPE, ChatTemplateTGIServer

CURATE = [sys.executable, "-m", "curation.cli"]


def journal_count(run_dir: Path) -> int:
    path = run_dir / run_folder.JOURNAL_FILE
    if not path.exists():
        return 0
    try:
        with sqlite3.connect(path, timeout=5) as db:
            return db.execute("SELECT COUNT(*) FROM traces WHERE status='ok'").fetchone()[0]
    except sqlite3.OperationalError:  # the table is not there yet
        return 0


def test_ctrl_c_keeps_finished_traces_and_a_rerun_completes_the_same_dataset(tmp_path, write_recipe):
    with ChatTemplateTGIServer(latency=0.25) as tgi:
        recipe = write_recipe(RECIPE.replace("URL", tgi.url).replace("max_retries: 8", "max_retries: 8\n  concurrency: 2"))
        run_dir = tmp_path / "interrupted"
        process = subprocess.Popen([*CURATE, "run", str(recipe), "-o", str(run_dir)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while journal_count(run_dir) < 6 and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
        assert process.returncode == 130, stderr
        assert "stopping: letting" in stderr and "run the same command to resume" in stderr
        kept = journal_count(run_dir)
        assert 6 <= kept < 60
        # every request that was sent finished and was kept: nothing paid for was lost
        assert tgi.requests_by_route["/generate"] == kept
        assert not (run_dir / run_folder.SCORED_FILE).exists()

        resumed = subprocess.run([*CURATE, "run", str(recipe), "-o", str(run_dir), "-q"], capture_output=True, text=True, timeout=300)
        assert resumed.returncode == 0, resumed.stderr
        assert f"{kept} from the journal, {60 - kept} generated" in resumed.stdout
        assert tgi.requests_by_route["/generate"] == 60  # nothing was bought twice

        straight = subprocess.run([*CURATE, "run", str(recipe), "-o", str(tmp_path / "straight"), "-q"], capture_output=True, text=True, timeout=300)
        assert straight.returncode == 0, straight.stderr
    for name in (run_folder.SCORED_FILE, run_folder.TRACES_FILE):
        assert pq.read_table(run_dir / name).equals(pq.read_table(tmp_path / "straight" / name))


def test_failures_are_summarised_and_exit_status_says_so(tmp_path, write_recipe):
    with ChatTemplateTGIServer(max_input_tokens=59, max_total_tokens=60) as tgi:
        recipe = write_recipe(RECIPE.replace("URL", tgi.url).replace("max_new_tokens: 64", "max_new_tokens: 40"))
        result = subprocess.run([*CURATE, "run", str(recipe), "-o", str(tmp_path / "run"), "-q"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 3, result.stderr
    assert "failed: 60 traces: HTTP 422 validation: `inputs` tokens + `max_new_tokens` must be <= 60" in result.stdout
    assert "traces failed; run the same command again to retry them" in result.stderr
