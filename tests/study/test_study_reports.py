"""The studies' reports and numbers: rendered from templates, counted with `curate eval`'s definitions.

scripts/templates/*.md.j2 must reproduce the committed results/*.md from the committed JSON (the
studies take hours, so this is how a change to a template or the shared code is checked), a small
result renders into the tables it should, and curation.eval.study's per-class and kept-vs-all
numbers are the ones eval/report.json holds for the same run folder.
"""

import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest

from curation.eval import study
from curation.eval.classification import is_correct

RESULTS = Path(__file__).resolve().parents[2] / "results"


@pytest.mark.parametrize("key", ["m49", "elements"])
def test_committed_task_reports_render_from_their_json(load_script, key):
    script = load_script("study")
    script.TASK = script.TASKS[key]
    results = json.loads((RESULTS / f"{script.TASK.stem}.json").read_text())
    assert script.markdown(results) == (RESULTS / f"{script.TASK.stem}.md").read_text()


def test_committed_summary_and_mini_study_render_from_their_json(load_script):
    summary = load_script("study_summary")
    studies = summary.load(RESULTS)
    assert summary.markdown(studies, summary.metric_rows(studies, RESULTS)) == (RESULTS / "study_summary.md").read_text()
    mini = load_script("mini_study")
    assert mini.markdown(json.loads((RESULTS / "mini_study.json").read_text())) == (RESULTS / "mini_study.md").read_text()


def test_task_report_from_a_small_fixture(load_script, study_results):
    script = load_script("study")
    script.TASK = script.TASKS["m49"]
    study_results["reading"] = script.reading(study_results)
    text = script.markdown(study_results)
    assert text.startswith("# Self-improvement study: uncertainty filtering on UN M49 regions, SmolLM2-135M\n\nGenerated 2026-12-06 06:20 UTC")
    assert "| `cocoa_ppl` (selection) | 0.700 [0.600, 0.800] | 0.400 [0.200, 0.600] | 0.900 [0.800, 1.000] |" in text
    assert "| `cocoa_ppl` vs `random` | +0.400 [+0.200, +0.600] | +0.200 [+0.100, +0.300] | cocoa_ppl better |" in text
    assert "| Africa | 30 | 0.500 [0.300, 0.700] | 6 | 1.000 [1.000, 1.000] |" in text
    assert "| `m49-global` | `cocoa_ppl` | global | 10 | 0.800 [0.600, 1.000] | 0.750 | Africa 10 |" in text
    assert "| SFT on label-correct (uses labels) | 10 | 0.700 | 0.700, 0.700 | – | [0.650, 0.750] | 0.600, 0.600 | 1, 1 |" in text
    assert "| filtered vs label-correct | -0.100 [-0.200, +0.000] | not distinguishable |" in text
    assert "(load average 3 when this report was written): generation 10.0 min, training 5.0 min, sum 15.0 min." in text
    assert "the sum, 15 min, is within it." in text
    assert "- **Separation:** `cocoa_ppl` ranks right above wrong answers with AUROC 0.700 [0.600, 0.800]" in text
    assert text.endswith("that was not measured for this study.\n")  # the rerun section closes it
    # without adapters the third section goes, and the rest stays
    del study_results["adapters"]
    shorter = script.markdown(study_results)
    assert "## 3." not in shorter and "## Compute" in shorter and "held-out test questions" in shorter


def test_one_definition_of_a_right_answer():
    assert is_correct("Asia", "Asia") and is_correct(1, "1")  # a CSV label read back as a number still matches
    assert not is_correct(None, "Asia") and not is_correct("Asia", None) and not is_correct("Asia", "Europe")


def test_study_numbers_are_eval_numbers(tmp_path):
    from curation.eval.run import evaluate_run
    from tests.builders.eval_run import build_run

    run_dir = build_run(tmp_path / "run", n=24)
    report = evaluate_run(run_dir, write=False, bootstrap=0)
    chosen = report["metrics"][report["selection_metric"]]["per_class"]
    per_class = study.per_predicted_class(run_dir, draws=200)
    assert {label: (v["all"]["n"], v["all"]["accuracy"]) for label, v in per_class.items()} == {label: (v["n"], v["accuracy"]) for label, v in chosen.items()}
    kept = study.kept_per_class(run_dir)
    assert sum(kept.values()) == report["kept_vs_all"]["kept"]["n"] == sum(v["kept"]["n"] for v in per_class.values())
    rows = study.labelled_rows(run_dir)
    kva = study.kept_vs_all(rows, report["classes"])
    for ours, theirs in (("all_rows", "all"), ("parsed_rows", "pool"), ("kept", "kept")):
        assert (kva[ours]["n"], kva[ours]["accuracy"]) == (report["kept_vs_all"][theirs]["n"], pytest.approx(report["kept_vs_all"][theirs]["accuracy"]))
    assert study.answers_by_id(run_dir)["accuracy"] == pytest.approx(report["kept_vs_all"]["all"]["accuracy"])
    baseline = study.random_baseline(rows, report["classes"], [0.5], seeds=20)["0.5"]
    assert abs(baseline["accuracy"] - report["pool"]["accuracy"]) < 3 * baseline["accuracy_sd"] + 1e-9  # random selection: about the pool's accuracy


def test_intervals_over_seeds_and_questions():
    from curation.eval.bootstrap import Resamples

    matrix = {"a": np.array([[1, 1, 0, 1], [1, 0, 0, 1]], dtype=float), "b": np.array([[0, 1, 0, 0]], dtype=float)}
    resamples = Resamples.draw(4, 200, seed=0)
    a = study.model_accuracy(matrix["a"], resamples)
    assert a["per_seed"] == [0.75, 0.5] and a["mean"] == pytest.approx(0.625)
    assert a["seed_ci"] == pytest.approx([0.625 - 12.706 * a["sd"] / np.sqrt(2), 0.625 + 12.706 * a["sd"] / np.sqrt(2)])
    row = study.paired_accuracy("a", "b", matrix, resamples)
    assert row["delta_accuracy"] == pytest.approx(0.375) and row["verdict"] in ("a better", "not distinguishable")
