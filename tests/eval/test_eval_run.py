"""`curate eval`: PRR, AUROC and selective accuracy by hand, and a whole report on a constructed run folder."""

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pyarrow.parquet as pq
import pytest

from curation import pipeline, run_folder
from curation.eval import ranking
from curation.eval.report import CARD_SECTION
from curation.eval.run import evaluate_run
from curation.run_folder import EVAL_CURVES_PLOT, EVAL_HISTOGRAM_PLOT, EVAL_REPORT_FILE, EVAL_STRATEGY_PLOT

LABELS = ["upregulated", "downregulated", "not differentially expressed"]


# --------------------------------------------------------------------------- by hand
def test_prr_auroc_and_selective_accuracy_by_hand_with_ties():
    uncertainty = np.array([0.1, 0.2, 0.2, 0.9])
    correct = np.array([1, 1, 0, 0])
    # tie group {1, 2} is averaged: expected prefix means 1, 3/4, 2/3, 1/2
    assert ranking.selective_accuracy(uncertainty, correct) == pytest.approx([1, 0.75, 2 / 3, 0.5])
    result = ranking.prr(uncertainty, correct)
    assert result["raw"] == pytest.approx(35 / 48)
    assert result["oracle"] == pytest.approx(38 / 48)
    assert result["random"] == pytest.approx(0.5)
    assert result["prr"] == pytest.approx(11 / 14)
    # wrong rows ranked 1 (tied with a right one) and 2: (0.5 + 1 + 1 + 1) / 4
    assert ranking.auroc(uncertainty, correct == 0) == pytest.approx(0.875)


def test_tiebreak_orders_ties_and_undefined_ranks_last():
    ranks = ranking.ranking(np.array([0.0, 0.0, np.nan, 0.0]), np.array([0.5, 0.1, 0.0, 0.5]))
    assert ranks.tolist() == [1, 0, 2, 1]
    assert ranking.prr(np.array([0.0, 0.0]), np.array([1, 0]), np.array([0.1, 0.9]))["prr"] == pytest.approx(1.0)
    assert ranking.prr(np.array([0.0, 0.0]), np.array([1, 0]))["prr"] == pytest.approx(0.0)  # a pure tie is random


def test_degenerate_inputs():
    assert ranking.prr(np.array([0.3, 0.1]), np.array([1, 1]))["prr"] is None  # oracle == random
    assert ranking.auroc(np.array([0.3, 0.1]), np.array([False, False])) is None
    assert ranking.prr(np.zeros(0), np.zeros(0))["prr"] is None
    assert len(ranking.selective_accuracy(np.zeros(0), np.zeros(0))) == 0


def test_oracle_and_anti_oracle():
    correct = np.array([1, 0, 1, 0, 1, 1, 0])
    assert ranking.prr(1.0 - correct, correct)["prr"] == pytest.approx(1.0)
    assert ranking.prr(correct.astype(float), correct)["prr"] < -0.9
    assert ranking.auroc(1.0 - correct, correct == 0) == pytest.approx(1.0)


# --------------------------------------------------------------------------- a run folder
def test_evaluate_run_writes_report_plots_and_card(tmp_path, make_run):
    run_dir = make_run(tmp_path / "run")
    report = evaluate_run(run_dir)
    on_disk = json.loads((run_dir / EVAL_REPORT_FILE).read_text())
    assert on_disk["metrics"].keys() == report["metrics"].keys()
    assert {"msp", "perplexity", "mean_token_entropy", "self_consistency", "semantic_consistency", "cocoa_ppl"} <= set(report["metrics"])
    for plot in (EVAL_CURVES_PLOT, EVAL_HISTOGRAM_PLOT, EVAL_STRATEGY_PLOT):
        assert (run_dir / plot).stat().st_size > 5000
    # the traces were built so that confident questions are right: confidence must beat chance
    assert report["metrics"]["perplexity"]["auroc"] > 0.6
    assert report["metrics"]["perplexity"]["prr"] > 0.2
    for entry in report["metrics"].values():
        assert set(entry["per_class"]) <= set(LABELS)
        assert len(entry["selective_accuracy"]["fraction"]) == len(entry["selective_accuracy"]["accuracy"])
        for fraction in report["fractions"]:
            both = entry["selection"][str(fraction)]
            assert set(both) == {"per_class", "global"}
            # per-class selection keeps every predicted class
            assert all(count > 0 for label, count in both["per_class"]["kept_per_class"].items() if report["metrics"][next(iter(report["metrics"]))]["per_class"].get(label))
    kept = pq.read_table(run_dir / run_folder.SCORED_FILE).to_pylist()
    kept_rows = [r for r in kept if r["kept"]]
    assert report["kept_vs_all"]["kept"]["n"] == len(kept_rows)
    assert report["kept_vs_all"]["kept"]["accuracy"] == pytest.approx(np.mean([r["answer"] == r["label"] for r in kept_rows]))
    card = (run_dir / run_folder.CARD_FILE).read_text()
    assert CARD_SECTION in card and "eval/selective_accuracy.png" in card
    # evaluation never changes the data
    assert pq.read_table(run_dir / run_folder.SCORED_FILE).to_pylist() == kept


def test_eval_cli(tmp_path, capsys, make_run):
    from curation.cli import main

    run_dir = make_run(tmp_path / "run", n=12)
    assert main(["eval", str(run_dir), "--fractions", "0.2,0.5", "--no-card"]) == 0
    out = capsys.readouterr().out
    assert "AUROC" in out and "cocoa_ppl" in out and "report:" in out
    assert CARD_SECTION not in (run_dir / run_folder.CARD_FILE).read_text()
    assert json.loads((run_dir / EVAL_REPORT_FILE).read_text())["fractions"] == [0.2, 0.5]


def test_eval_cli_dispatches_model_to_model_eval(tmp_path, monkeypatch):
    from curation.cli import main
    from curation.eval import model

    seen = {}
    monkeypatch.setattr(model, "recipe_from_run_dir", lambda run_dir, adapter_dir: None)
    monkeypatch.setattr(model, "evaluate_model", lambda adapter, **kwargs: seen.update(kwargs, model=adapter) or {})
    monkeypatch.setattr(model, "summary_text", lambda report: "")
    assert main(["eval", str(tmp_path), "--model", "adapters/filtered", "--split", "scored", "--limit", "5"]) == 0
    assert seen["model"] == "adapters/filtered" and seen["split"] == "scored" and seen["limit"] == 5


def test_the_parser_defaults_are_the_bootstrap_defaults():
    from curation.commands import eval as eval_command
    from curation.eval import bootstrap

    assert (eval_command.DEFAULT_DRAWS, eval_command.DEFAULT_SEED) == (bootstrap.DEFAULT_DRAWS, bootstrap.DEFAULT_SEED)


def test_eval_without_labels_fails_with_one_line(tmp_path, capsys, make_recipe, make_run):
    from curation.cli import main

    recipe = make_recipe(source={"path": "x.csv"})
    run_dir = make_run(tmp_path / "run", recipe=recipe, n=6)
    assert main(["eval", str(run_dir)]) == 1
    assert "label_column" in capsys.readouterr().err


@pytest.mark.parametrize(
    "metric, similarity",
    [(m, "answer") for m in ("msp", "perplexity", "mean_token_entropy", "self_consistency", "semantic_consistency", "cocoa_msp", "cocoa_ppl", "cocoa_mte")]
    + [("semantic_consistency", "rouge_l"), ("cocoa_mte", "rouge_l")],
)
def test_rescore_every_metric_and_similarity_from_the_journal(tmp_path_factory, metric, similarity, make_run):
    run_dir = make_run(tmp_path_factory.mktemp("rescore") / "run", n=9)
    before = pq.read_table(run_dir / run_folder.SCORED_FILE)
    summary = pipeline.rescore(run_dir, {"score": {"metric": metric, "similarity": similarity}}, show_progress=False)
    after = pq.read_table(run_dir / run_folder.SCORED_FILE)
    assert summary.metric == metric and summary.similarity == similarity
    assert np.array_equal(np.array(after.column("uncertainty").to_pylist(), dtype=float), np.array(after.column(metric).to_pylist(), dtype=float), equal_nan=True)
    # confidence metrics do not depend on the similarity: recomputed identically
    for name in ("msp", "perplexity", "mean_token_entropy", "self_consistency"):
        assert after.column(name).to_pylist() == before.column(name).to_pylist()
    filtered = pq.read_table(run_dir / run_folder.FILTERED_FILE)
    assert filtered.num_rows == sum(after.column("kept").to_pylist())


def test_eval_report_card_and_table_carry_bootstrap_intervals(tmp_path, capsys, make_run):
    from curation.cli import main

    run_dir = make_run(tmp_path / "run", n=60)
    assert main(["eval", str(run_dir), "--bootstrap", "300", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    report = json.loads((run_dir / EVAL_REPORT_FILE).read_text())
    assert report["bootstrap"]["draws"] == 300 and report["bootstrap"]["seed"] == 3
    for name, entry in report["metrics"].items():
        low, high = entry["prr_ci"]
        assert low <= entry["prr"] + 0.05 and entry["prr"] - 0.05 <= high  # percentile intervals sit around the estimate
        curve = entry["selective_accuracy"]
        assert len(curve["low"]) == len(curve["accuracy"]) == len(curve["high"])
        assert all(lo - 1e-9 <= hi for lo, hi in zip(curve["low"], curve["high"]))
    # the informative metric's interval excludes chance on these traces
    assert report["metrics"]["perplexity"]["auroc_ci"][0] > 0.5
    kept = report["kept_vs_all"]["kept"]
    assert kept["accuracy_ci"][0] <= kept["accuracy"] <= kept["accuracy_ci"][1]
    pairs = {(r["a"], r["b"]) for r in report["comparisons"]}
    assert ("cocoa_ppl", "random") in pairs and ("cocoa_ppl", "perplexity") in pairs
    assert "cocoa_ppl vs random: ΔPRR = " in out and "[" in out
    card = (run_dir / run_folder.CARD_FILE).read_text()
    assert "bootstrap intervals" in card and "| `cocoa_ppl` vs `random` |" in card
    # --bootstrap 0: no intervals anywhere
    assert main(["eval", str(run_dir), "--bootstrap", "0", "--no-card"]) == 0
    plain = json.loads((run_dir / EVAL_REPORT_FILE).read_text())
    assert "comparisons" not in plain and "prr_ci" not in plain["metrics"]["cocoa_ppl"]
