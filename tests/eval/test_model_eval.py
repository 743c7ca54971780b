"""`curate eval --model ADAPTER_DIR`: held-out labelled questions, answered by base + adapter with the
recipe's prompt and parser, scored with accuracy / per-class F1 / macro-F1 through `evaluate`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.builders.train_run import build_run_folder


def _loaded(run_dir: Path):
    from curation.recipe.load import load_recipe

    return load_recipe(str(run_dir / "recipe.yaml"))


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory) -> Path:
    return build_run_folder(tmp_path_factory.mktemp("eval"), limit=8)


@pytest.fixture(scope="module")
def adapter(run_folder) -> Path:
    """A LoRA adapter from 2 real steps on the filtered split (about 20 s on 2 cores)."""
    from curation.train.main import train
    from curation.train.target import resolve_target

    result = train(resolve_target(str(run_folder)), output_dir=run_folder / "adapters" / "filtered", show_progress=False)
    return result.output_dir


# --------------------------------------------------------------------------- questions (fast)
def test_held_out_questions_use_the_split_and_leave_out_training_rows(run_folder):
    import pyarrow.parquet as pq

    from curation.eval.model import held_out_questions

    loaded = _loaded(run_folder)
    trained = pq.read_table(run_folder / "data" / "filtered-00000-of-00001.parquet").column("id").to_pylist()

    test, info = held_out_questions(loaded, split="test", limit=5, exclude_ids=trained)
    assert len(test) == 5 and info["split"] == "test" and info["filter"]["split"] == "test"
    assert all(q.columns["split"] == "test" and q.label for q in test)
    assert info["source"] == "perturbqa-k562-sample.csv"

    # The recipe's own split (train): the rows the adapter learned from are never evaluated.
    same, info = held_out_questions(loaded, split=None, limit=8, exclude_ids=trained)
    assert info["excluded_training_rows"] == len(trained) > 0
    assert not {q.id for q in same} & set(trained) and len(same) == 8 - len(trained)
    again, _ = held_out_questions(loaded, split="test", limit=5, exclude_ids=trained)
    assert [q.id for q in again] == [q.id for q in test]  # stable subset


def test_held_out_questions_errors(run_folder, tmp_path):
    from curation.eval.model import EvalError, held_out_questions

    loaded = _loaded(run_folder)
    no_labels = loaded.recipe.model_copy(update={"source": loaded.recipe.source.model_copy(update={"label_column": None})})
    import dataclasses

    with pytest.raises(EvalError, match="no source.label_column"):
        held_out_questions(dataclasses.replace(loaded, recipe=no_labels), split="test", limit=2)
    with pytest.raises(EvalError, match="no held-out labelled questions in split 'nowhere'"):
        held_out_questions(loaded, split="nowhere", limit=2)

    csv = tmp_path / "nosplit.csv"
    csv.write_text("pert,gene,cell_line,label\nA,B,K562,upregulated\n")
    nosplit = loaded.recipe.model_copy(update={"source": loaded.recipe.source.model_copy(update={"path": str(csv), "filter": None})})
    with pytest.raises(EvalError, match="has no `split` column"):
        held_out_questions(dataclasses.replace(loaded, recipe=nosplit), split="test", limit=2)


def test_answers_end_at_the_first_stop_string():
    from curation.eval.model import _cut_at_stop

    text = "thinking <answer>up</answer> and more </answer>"
    assert text[: _cut_at_stop(text, ["</answer>"])] == "thinking <answer>up</answer>"
    assert _cut_at_stop(text, []) is None and _cut_at_stop("no tags", ["</answer>"]) is None


def test_not_an_adapter_is_one_line(run_folder, tmp_path, capsys):
    from curation.cli import main

    code = main(["eval", str(run_folder), "--model", str(tmp_path), "--split", "test"])
    err = capsys.readouterr().err
    assert code == 1 and "not an adapter made by `curate train`" in err and err.strip().count("\n") == 0


# --------------------------------------------------------------------------- real evaluation (slow)
@pytest.mark.slow
def test_evaluate_adapter_reports_accuracy_and_f1(adapter):
    from curation.eval.classification import classification_scores
    from curation.eval.model import evaluate_model

    report = evaluate_model(adapter, split="test", limit=4, baseline=True, max_new_tokens=32, show_progress=False)
    assert report["n"] == 4 and report["eval"]["split"] == "test" and report["trained_on"]["split"] == "filtered"
    classes = ["upregulated", "downregulated", "not differentially expressed"]
    assert report["classes"] == classes
    rows = report["predictions"]
    assert all(r["prediction"] in classes + [None] for r in rows)
    expected = classification_scores([r["label"] for r in rows], [r["prediction"] for r in rows], classes)
    assert report["scores"] == expected
    assert set(report["scores"]) >= {"accuracy", "macro_f1", "f1_per_class", "support"}
    assert 0.0 <= report["scores"]["accuracy"] <= 1.0
    assert "baseline" in report and any(r["text"] != r["base_text"] for r in rows)  # the adapter changes the answers

    written = json.loads((adapter / "eval" / "test.json").read_text())
    assert written["scores"] == expected and written["n"] == 4
    predictions = [json.loads(line) for line in (adapter / "eval" / "test-predictions.jsonl").read_text().splitlines()]
    assert [p["id"] for p in predictions] == [r["id"] for r in rows]
    card = (adapter / "README.md").read_text()
    assert "## Evaluation" in card and "| test (`perturbqa-k562-sample.csv`) | 4 |" in card


@pytest.mark.slow
def test_curate_eval_model_cli(run_folder, adapter, capsys):
    from curation.cli import main

    code = main(["eval", str(run_folder), "--model", str(adapter), "--split", "test", "--limit", "2"])
    out = capsys.readouterr().out
    assert code == 0
    assert "eval: 2 held-out questions" in out and "accuracy" in out and "macro-F1" in out
    assert "not differentially expressed" in out and f"report: {adapter / 'eval' / 'test.json'}" in out
