"""End to end: a recipe with `calibrate:` and `select.strategy: conformal` on the embedded model.

It runs, resumes without generating, is rescored by `curate score` without a generator, and its
card states the guarantee as an expectation. A calibration file whose questions are already in the
pool is refused before anything is generated.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest

from curation.run_folder import RunFolder
from tests.conftest import REPO

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "CURATE_DEBUG": "1"}
M49 = REPO / "recipes" / "data" / "m49-continents.csv"

RECIPE = """\
name: conformal-e2e
source:
  path: {data}
  filter: {{split: pool}}
  shuffle_seed: 0
  limit: {limit}
  id_column: question_id
  label_column: region
{calibrate}
prompt:
  system: You are a geography expert. Complete the user's sentence.
  user: "{{{{ country }}}} is located in the continent of"
generator:
  backend: local
  model: embedded
  samples: 2
  temperature: 1.0
  max_new_tokens: 8
  stop: ["\\n", "."]
  top_logprobs: 5
  seed: 0
answer:
  labels:
    Africa: [african]
    Americas: [america, north america, south america, central america, latin america]
    Asia: [asian, middle east]
    Europe: [european]
    Oceania: [australia, pacific]
score:
  metric: cocoa_ppl
  similarity: answer
select:
  strategy: conformal
  fdr: 0.3
  scope: per_class
"""


def curate(*args, env=ENV):
    return subprocess.run([sys.executable, "-m", "curation.cli", *args], env=env, capture_output=True, text=True)


def write_recipe(tmp_path, calibrate: str, limit: int, data=M49) -> str:
    path = tmp_path / "recipe.yaml"
    path.write_text(RECIPE.format(data=data, limit=limit, calibrate=calibrate))
    return str(path)


def test_calibration_file_overlapping_the_pool_is_refused(tmp_path):
    # the pool's own rows as the calibration file: refused before the model is loaded
    recipe = write_recipe(tmp_path, f"calibrate:\n  source:\n    path: {M49}\n    filter: {{split: pool}}\n    id_column: question_id\n    label_column: region\n", 6)
    result = curate("run", recipe, "-o", str(tmp_path / "run"), "--no-push", env={k: v for k, v in ENV.items() if k != "CURATE_DEBUG"})
    assert result.returncode != 0
    assert "calibrate.source" in result.stderr and "already in the pool" in result.stderr
    assert "Traceback" not in result.stderr
    assert not RunFolder(tmp_path / "run").journal.exists()


def test_validate_refuses_conformal_without_calibration(tmp_path):
    result = curate("validate", write_recipe(tmp_path, "", 6))
    assert result.returncode != 0 and "needs a `calibrate:` section" in result.stdout + result.stderr


@pytest.mark.slow
def test_conformal_run_resumes_rescores_and_states_its_guarantee(tmp_path):
    # a separate calibration file: the `test` countries, held out of the pool by construction
    table = pcsv.read_csv(M49)
    calibration_file = tmp_path / "calibration.csv"
    pcsv.write_csv(table.filter(pc.equal(table.column("split"), "test")).slice(0, 14), calibration_file)
    calibrate = f"calibrate:\n  source:\n    path: {calibration_file}\n    id_column: question_id\n    label_column: region\n"
    recipe = write_recipe(tmp_path, calibrate, 10)
    run_dir = tmp_path / "run"
    first = curate("run", recipe, "-o", str(run_dir), "--no-push")
    assert first.returncode == 0, first.stderr[-3000:]

    folder = RunFolder(run_dir)
    scored = pq.read_table(folder.split_files("scored")).to_pylist()
    assert len(scored) == 24 and sum(r["calibration"] for r in scored) == 14
    calibration_ids = {r["id"] for r in scored if r["calibration"]}
    filtered = pq.read_table(folder.split_files("filtered")).to_pylist() if folder.split_files("filtered") else []
    assert not calibration_ids & {r["id"] for r in filtered}
    for row in scored:
        if row["calibration"]:
            assert not row["kept"] and row["drop_reason"] is not None
    stats = json.loads(folder.stats_file.read_text())
    quality = stats["quality"]
    assert quality["measured"] and quality["guarantee"] == {"fdr": 0.3, "scope": "per_class", "score": "metric"}
    assert quality["labels"]["calibration"] == sum(r["calibration"] and r["drop_reason"] == "calibration_question" for r in scored)
    card = (run_dir / "README.md").read_text()
    assert "the expected share of wrong answers among the kept is at most 30%" in card
    assert "Labels were used, for calibration only" in card
    assert "No ground-truth label was used to choose the kept traces" not in card
    assert "exchangeable" in card

    again = curate("run", recipe, "-o", str(run_dir), "--no-push", "-q")
    assert again.returncode == 0, again.stderr[-2000:]
    assert "72 from the journal, 0 generated" in again.stdout
    before = pq.read_table(folder.split_files("scored")).select(["id", "kept", "drop_reason", "uncertainty"])

    rescored = curate("score", str(run_dir))
    assert rescored.returncode == 0, rescored.stderr[-2000:]
    after = pq.read_table(folder.split_files("scored"))
    assert after.select(["id", "kept", "drop_reason", "uncertainty"]).equals(before)
    assert after.column("calibration").to_pylist() == [r["calibration"] for r in scored]

    evaluation = curate("eval", str(run_dir))
    assert evaluation.returncode == 0, evaluation.stderr[-2000:]
    report = json.loads((run_dir / "eval" / "report.json").read_text())
    assert report["fdr"]["level"] == 0.3 and report["labelled"] == 10  # only the pool's labels are held out
    assert "Conformal selection at level 0.3" in evaluation.stdout


def synthetic_run(tmp_path, select: dict, calibrate: dict | None, n: int = 60):
    from curation import pipeline
    from curation.recipe.sections import Recipe
    from curation.source import mark_calibration
    from tests.builders.synthetic_run import RECIPE, build

    recipe = Recipe.model_validate({**RECIPE.model_dump(exclude_unset=True), "select": select, **({"calibrate": calibrate} if calibrate else {})})
    questions, requests, traces = build(recipe, n=n)
    mark_calibration(questions, recipe)
    run_dir = tmp_path / "run"
    summary = pipeline.curate(recipe, questions, requests, traces, {}, {"model_id": "m", "backend": "test"}, run_dir, recipe_yaml="name: synthetic\n", show_progress=False)
    return summary, run_dir


def test_held_out_rows_are_marked_and_never_kept(tmp_path):
    summary, run_dir = synthetic_run(tmp_path, {"strategy": "conformal", "fdr": 0.2, "scope": "overall"}, {"size": 30, "seed": 3, "learn": True})
    scored = pq.read_table(RunFolder(run_dir).split_files("scored")).to_pylist()
    held_out = [r for r in scored if r["calibration"]]
    assert len(held_out) == 30 and not any(r["kept"] for r in held_out)
    reasons = {r["drop_reason"] for r in held_out}
    assert {"calibration_question", "score_fitting_question"} & reasons
    quality = summary.quality
    assert quality["measured"] and quality["guarantee"]["scope"] == "overall" and "learned" in quality
    assert quality["labels"]["calibration"] + quality["labels"]["fitting"] == sum(r["drop_reason"] in ("calibration_question", "score_fitting_question") for r in held_out)
    card = (run_dir / "README.md").read_text()
    assert "over the whole split" in card and "This is an expectation, not a bound on this one split" in card
    # the same seed draws the same questions, whatever their order
    from curation.source import mark_calibration
    from tests.builders.synthetic_run import build

    questions = build(n=60)[0][::-1]
    from curation.recipe.sections import Recipe

    recipe = Recipe.model_validate({"name": "x", "source": {"path": "x.csv", "label_column": "label"}, "prompt": {"user": "u"},
                                    "answer": {"labels": ["a"]}, "select": {"strategy": "per_class", "fraction": 0.5}, "calibrate": {"size": 30, "seed": 3}})
    mark_calibration(questions, recipe)
    assert {q.id for q in questions if q.calibration} == {r["id"] for r in held_out}


def test_without_calibration_the_card_says_quality_is_unmeasured(tmp_path):
    summary, run_dir = synthetic_run(tmp_path, {"strategy": "per_class", "fraction": 0.5}, None)
    assert summary.quality["measured"] is False
    assert summary.quality["labels_needed_per_class"]["0.1"] == 9
    card = (run_dir / "README.md").read_text()
    assert "**Unmeasured.**" in card and "at least 9 labelled questions per predicted class at level 0.1" in card
    assert "No ground-truth label was used to choose the kept traces" in card
    check = summary.quality["selection_metric_check"]  # the source carries labels: the metric is checked against them
    assert check["n"] > 0 and isinstance(check["at_chance"], bool)


def test_validate_locates_a_calibration_file_without_its_label_column(tmp_path):
    calibration_file = tmp_path / "calibration.csv"
    calibration_file.write_text("question_id,country\nx1,France\n")
    recipe = write_recipe(tmp_path, f"calibrate:\n  source:\n    path: {calibration_file}\n    id_column: question_id\n    label_column: region\n", 6)
    result = curate("validate", recipe)
    assert result.returncode != 0
    assert "calibrate.source.label_column: column(s) region not in the calibration source" in result.stdout + result.stderr
