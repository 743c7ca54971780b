"""Run folders for the Hub tests, made in seconds: the real pipeline (source -> parse -> score ->
select -> publish) on constructed traces, no model.

`make_run(root)` writes a CSV of questions and a recipe next to it, loads the recipe as
`curate run` would, fabricates K sampled traces plus a greedy reference per question
(deterministic: the answers and logprobs are a function of the question), and writes the run
folder with `pipeline.curate`. The folder is what `curate run` would leave, journal excepted
(a stand-in journal file is written so tests can check it is never pushed).
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

from curation import pipeline, run_folder
from curation.generate import plan_requests
from curation.recipe.load import load_recipe
from curation.source import load_questions
from curation.types import Trace

LABELS = ["upregulated", "downregulated", "not differentially expressed"]
PERTS = ["DYNLL2", "UQCRB", "NPAT", "PRPF19", "POLR2H", "SUPT5H", "RPL3", "MED12"]
GENES = ["GSTP1", "VEZF1", "SET", "RCSD1", "HBG1", "MYC", "GATA1", "TAL1"]

RECIPE = """\
name: {name}
description: |
  Synthetic PerturbQA-style questions with fabricated traces.
  Made by the Hub tests.
license: {license}
tags: [perturbqa, test]
source:
  path: questions.csv
  id_template: "{{{{ cell_line }}}}__{{{{ pert }}}}__{{{{ gene }}}}"
  label_column: label
prompt:
  system: Answer inside <answer></answer> tags.
  user: In {{{{ cell_line }}}} cells, {{{{ pert }}}} was knocked down. What happens to {{{{ gene }}}}?
generator:
  samples: 4
  max_new_tokens: 64
  seed: 0
answer:
  tag: answer
  labels: [upregulated, downregulated, not differentially expressed]
score:
  metric: cocoa_ppl
  similarity: answer
select:
  strategy: per_class
  fraction: {fraction}
{extra}"""


def write_questions(path: Path, n: int = 12) -> None:
    rows = ["pert,gene,cell_line,label"]
    for i in range(n):
        rows.append(f"{PERTS[i % len(PERTS)]},{GENES[(i * 3) % len(GENES)]}{i},K562,{LABELS[i % 3]}")
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")


def _unit(*parts: object) -> float:
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def make_run(
    root: Path,
    *,
    name: str = "synthetic",
    n: int = 12,
    license: str = "cc-by-4.0",
    fraction: float = 0.5,
    extra: str = "",
    run_dir: Path | None = None,
) -> Path:
    """Write questions.csv and recipe.yaml under `root` and a run folder (default root/run); return the run folder."""
    root.mkdir(parents=True, exist_ok=True)
    write_questions(root / "questions.csv", n)
    recipe_path = root / "recipe.yaml"
    recipe_path.write_text(RECIPE.format(name=name, license=license, fraction=fraction, extra=extra), encoding="utf-8")
    loaded = load_recipe(str(recipe_path))
    questions = load_questions(loaded).questions
    run_dir = run_dir or root / "run"
    requests = plan_requests(questions, loaded.recipe.generator, _PlanningOnly())
    traces = {}
    for r in requests:
        i = next(k for k, q in enumerate(questions) if q.id == r.prompt_id)
        favoured = LABELS[i % 3]
        disagree = i % 2 == 1 and r.sample_index > 2
        label = LABELS[(i + 1) % 3] if disagree else favoured
        length = 4 + i % 5
        logprobs = [-0.05 - 0.9 * _unit(r.prompt_id, r.sample_index, t) for t in range(length)]
        text = f"<think>{r.prompt_id} step {r.sample_index}</think><answer>{label}</answer>"
        traces[r.fingerprint] = Trace(
            r.fingerprint, r.prompt_id, r.sample_index, text, logprobs, [[lp, lp - 1.0, lp - 2.0] for lp in logprobs], "stop", "raw", r.seed
        )
    provenance = {"backend": "test", "model_id": "test-org/fake-model", "model_sha": "0123abcd", "logprob_kind": "raw", "url": "http://10.0.0.7:8080"}
    pipeline.curate(
        loaded.recipe, questions, requests, traces, {}, provenance, run_dir, recipe_yaml=pipeline._recipe_yaml_for(loaded, run_dir)
    )
    (run_dir / run_folder.JOURNAL_FILE).write_bytes(b"SQLite format 3\x00 stand-in journal: must never be pushed")
    return run_dir


class _PlanningOnly:
    """The planning half of a backend: identity and fingerprint settings, no generation."""

    def model_identity(self) -> str:
        return "test-org/fake-model"

    def fingerprint_params(self, config) -> dict:
        return {}


def curate_cli(*args: str, env: dict, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """The `curate` CLI in a subprocess (Hub clients must import with the test Hub's environment)."""
    return subprocess.run([sys.executable, "-m", "curation.cli", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
