"""The `openai` backend against a real llama.cpp llama-server serving the embedded GGUF.

The server is built by scripts/build_llama_server.sh (cached outside the checkout); these tests
start it on 127.0.0.1 on a free port with 8 parallel slots and stop it afterwards. They are
skipped, saying why, only when the binary has not been built.
"""

from __future__ import annotations

import datasets
import pyarrow.parquet as pq
import pytest

from curation import pipeline, run_folder
from curation.journal import Journal
from curation.recipe.load import load_recipe
from tests.builders.llama_server import LlamaServer, llama_server_binary

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory):
    binary = llama_server_binary()
    if not binary.exists():
        pytest.skip(f"llama-server is not built ({binary} missing): run scripts/build_llama_server.sh")
    with LlamaServer(binary, tmp_path_factory.mktemp("llama") / "server.log") as server:
        yield server


RECIPE = """
name: llama-run
source:
  path: SAMPLE_CSV
  shuffle_seed: 3
  limit: 4
  id_template: "{{ cell_line }}__{{ pert }}__{{ gene }}"
  label_column: label
prompt:
  system: Answer with one of upregulated, downregulated, not differentially expressed inside <answer></answer> tags.
  user: "In {{ cell_line }} cells, {{ pert }} was knocked down. What happens to {{ gene }}?"
generator:
  backend: openai
  url: URL
  samples: 3
  temperature: 1.0
  max_new_tokens: 24
  stop: ["</answer>"]
  top_logprobs: 5
  timeout: 300
answer:
  tag: answer
  labels: [upregulated, downregulated, not differentially expressed]
select:
  strategy: per_class
  fraction: 1.0
  drop_truncated: false
"""


def test_run_end_to_end_then_resume_to_the_same_dataset(llama_server, tmp_path, write_recipe):
    recipe = load_recipe(str(write_recipe(RECIPE.replace("URL", llama_server.url))))
    run_dir = tmp_path / "run"
    result = pipeline.run(recipe, run_dir, show_progress=False)
    generation = result.generation
    assert generation.failed == 0 and generation.generated == 16
    assert generation.attempts == 8  # per question: the reference and one n=3 request

    provenance = result.summary.provenance
    assert provenance["server"] == "llama.cpp" and provenance["use_n"] is True and provenance["logprob_kind"] == "raw"
    assert provenance["model_id"].startswith("SmolLM2-135M-Instruct.Q4_1.gguf")

    # a cache of our own: datasets caches folders with a `configs:` card by name and relative paths
    scored = datasets.load_dataset(str(run_dir), split="scored", cache_dir=str(tmp_path / "hf-cache"))
    traces = datasets.load_dataset(str(run_dir), "traces", split="train", cache_dir=str(tmp_path / "hf-cache"))
    assert scored.num_rows == 4 and traces.num_rows == 16
    if any(scored["kept"]):  # a 135M model may answer nothing readable; an empty split does not load (datasets 5.2)
        filtered = datasets.load_dataset(str(run_dir), split="filtered", cache_dir=str(tmp_path / "hf-cache"))
        assert filtered.num_rows == sum(scored["kept"])
    assert set(traces["logprob_kind"]) == {"raw"}
    assert all(n == len(lps) and 0 < n <= 24 for n, lps in zip(traces["n_tokens"], traces["token_logprobs"]))
    assert all(all(lp <= 0 for lp in lps) for lps in traces["token_logprobs"])
    assert all(len(rows) == n and all(len(r) == 5 for r in rows) for rows, n in zip(traces["top_logprobs"], traces["n_tokens"]))
    assert {r for r in traces["finish_reason"]} <= {"stop", "length"}
    samples = [t for t, ref in zip(traces["text"], traces["is_reference"]) if not ref]
    assert len(set(samples)) > 1

    # Lose one question's samples and another's reference, then resume: the same dataset comes back.
    before = pq.read_table(run_dir / run_folder.TRACES_FILE)
    with Journal(run_dir / run_folder.JOURNAL_FILE) as journal:
        ids = sorted(set(scored["id"]))
        journal.db.execute("DELETE FROM traces WHERE (prompt_id = ? AND sample_index > 0) OR (prompt_id = ? AND sample_index = 0)", (ids[0], ids[1]))
    again = pipeline.run(recipe, run_dir, show_progress=False)
    assert again.generation.generated == 4 and again.generation.cached == 12
    after = pq.read_table(run_dir / run_folder.TRACES_FILE)
    assert after.equals(before)
