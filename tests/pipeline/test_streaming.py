"""The streamed pipeline: chunks of whole questions from the journal give the same data whatever the chunk size,
shards are named as datasets expects, and memory does not grow with the run."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import datasets
import pytest

from curation import pipeline, tables
from curation.run_folder import PARTIAL_DIR
from tests.builders.synthetic_run import RECIPE, build, comparable_rows, read_split_table

ROOT = Path(__file__).resolve().parents[2]


def _results(run_dir: Path) -> dict:
    stats = json.loads((run_dir / "stats.json").read_text())
    for stage in stats.pop("stages").values():
        stage.pop("seconds")
    return stats


@pytest.mark.parametrize("recipe", [RECIPE, RECIPE.model_copy(update={"select": RECIPE.select.model_copy(update={"completion": "best_agreeing", "strategy": "global"})})])
def test_many_small_chunks_give_the_data_of_one_chunk(tmp_path, monkeypatch, recipe, journal_run):
    whole = journal_run("whole", 60, chunk_questions=1000, recipe=recipe)
    monkeypatch.setattr(tables, "MAX_SHARD_BYTES", 4000)  # many shards too
    chunked = journal_run("chunked", 60, chunk_questions=7, recipe=recipe)
    for folder, split in (("data", "scored"), ("data", "filtered"), ("traces", "train")):
        assert len(tables.split_files(whole, folder, split)) == 1
        shards = tables.split_files(chunked, folder, split)
        assert read_split_table(chunked, folder, split).schema == read_split_table(whole, folder, split).schema
        assert comparable_rows(read_split_table(chunked, folder, split)) == comparable_rows(read_split_table(whole, folder, split)), split
        if split != "filtered":
            assert len(shards) > 1, split
        assert [p.name for p in shards] == [tables.shard_name(split, i, len(shards)) for i in range(len(shards))]
    assert _results(chunked) == _results(whole)
    assert not (chunked / PARTIAL_DIR).exists() and not list(chunked.rglob("*.partial"))
    # datasets reads the shards through the card's globs
    scored = datasets.load_dataset(str(chunked), split="scored", cache_dir=str(tmp_path / "cache"))
    assert len(scored) == 60 and scored.column_names[-2:] == ["kept", "drop_reason"]
    stages = json.loads((chunked / "stats.json").read_text())["stages"]
    assert list(stages) == ["parse", "score", "select", "publish"]
    assert stages["select"]["rows_in"] == 60 and stages["select"]["rows_out"] == sum(scored["kept"])
    assert stages["parse"]["rows_in"] == 60 * 5 - 3


def test_a_rewrite_with_fewer_shards_removes_the_stale_ones(tmp_path, monkeypatch, journal_run):
    monkeypatch.setattr(tables, "MAX_SHARD_BYTES", 4000)
    run_dir = journal_run("run", 30, chunk_questions=5)
    assert len(tables.split_files(run_dir, "data", "scored")) > 1
    monkeypatch.setattr(tables, "MAX_SHARD_BYTES", 1 << 30)
    questions, requests, traces = build(n=30)
    pipeline.curate(RECIPE, questions, requests, traces, {}, {}, run_dir, recipe_yaml="")
    assert [p.name for p in tables.split_files(run_dir, "data", "scored")] == ["scored-00000-of-00001.parquet"]
    assert len(datasets.load_dataset(str(run_dir), split="scored", cache_dir=str(tmp_path / "cache"))) == 30


MEMORY_PROBE = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    import numpy as np
    from curation import pipeline
    from curation.generate import plan_requests
    from curation.journal import Journal, fingerprint_grid
    from curation.recipe.sections import Recipe
    from curation.types import Question, Trace

    def rss(field):
        for line in open("/proc/self/status"):
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    class Identity:
        def model_identity(self): return "m"
        def fingerprint_params(self, config): return {}

    n, tokens, run_dir, phase = int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
    recipe = Recipe.model_validate({"name": "mem", "source": {"path": "x.csv"}, "prompt": {"user": "{{ g }}"},
        "generator": {"samples": 8}, "answer": {"labels": ["up", "down", "none"]}, "score": {"metric": "cocoa_ppl"},
        "select": {"strategy": "per_class", "fraction": 0.1}})
    questions = [Question(id=f"q{i:06d}", messages=[{"role": "user", "content": f"gene {i}?"}], columns={"g": f"G{i}"}) for i in range(n)]
    requests = plan_requests(questions, recipe.generator, Identity())
    if phase == "write":
        rng = np.random.default_rng(0)
        with Journal(run_dir / "journal.sqlite") as journal:
            for start in range(0, len(requests), 900):
                batch = []
                for r in requests[start:start + 900]:
                    lp = -rng.exponential(0.5, tokens)
                    top = np.stack([lp, lp - 1, lp - 2, lp - 3, lp - 4], axis=1).tolist()
                    label = ["up", "down", "none"][(int(r.prompt_id[1:]) + r.sample_index // 3) % 3]
                    batch.append(Trace(r.fingerprint, r.prompt_id, r.sample_index, "x " * 50 + f"<answer>{label}</answer>", lp.tolist(), top, "stop", "raw", r.seed))
                journal.commit(batch)
        sys.exit(0)
    grid = fingerprint_grid(requests, [q.id for q in questions], 8)
    del requests
    baseline = rss("VmRSS:")
    inputs = pipeline.inputs_from_journal(recipe, questions, grid, run_dir, provenance={}, recipe_yaml="name: mem\\n", generate=False, chunk_questions=32)
    pipeline.finish(inputs, run_dir, generate=False)
    print(json.dumps({"baseline": baseline, "peak": rss("VmHWM:")}))
    """
)


@pytest.mark.slow
def test_memory_does_not_grow_with_the_run(tmp_path):
    """Peak RSS above the baseline (imports, questions, the fingerprint grid) at 150 and 600 questions x 9 traces x 200 tokens."""
    probe = tmp_path / "probe.py"
    probe.write_text(MEMORY_PROBE)
    growth = {}
    for n in (150, 600):
        run_dir = tmp_path / f"run{n}"
        run_dir.mkdir()
        env = {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
        subprocess.run([sys.executable, str(probe), str(n), "200", str(run_dir), "write"], check=True, env=env, cwd=ROOT)
        out = subprocess.run([sys.executable, str(probe), str(n), "200", str(run_dir), "score"], check=True, env=env, cwd=ROOT, capture_output=True, text=True)
        measured = json.loads(out.stdout.strip().splitlines()[-1])
        growth[n] = measured["peak"] - measured["baseline"]
    # 600 x 9 x 200 tokens are ~1.1M tokens: the unstreamed code held ~545 bytes each (~590 MB).
    # Streamed, the peak is one chunk of 32 questions plus per-question scalars, at both sizes.
    assert growth[600] < 1.5 * growth[150] + 40e6, growth
    assert growth[600] < 200e6, growth
