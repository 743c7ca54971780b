"""Constructed traces for a synthetic recipe, no model: the input of the parse -> score -> select -> write tests.

`build()` plans the recipe's requests with `planning_identity` (the planning half of a backend) and
fabricates one deterministic trace per request, so a test can run the pipeline on them and compare
run folders; `read_split_table` and `comparable_rows` read a folder back for such comparisons.
"""

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curation import tables
from curation.generate import RecordedIdentity, plan_requests
from curation.recipe.sections import Recipe
from curation.types import Question, Trace

LABELS = ["upregulated", "downregulated", "not differentially expressed"]

RECIPE = Recipe.model_validate(
    {
        "name": "synthetic",
        "license": "cc-by-4.0",
        "source": {"path": "x.csv", "label_column": "label"},
        "prompt": {"user": "{{ gene }}?"},
        "generator": {"samples": 4},
        "answer": {"labels": LABELS},
        "score": {"metric": "cocoa_ppl"},
        "select": {"strategy": "per_class", "fraction": 0.5},
    }
)


def planning_identity(model="m", params=None) -> RecordedIdentity:
    """The planning half of a backend (identity and fingerprint settings, no generation), as curate score reads it from a journal."""
    return RecordedIdentity({"identity": model, "fingerprint_params": params or {}})


def build(recipe=RECIPE, n=12, drop=()):
    rng = np.random.default_rng(0)
    questions = [
        Question(id=f"q{i:02d}", messages=[{"role": "user", "content": f"gene{i}?"}], columns={"gene": f"G{i}", "pert": "P"}, label=LABELS[i % 3])
        for i in range(n)
    ]
    requests = plan_requests(questions, recipe.generator, planning_identity())
    traces = {}
    for r in requests:
        if (r.prompt_id, r.sample_index) in drop:
            continue
        i = int(r.prompt_id[1:])
        # question i favours class i%3; later samples of odd questions disagree
        label = LABELS[(i + (r.sample_index if i % 2 and r.sample_index > 2 else 0)) % 3]
        length = 3 + (i % 4)
        logprobs = list(-rng.uniform(0.01, 1.0, size=length))
        text = f"<think>because</think><answer>{label}</answer>" if i != 5 else "no idea"
        traces[r.fingerprint] = Trace(r.fingerprint, r.prompt_id, r.sample_index, text, logprobs, [[lp, lp - 1, lp - 2] for lp in logprobs], "stop", "raw", r.seed)
    return questions, requests, traces


def read_split_table(run_dir: Path, folder: str, split: str) -> pa.Table:
    return pa.concat_tables([pq.read_table(path) for path in tables.split_files(run_dir, folder, split)])


def comparable_rows(table: pa.Table) -> list[dict]:
    """Rows with NaN made comparable (arrow's equals() says NaN != NaN)."""

    def plain(value):
        if isinstance(value, float) and value != value:
            return "NaN"
        if isinstance(value, list):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return [plain(row) for row in table.to_pylist()]
