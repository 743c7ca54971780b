"""Fixtures of the pipeline tests: a recipe against a TGI test server, a run folder curated from a journal,
and the check that two run folders hold the same data.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from curation import pipeline, run_folder
from curation.journal import Journal, fingerprint_grid
from tests.builders.synthetic_run import RECIPE as SYNTHETIC_RECIPE
from tests.builders.synthetic_run import build

# The sharded, Ray and Slurm runs: a PerturbQA sample against the TGI protocol server (URL, LIMIT filled in).
TGI_RECIPE = """
name: shard-run
source:
  path: SAMPLE_CSV
  shuffle_seed: 0
  limit: LIMIT
  id_template: "{{ cell_line }}__{{ pert }}__{{ gene }}"
  label_column: label
prompt:
  system: Think, then answer inside <answer></answer> tags.
  user: "In {{ cell_line }} cells, {{ pert }} was knocked down. What happens to {{ gene }}?"
generator:
  backend: tgi
  url: URL
  chat_template: chatml
  samples: 3
  temperature: 0.9
  top_p: 0.95
  max_new_tokens: 48
  stop: ["</answer>"]
  top_logprobs: 5
  timeout: 5.0
  retry_backoff: 0.01
  max_retries: 8
answer:
  tag: answer
  labels: [upregulated, downregulated, not differentially expressed]
select:
  strategy: per_class
  fraction: 0.5
"""

RUN_FILES = (run_folder.SCORED_FILE, run_folder.TRACES_FILE, run_folder.FILTERED_FILE)


@pytest.fixture
def tgi_recipe(write_recipe):
    """Write the TGI run recipe for `url` (one endpoint or several) and return its path."""

    def write(url: str | list[str], limit: int = 12, name: str = "recipe.yaml", extra: str = "") -> Path:
        urls = json.dumps(url) if isinstance(url, list) else url
        return write_recipe(TGI_RECIPE.replace("URL", urls).replace("LIMIT", str(limit)) + extra, name=name)

    return write


@pytest.fixture
def assert_same_run():
    """Check that two run folders hold the same splits, recipe and stage counters, however each was made."""

    def check(a: Path, b: Path) -> None:
        for name in RUN_FILES:
            left, right = pq.read_table(a / name), pq.read_table(b / name)
            assert left.num_rows > 0 or name == run_folder.FILTERED_FILE
            assert left.equals(right), name
        assert (a / run_folder.RECIPE_FILE).read_text() == (b / run_folder.RECIPE_FILE).read_text()
        # every stage's section, whichever way the folder was made (merge, Ray, curate score)
        left, right = (json.loads((folder / run_folder.STATS_FILE).read_text())["stages"] for folder in (a, b))
        assert list(left) == list(right) and {"source", "generate"} <= set(left)
        assert {k: v for k, v in left["source"].items() if k != "seconds"} == {k: v for k, v in right["source"].items() if k != "seconds"}

    return check


@pytest.fixture
def journal_run(tmp_path):
    """Curate a run folder under tmp_path from constructed traces committed to its journal."""

    def run(name: str, n: int, chunk_questions: int, recipe=SYNTHETIC_RECIPE) -> Path:
        """Commit constructed traces to a journal (out of question order, some missing), then curate from it."""
        questions, requests, traces = build(recipe, n=n, drop={("q03", 2), ("q07", 0), (f"q{n - 1:02d}", 1)})
        run_dir = tmp_path / name
        run_dir.mkdir()
        journal_path = run_dir / "journal.sqlite"
        with Journal(journal_path) as journal:
            order = np.random.default_rng(1).permutation(len(traces))
            values = list(traces.values())
            journal.commit([values[i] for i in order])
        grid = fingerprint_grid(requests, [q.id for q in questions], recipe.generator.samples)
        inputs = pipeline.inputs_from_journal(recipe, questions, grid, run_dir, provenance={"model_id": "m"}, recipe_yaml="name: synthetic\n", generate=False, chunk_questions=chunk_questions)
        pipeline.finish(inputs, run_dir, generate=False)
        return run_dir

    return run
