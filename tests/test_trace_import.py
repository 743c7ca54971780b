"""Traces made elsewhere (source.traces): read, refused row by row, journaled once, scored and published as a generated run."""

import json
import math
import sqlite3
import subprocess
import sys

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from curation import pipeline
from curation.recipe import load_recipe
from curation.types import RecipeError

LABELS = ["up", "down", "none"]


def trace_rows(n=12, k=4, seed=0, reference=True):
    """One row per trace, as an OpenAI-compatible generator's export would have them: question i favours class i % 3."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        for s in range(0 if reference else 1, k + 1):
            label = LABELS[(i + (s if i % 2 and s > 2 else 0)) % 3]
            length = 3 + (i % 4)
            logprobs = (-rng.uniform(0.01, 1.0, size=length)).tolist()
            rows.append(
                {
                    "qid": f"q{i:02d}",
                    "question": f"What does gene G{i} do?",
                    "gold": LABELS[i % 3],
                    "gene": f"G{i}",
                    "is_greedy": s == 0,
                    "sample": s,
                    "text": f"<think>because {i}</think><answer>{label}</answer>",
                    "logprobs": logprobs,
                    "top": [[lp, lp - 1.0, lp - 2.5] for lp in logprobs],
                    "model": "teacher-7b",
                }
            )
    return rows


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


RECIPE = """
name: imported
source:
  path: {path}
  label_column: gold
  traces:
    id: qid
    prompt: question
    completion: text
    sample_index: sample
    reference: is_greedy
    token_logprobs: logprobs
    top_logprobs: top
    model: model
answer:
  labels: [up, down, none]
score:
  metric: cocoa_ppl
select:
  strategy: per_class
  fraction: 0.5
"""


def recipe_file(tmp_path, data_path, text=RECIPE, **replace):
    body = text.format(path=data_path)
    for old, new in replace.items():
        body = body.replace(old, new)
    path = tmp_path / "recipe.yaml"
    path.write_text(body, encoding="utf-8")
    return path


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "curation.cli", *map(str, args)], capture_output=True, text=True, cwd=cwd)


def test_imported_jsonl_is_scored_selected_and_published(tmp_path):
    data = write_jsonl(tmp_path / "traces.jsonl", trace_rows())
    recipe = recipe_file(tmp_path, data)
    out = tmp_path / "run"
    result = run_cli("run", recipe, "-o", out, "-q")
    assert result.returncode == 0, result.stderr
    scored = datasets.load_dataset(str(out), split="scored")
    traces = datasets.load_dataset(str(out), "traces", split="train")
    assert len(scored) == 12 and len(traces) == 60
    assert scored["id"] == [f"q{i:02d}" for i in range(12)]
    assert scored["label"] == [LABELS[i % 3] for i in range(12)] and scored["gene"][3] == "G3"
    assert scored["prompt"][0] == [{"role": "user", "content": "What does gene G0 do?"}]
    assert all(n == 4 for n in scored["n_samples"])
    # the metrics are those of the file's logprobs: perplexity of q00's reference
    rows = trace_rows()
    ref0 = next(r for r in rows if r["qid"] == "q00" and r["is_greedy"])
    assert scored["perplexity"][0] == pytest.approx(-np.mean(ref0["logprobs"]), rel=1e-12)
    assert traces["model"][0] == "teacher-7b"
    stats = json.loads((out / "stats.json").read_text())
    assert stats["stages"]["read_traces"]["rows_in"] == 60 and stats["stages"]["read_traces"]["rows_out"] == 60
    imported = stats["generation"]["imported"]
    assert imported["traces"] == 60 and imported["refused_rows"] == 0 and imported["source"]["kind"] == "file"
    assert "temperature" not in stats["generation"]  # nothing here sampled them
    card = (out / "README.md").read_text()
    assert "traces.jsonl" in card and "imported" in card.lower()
    # the saved recipe validates again, so `curate score` works on an imported run
    rescored = run_cli("score", out, "--metric", "perplexity")
    assert rescored.returncode == 0, rescored.stderr
    assert datasets.load_dataset(str(out), split="scored", download_mode="force_redownload")["uncertainty"][0] == pytest.approx(-np.mean(ref0["logprobs"]))
