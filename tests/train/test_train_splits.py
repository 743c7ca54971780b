"""`curate train --split`'s like-for-like baselines, with no model: `random-readable` (random rows whose
answer could be read, the same count per predicted class as `filtered`) and `label-correct` (rows whose
answer equals the label, the same counts; the label-using upper reference).

First on constructed rows (the selection as a function), then on a run folder made by the real
pipeline from constructed traces in which the teacher is sometimes wrong and sometimes unreadable.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path

import pytest


def _row(i: int, answer: str | None, label: str, kept: bool = False, completion: bool = True) -> dict:
    return {
        "id": f"q{i:03d}", "answer": answer, "label": label, "kept": kept,
        "prompt": [{"role": "user", "content": f"question {i}"}],
        "completion": [{"role": "assistant", "content": f"<answer>{answer}</answer>"}] if completion else [],
    }


@pytest.fixture()
def rows() -> tuple[list[dict], list[dict]]:
    """40 readable answers of class A (16 right), 12 of class B (2 right), 8 unreadable, 2 without a trace."""
    scored = []
    for i in range(40):
        scored.append(_row(i, "A", "A" if i % 5 < 2 else "B", kept=i < 6))
    for i in range(40, 52):
        scored.append(_row(i, "B", "B" if i < 42 else "A", kept=i in (40, 45, 50)))
    for i in range(52, 60):
        scored.append(_row(i, None, "A"))
    scored.append(_row(60, "A", "A", completion=False))
    scored.append(_row(61, "B", "B", completion=False))
    filtered = [r for r in scored if r["kept"]]
    return scored, filtered


def test_random_readable_matches_the_filtered_counts_per_class(rows):
    from curation.train.target import draw_like_filtered

    scored, filtered = rows
    drawn, short, eligible = draw_like_filtered(scored, filtered, seed=0, label_correct=False)
    assert Counter(r["answer"] for r in drawn) == Counter({"A": 6, "B": 3}) == Counter(r["answer"] for r in filtered)
    assert short == {} and eligible == 52  # readable and with a trace: 40 + 12
    assert all(r["answer"] is not None and r["completion"] for r in drawn)
    assert len({r["id"] for r in drawn}) == len(drawn)
    order = [r["id"] for r in scored]
    assert [order.index(r["id"]) for r in drawn] == sorted(order.index(r["id"]) for r in drawn)


def test_random_readable_is_seeded_and_really_random(rows):
    from curation.train.target import draw_like_filtered

    scored, filtered = rows
    ids = lambda seed, rows=scored: [r["id"] for r in draw_like_filtered(rows, filtered, seed=seed, label_correct=False)[0]]  # noqa: E731
    assert ids(0) == ids(0)
    assert len({tuple(ids(s)) for s in range(6)}) > 1
    # the draw depends on which rows exist, not on the order the run folder lists them in
    assert sorted(ids(3)) == sorted(ids(3, list(reversed(scored))))


def test_label_correct_draws_right_answers_and_reports_a_short_class(rows):
    from curation.train.target import draw_like_filtered

    scored, filtered = rows
    drawn, short, eligible = draw_like_filtered(scored, filtered, seed=0, label_correct=True)
    assert all(r["answer"] == r["label"] for r in drawn)
    # class B has only 2 right answers and the filtered split kept 3 B rows: all 2 taken, 1 short
    assert Counter(r["answer"] for r in drawn) == Counter({"A": 6, "B": 2}) and short == {"B": 1}
    assert eligible == 16 + 2


# --------------------------------------------------------------------------- through a real run folder
def _mixed_run_folder(folder: Path, write_train_recipe, identity_backend) -> Path:
    """The pipeline over 24 questions whose teacher is right on some, wrong on some, unreadable on a few."""
    import numpy as np

    from curation import pipeline
    from curation.generate import plan_requests
    from curation.recipe.load import load_recipe
    from curation.source import load_questions
    from curation.types import Trace

    folder.mkdir(parents=True, exist_ok=True)
    loaded = load_recipe(str(write_train_recipe(folder, limit=24)))
    recipe = loaded.recipe
    questions = load_questions(loaded).questions
    requests = plan_requests(questions, recipe.generator, identity_backend())
    by_id = {q.id: q for q in questions}
    index = {q.id: i for i, q in enumerate(questions)}
    classes = ["upregulated", "downregulated", "not differentially expressed"]
    rng = np.random.default_rng(0)
    traces = {}
    for request in requests:
        q, i = by_id[request.prompt_id], index[request.prompt_id]
        if i % 6 == 5:
            answer_text = "I cannot tell"  # unreadable
        elif i % 3 == 1:
            answer_text = f"<answer>{classes[(classes.index(q.label) + 1) % 3]}</answer>"  # wrong
        else:
            answer_text = f"<answer>{q.label}</answer>"
        n = 16
        traces[request.fingerprint] = Trace(
            fingerprint=request.fingerprint, prompt_id=request.prompt_id, sample_index=request.sample_index,
            text=f"Thinking about {q.columns['gene']}. {answer_text}", token_logprobs=(-rng.random(n)).tolist(),
            top_logprobs=[sorted((-rng.random(3)).tolist(), reverse=True) for _ in range(n)], finish_reason="stop", logprob_kind="raw",
        )
    run_dir = folder / "run"
    pipeline.curate(
        recipe, questions, requests, traces, {}, {"backend": "test", "model_id": "test-teacher"}, run_dir,
        recipe_yaml=pipeline._recipe_yaml_for(dataclasses.replace(loaded, recipe=recipe), run_dir),
    )
    return run_dir


@pytest.fixture(scope="module")
def mixed_run(tmp_path_factory, write_train_recipe, identity_backend) -> Path:
    return _mixed_run_folder(tmp_path_factory.mktemp("splits"), write_train_recipe, identity_backend)


def test_splits_from_a_run_folder(mixed_run, train_target):
    import pyarrow.parquet as pq

    from curation.train.target import load_training_rows

    scored = {r["id"]: r for r in pq.read_table(mixed_run / "data" / "scored-00000-of-00001.parquet").to_pylist()}
    assert any(r["answer"] is None for r in scored.values()) and any(r["answer"] not in (None, r["label"]) for r in scored.values())
    target = train_target(mixed_run)
    filtered = load_training_rows(target, "filtered", seed=0)
    want = Counter(scored[i]["answer"] for i in filtered.ids)

    readable = load_training_rows(target, "random-readable", seed=0)
    assert Counter(scored[i]["answer"] for i in readable.ids) == want and readable.per_class == dict(sorted(want.items()))
    assert all(scored[i]["answer"] is not None for i in readable.ids)
    assert readable.available == sum(r["answer"] is not None for r in scored.values())
    assert readable.ids == load_training_rows(target, "random-readable", seed=0).ids
    assert readable.dataset.column_names == ["prompt", "completion"] and len(readable.dataset) == len(filtered.ids)

    correct = load_training_rows(target, "label-correct", seed=1)
    assert all(scored[i]["answer"] == scored[i]["label"] for i in correct.ids)
    for cls, n in want.items():
        assert Counter(scored[i]["answer"] for i in correct.ids)[cls] == n - correct.short.get(cls, 0)


def test_label_correct_without_labels_is_one_line(mixed_run, tmp_path, train_target):
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    from curation.train.config import TrainError
    from curation.train.target import load_training_rows

    copy = tmp_path / "run"
    shutil.copytree(mixed_run, copy)
    for path in (copy / "data").glob("*.parquet"):
        table = pq.read_table(path)
        pq.write_table(table.set_column(table.schema.get_field_index("label"), "label", pa.nulls(len(table), pa.string())), path)
    with pytest.raises(TrainError, match="needs labels.*source.label_column"):
        load_training_rows(train_target(copy), "label-correct", seed=0)
    assert load_training_rows(train_target(copy), "random-readable", seed=0).ids  # the label-free baseline needs none


def test_model_card_marks_the_label_using_reference():
    from curation.train.card import render_model_card
    from curation.train.config import TrainConfig

    meta = {
        "recipe_name": "m49", "split": "label-correct", "base_model": "SmolLM2", "base_model_hub_id": None, "curate_version": "0.1.0",
        "dataset": "runs/m49", "hub_dataset": None, "rows": 5, "questions": 20, "steps": 1, "epochs": 1.0, "seconds": 1.0, "device": "cpu",
        "final_loss": 1.0, "log_history": [], "recipe_fingerprint": "x", "created": "2026-01-01", "train": TrainConfig().model_dump(mode="json"),
        "uses_labels": True, "rows_per_class": {"A": 3, "B": 2}, "rows_short_per_class": {"B": 1},
    }
    text = render_model_card(meta, "name: m49\n")
    assert "This adapter used the labels" in text and "label-using-reference" in text
    assert "Rows per predicted class: A 3, B 2 (fewer than the filtered split has: B 1 short)" in text
    plain = render_model_card({**meta, "split": "random-readable", "uses_labels": False, "rows_short_per_class": {}}, "name: m49\n")
    assert "used the labels" not in plain and "label-using-reference" not in plain and "whose answer could be read" in plain


def test_cli_offers_the_new_splits(tmp_path, capsys):
    from curation.cli import main

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert "random-readable" in out and "label-correct" in out
