"""A run folder to train on, synthesised with pipeline.curate() from constructed traces (no generation), so that no test needs runs/quickstart or minutes of sampling."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from tests.conftest import SAMPLE_CSV

RECIPE = """\
name: train-test
license: cc-by-4.0
source:
  path: SAMPLE_CSV
  shuffle_seed: 0
  limit: LIMIT
  filter: {split: train}
  id_template: "{{ cell_line }}__{{ pert }}__{{ gene }}"
  label_column: label
prompt:
  system: Answer inside <answer></answer> tags with upregulated, downregulated, or not differentially expressed.
  user: In {{ cell_line }} cells, {{ pert }} was knocked down. What happens to {{ gene }}?
generator:
  samples: 2
  max_new_tokens: 64
  stop: ["</answer>"]
answer:
  tag: answer
  labels:
    upregulated: [up]
    downregulated: [down]
    not differentially expressed: [unchanged]
select:
  strategy: per_class
  fraction: 0.5
TRAIN"""

TRAIN = """\
train:
  base_model: embedded
  qlora: QLORA
  lora_r: 4
  lora_alpha: 8
  lora_dropout: 0.0
  max_steps: 2
  per_device_train_batch_size: 2
  max_length: 160
  learning_rate: 5.0e-3
"""


class IdentityBackend:
    """Names the teacher for plan_requests; nothing is generated."""

    def model_identity(self) -> str:
        return "test-teacher"

    def fingerprint_params(self, config) -> dict:
        return {}


def write_train_recipe(folder: Path, *, limit: int = 8, qlora: bool = False, train: str | None = TRAIN) -> Path:
    text = RECIPE.replace("SAMPLE_CSV", str(SAMPLE_CSV)).replace("LIMIT", str(limit))
    text = text.replace("TRAIN", (train or "").replace("QLORA", "true" if qlora else "false"))
    path = folder / "recipe.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def build_run_folder(folder: Path, *, limit: int = 8, qlora: bool = False, kept_everything: bool = False) -> Path:
    """A run folder made by the real pipeline from constructed traces: the teacher 'explains' the true label."""
    import numpy as np

    from curation import pipeline
    from curation.generate import plan_requests
    from curation.recipe.load import load_recipe
    from curation.source import load_questions
    from curation.types import Trace

    folder.mkdir(parents=True, exist_ok=True)
    loaded = load_recipe(str(write_train_recipe(folder, limit=limit, qlora=qlora)))
    recipe = loaded.recipe
    if kept_everything:
        recipe = recipe.model_copy(update={"select": recipe.select.model_copy(update={"fraction": 1.0})})
    questions = load_questions(loaded).questions
    requests = plan_requests(questions, recipe.generator, IdentityBackend())
    by_id = {q.id: q for q in questions}
    rng = np.random.default_rng(0)
    traces = {}
    for request in requests:
        q = by_id[request.prompt_id]
        text = f"Knocking down {q.columns['pert']} leaves {q.columns['gene']} as it is in {q.columns['cell_line']}. <answer>{q.label}</answer>"
        n = 24
        traces[request.fingerprint] = Trace(
            fingerprint=request.fingerprint,
            prompt_id=request.prompt_id,
            sample_index=request.sample_index,
            text=text,
            token_logprobs=(-rng.random(n)).tolist(),
            top_logprobs=[sorted((-rng.random(3)).tolist(), reverse=True) for _ in range(n)],
            finish_reason="stop",
            logprob_kind="raw",
        )
    run_dir = folder / "run"
    pipeline.curate(
        recipe, questions, requests, traces, {}, {"backend": "test", "model_id": "test-teacher"}, run_dir,
        recipe_yaml=pipeline._recipe_yaml_for(dataclasses.replace(loaded, recipe=recipe), run_dir),
    )
    return run_dir


def train_target(run_dir: Path, **train_overrides):
    """resolve_target on a run folder, with train-section fields replaced."""
    from curation.train.target import resolve_target

    target = resolve_target(str(run_dir))
    if train_overrides:
        target.config = target.config.model_copy(update=train_overrides)
    return target
