"""Sharded runs: `curate run --shard I/N` per shard, `curate merge` once; the result equals an unsharded run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from curation import pipeline, run_folder
from curation.ray_executor import endpoint_shares
from curation.recipe.load import load_recipe
from curation.shards import Shard, ShardError, manifest_path, merge_shards, run_shard, shard_of, shard_trace_count
from curation.source import load_questions
from tests.servers.tgi_server import TGITestServer

CURATE = [sys.executable, "-m", "curation.cli"]


# ---------------------------------------------------------------- assignment
def test_shard_of_is_stable_across_processes_and_covers_every_shard():
    ids = [f"K562__GENE{i}__TARGET{i % 7}" for i in range(2000)]
    here = [shard_of(i, 4) for i in ids]
    code = "import sys; from curation.shards import shard_of; print(','.join(str(shard_of(l.strip(), 4)) for l in sys.stdin))"
    for seed in ("1", "2"):  # hash() would differ between these two processes
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run([sys.executable, "-c", code], input="\n".join(ids), capture_output=True, text=True, env=env, check=True)
        assert [int(x) for x in out.stdout.strip().split(",")] == here
    counts = [here.count(s) for s in range(4)]
    assert min(counts) > 400 and max(counts) < 600  # roughly even
    assert shard_of("K562__A__B", 1) == 0
    # pinned: a different hash would move questions between the shards of runs already under way
    assert [shard_of(f"q{i}", 8) for i in range(12)] == [5, 0, 2, 1, 4, 0, 3, 2, 7, 3, 6, 0]


def test_shard_parse_rejects_bad_specs():
    assert Shard.parse("0/4") == Shard(0, 4) and Shard.parse(" 3 / 4 ").name == "3-of-4"
    for bad in ("4/4", "1", "a/b", "-1/4", "0/0", ""):
        with pytest.raises(ShardError):
            Shard.parse(bad)


def test_endpoint_shares_split_endpoints_or_their_concurrency():
    assert endpoint_shares(0, 3, 8) == [(None, None)] * 3
    assert endpoint_shares(4, 2, 8) == [([0, 2], None), ([1, 3], None)]
    # 5 shards on 2 endpoints: endpoint 0 carries shards 0, 2, 4 and endpoint 1 carries 1, 3
    assert endpoint_shares(2, 5, 8) == [([0], 2), ([1], 4), ([0], 2), ([1], 4), ([0], 2)]


# ---------------------------------------------------------------- merge == unsharded
def test_sharded_then_merged_equals_unsharded_and_errors_are_clear(tmp_path, tgi_recipe, assert_same_run):
    with TGITestServer() as tgi:
        recipe = tgi_recipe(tgi.url)
        loaded = load_recipe(str(recipe))
        pipeline.run(loaded, tmp_path / "straight", show_progress=False)

        run_dir = tmp_path / "sharded"
        for index in range(3):
            stats = run_shard(loaded, run_dir, Shard(index, 3), show_progress=False)
            assert stats.failed == 0
        sizes = [len(Shard(i, 3).select(load_questions(loaded).questions)) for i in range(3)]
        assert sum(sizes) == 12 and all(sizes)
        assert [shard_trace_count(run_dir, Shard(i, 3)) for i in range(3)] == [s * 4 for s in sizes]

        # a different N on the same folder is refused before anything is generated
        before = tgi.requests_total
        with pytest.raises(ShardError, match="sharded into 3"):
            run_shard(loaded, run_dir, Shard(0, 4), show_progress=False)
        assert tgi.requests_total == before
        # so is a changed source
        changed = load_recipe(str(tgi_recipe(tgi.url, limit=10, name="ten.yaml")))
        with pytest.raises(ShardError, match="other questions"):
            run_shard(changed, run_dir, Shard(0, 3), show_progress=False)

        # a missing shard: a clear error and nothing written
        hidden = Shard(1, 3).folder(run_dir).rename(run_dir / "hidden")
        with pytest.raises(ShardError, match=r"shards not run yet: 1/3"):
            merge_shards(loaded, run_dir, show_progress=False)
        assert not (run_dir / "data").exists() and not (run_dir / run_folder.JOURNAL_FILE).exists()
        hidden.rename(Shard(1, 3).folder(run_dir))

        summary, report = merge_shards(loaded, run_dir, show_progress=False)
        assert report.traces == 48 and summary.questions == 12
    assert_same_run(run_dir, tmp_path / "straight")
    # every stage's section, as the unsharded run's stats.json has them (the shards' generate stages added up)
    import json

    merged, straight = (json.loads((folder / "stats.json").read_text())["stages"] for folder in (run_dir, tmp_path / "straight"))
    assert list(merged) == list(straight) and "source" in merged and "generate" in merged
    for stage in ("source", "generate"):
        assert {k: v for k, v in merged[stage].items() if k != "seconds"} == {k: v for k, v in straight[stage].items() if k != "seconds"}
    # the merged folder is an ordinary run folder: rescoring reads the merged journal
    pipeline.rescore(run_dir, show_progress=False)
    assert_same_run(run_dir, tmp_path / "straight")
    # curate score reruns the stages after generation and keeps the sections of those before it
    rescored = json.loads((run_dir / "stats.json").read_text())["stages"]
    assert list(rescored) == list(straight) == ["source", "generate", "parse", "score", "select", "publish"]
    for stage in ("source", "generate"):
        assert rescored[stage] == merged[stage]


def test_a_shard_with_missing_traces_blocks_the_merge(tmp_path, tgi_recipe):
    with TGITestServer() as tgi:
        loaded = load_recipe(str(tgi_recipe(tgi.url)))
        run_dir = tmp_path / "run"
        run_shard(loaded, run_dir, Shard(0, 2), show_progress=False)
        run_shard(loaded, run_dir, Shard(1, 2), show_progress=False)
    import sqlite3

    with sqlite3.connect(Shard(1, 2).journal_path(run_dir)) as db:
        db.execute("DELETE FROM traces WHERE rowid IN (SELECT rowid FROM traces LIMIT 3)")
    with pytest.raises(ShardError, match=r"incomplete shards, nothing merged: 1/2 \(3 of \d+ traces missing\)"):
        merge_shards(loaded, run_dir, show_progress=False)
    assert not (run_dir / "data").exists()
    # N changed between runs: shards of two splits in one folder
    Shard(0, 2).folder(run_dir).rename(run_dir / "shards" / "0-of-3")
    with pytest.raises(ShardError, match="another split"):
        merge_shards(loaded, run_dir, show_progress=False)


def test_merge_without_shards_says_so(tmp_path, tgi_recipe):
    recipe = tgi_recipe("http://127.0.0.1:9")
    result = subprocess.run([*CURATE, "merge", str(recipe), "-o", str(tmp_path / "nothing")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "was not run with --shard" in result.stderr and "Traceback" not in result.stderr


# ---------------------------------------------------------------- a shard killed mid-way
@pytest.mark.slow
def test_a_shard_killed_mid_way_and_rerun_gives_the_same_dataset(tmp_path, tgi_recipe, assert_same_run):
    with TGITestServer(latency=0.05) as tgi:
        recipe = tgi_recipe(tgi.url, limit=16, extra="")
        recipe.write_text(recipe.read_text().replace("max_retries: 8", "max_retries: 8\n  concurrency: 1"))
        straight = subprocess.run([*CURATE, "run", str(recipe), "-o", str(tmp_path / "straight"), "-q"], capture_output=True, text=True, timeout=300)
        assert straight.returncode == 0, straight.stderr

        run_dir = tmp_path / "sharded"
        shard0 = Shard(0, 2)
        process = subprocess.Popen([*CURATE, "run", str(recipe), "-o", str(run_dir), "--shard", "0/2", "-q"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while shard_trace_count(run_dir, shard0) < 5 and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.02)
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
        killed_at = shard_trace_count(run_dir, shard0)
        planned = 5 * len(shard0.select(load_questions(load_recipe(str(recipe))).questions))
        assert 0 < killed_at < planned

        other = subprocess.run([*CURATE, "run", str(recipe), "-o", str(run_dir), "--shard", "1/2", "-q"], capture_output=True, text=True, timeout=300)
        assert other.returncode == 0, other.stderr
        early = subprocess.run([*CURATE, "merge", str(recipe), "-o", str(run_dir), "-q"], capture_output=True, text=True, timeout=300)
        assert early.returncode == 1 and "incomplete shards, nothing merged: 0/2" in early.stderr
        assert not (run_dir / "data").exists()

        rerun = subprocess.run([*CURATE, "run", str(recipe), "-o", str(run_dir), "--shard", "0/2", "-q"], capture_output=True, text=True, timeout=300)
        assert rerun.returncode == 0, rerun.stderr
        assert f"{killed_at} from the journal" in rerun.stdout
        merged = subprocess.run([*CURATE, "merge", str(recipe), "-o", str(run_dir), "-q"], capture_output=True, text=True, timeout=300)
        assert merged.returncode == 0, merged.stderr
    assert_same_run(run_dir, tmp_path / "straight")
    assert json.loads(manifest_path(run_dir).read_text())["shards"] == 2


def test_shard_options_that_do_not_go_together_are_refused(tmp_path, tgi_recipe):
    recipe = tgi_recipe("http://127.0.0.1:9")
    for extra, message in ((["--shard", "0/2", "--ray"], "use one or the other"), (["--shards", "4"], "go with --ray"), (["--shard", "2/2"], "between 0 and N-1")):
        result = subprocess.run([*CURATE, "run", str(recipe), "-o", str(tmp_path / "r"), *extra], capture_output=True, text=True, timeout=120)
        assert result.returncode != 0 and message in result.stderr, (extra, result.stderr)
        assert not (tmp_path / "r" / "shards").exists()
