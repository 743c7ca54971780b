"""parse -> score -> select -> publish on constructed traces (no model), read back as a user would."""

import datasets
import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from curation import dataset_card, pipeline, run_folder
from curation.recipe.dump import resolved_recipe_yaml
from tests.builders.synthetic_run import LABELS, RECIPE, build


def test_run_folder_layout_and_contract(tmp_path):
    questions, requests, traces = build()
    summary = pipeline.curate(RECIPE, questions, requests, traces, {}, {"model_id": "m", "backend": "test", "logprob_kind": "raw"}, tmp_path, recipe_yaml=resolved_recipe_yaml(RECIPE))
    scored = datasets.load_dataset(str(tmp_path), split="scored")
    filtered = datasets.load_dataset(str(tmp_path), split="filtered")
    traces_ds = datasets.load_dataset(str(tmp_path), "traces", split="train")
    assert len(scored) == 12 and len(traces_ds) == 60
    assert scored.column_names == filtered.column_names
    for column in ["id", "answer", "uncertainty", "msp", "perplexity", "mean_token_entropy", "self_consistency", "cocoa_msp", "cocoa_ppl", "cocoa_mte", "kept", "label", "prompt", "completion", "gene"]:
        assert column in scored.column_names, column
    assert scored["uncertainty"] == scored["cocoa_ppl"]
    assert len(filtered) == sum(scored["kept"]) == summary.kept
    assert set(filtered["id"]) == {r["id"] for r in scored if r["kept"]}
    row = filtered[0]
    assert row["prompt"][-1]["role"] == "user" and row["completion"][0]["role"] == "assistant"
    assert set(traces_ds.column_names) >= {"id", "text", "answer", "token_logprobs", "is_reference"}
    assert sum(traces_ds["is_reference"]) == 12
    # unparseable question 5 is counted and dropped with its reason, not lost
    q5 = next(r for r in scored if r["id"] == "q05")
    assert q5["answer"] is None and q5["drop_reason"] == "unparsed_answer" and q5["n_unparsed"] == 5
    assert summary.unparsed_traces == 5
    # card: configs block, counts per class, recipe
    card = (tmp_path / "README.md").read_text()
    meta = yaml.safe_load(card.split("---")[1])
    assert meta["license"] == "cc-by-4.0"
    assert [c["config_name"] for c in meta["configs"]] == ["default", "traces"]
    assert "name: synthetic" in card and "| upregulated |" in card
    assert (tmp_path / "recipe.yaml").exists()
    # the histogram is drawn when the folder is published, and the published card shows it
    assert not (tmp_path / run_folder.UNCERTAINTY_PLOT).exists() and "uncertainty_by_class.png" not in card
    published = dataset_card.publication(tmp_path, "org/synthetic")
    assert run_folder.UNCERTAINTY_PLOT in published.files and f"]({run_folder.UNCERTAINTY_PLOT})" in published.card
    assert (tmp_path / run_folder.UNCERTAINTY_PLOT).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a rerun of the folder takes the earlier run's picture away with it
    pipeline.curate(RECIPE, questions, requests, traces, {}, {}, tmp_path, recipe_yaml=resolved_recipe_yaml(RECIPE))
    assert not (tmp_path / run_folder.UNCERTAINTY_PLOT).exists()


def test_per_class_selection_uses_predictions_not_labels(tmp_path):
    questions, requests, traces = build()
    for q in questions:
        q.label = "upregulated"  # if labels leaked into selection, everything would be one class
    pipeline.curate(RECIPE, questions, requests, traces, {}, {}, tmp_path, recipe_yaml="")
    scored = pq.read_table(tmp_path / run_folder.SCORED_FILE).to_pylist()
    kept_classes = {r["answer"] for r in scored if r["kept"]}
    assert kept_classes == set(LABELS)


def test_missing_traces_drop_the_question_with_reason(tmp_path):
    questions, requests, traces = build(drop={("q03", 2)})
    pipeline.curate(RECIPE, questions, requests, traces, {}, {}, tmp_path, recipe_yaml="")
    scored = {r["id"]: r for r in pq.read_table(tmp_path / run_folder.SCORED_FILE).to_pylist()}
    assert scored["q03"]["drop_reason"] == "generation_failed" and not scored["q03"]["kept"]


def test_best_agreeing_keeps_a_majority_sample(tmp_path):
    recipe = RECIPE.model_copy(update={"select": RECIPE.select.model_copy(update={"completion": "best_agreeing"})})
    questions, requests, traces = build(recipe)
    pipeline.curate(recipe, questions, requests, traces, {}, {}, tmp_path, recipe_yaml="")
    rows = pq.read_table(tmp_path / run_folder.SCORED_FILE).to_pylist()
    for r in rows:
        if r["kept"]:
            assert r["kept_trace"] >= 1
            assert r["answer"] == r["majority_answer"]
            assert r["answer"] in r["completion"][0]["content"]


@pytest.mark.parametrize("strategy", ["global", "random"])
def test_other_strategies_write_same_schema(tmp_path, strategy):
    recipe = RECIPE.model_copy(update={"select": RECIPE.select.model_copy(update={"strategy": strategy})})
    questions, requests, traces = build(recipe)
    summary = pipeline.curate(recipe, questions, requests, traces, {}, {}, tmp_path, recipe_yaml="")
    assert summary.kept == 6  # ceil(0.5 * 11 parseable questions)


def test_rewritten_run_folder_is_not_served_from_a_stale_datasets_cache(tmp_path):
    # datasets hashes the card's data-file patterns, not the files; dataset_info sizes make the difference
    run_dir, cache = tmp_path / "run", tmp_path / "cache"
    for n in (12, 9):
        questions, requests, traces = build(n=n)
        pipeline.curate(RECIPE, questions, requests, traces, {}, {}, run_dir, recipe_yaml="")
        assert len(datasets.load_dataset(str(run_dir), split="scored", cache_dir=str(cache))) == n
    meta = yaml.safe_load((run_dir / "README.md").read_text().split("---")[1])
    sizes = {(c["config_name"], s["name"]): s["num_examples"] for c in meta["dataset_info"] for s in c["splits"]}
    assert sizes[("default", "scored")] == 9 and sizes[("traces", "train")] == 45


def test_nothing_kept_still_writes_a_readable_filtered_file(tmp_path):
    recipe = RECIPE.model_copy(update={"select": RECIPE.select.model_copy(update={"fraction": None, "count": 1, "strategy": "per_class", "per_class": None})})
    questions, requests, traces = build(recipe, n=3)
    for t in traces.values():
        t.text = "no answer here"
    summary = pipeline.curate(recipe, questions, requests, traces, {}, {}, tmp_path, recipe_yaml="")
    assert summary.kept == 0
    filtered = pq.read_table(tmp_path / run_folder.FILTERED_FILE)
    assert filtered.num_rows == 0 and filtered.schema.names == pq.read_table(tmp_path / run_folder.SCORED_FILE).schema.names


def test_deepconf_cut_traces_leave_their_questions_samples_but_stay_rows():
    """pipeline.without_cut_samples: a cut sample's slot empties and is no longer planned (so its
    question is not failed); the row stays for the traces table; references are never taken out."""
    from curation.journal import TraceChunk

    rows = 6  # two questions: reference + 2 samples each
    chunk = TraceChunk(
        start=0, slots=np.array([[0, 1, 2], [3, 4, 5]]), planned=np.ones((2, 3), dtype=bool),
        question=np.array([0, 0, 0, 1, 1, 1]), sample_index=np.array([0, 1, 2, 0, 1, 2]),
        fingerprint=[f"fp{r}" for r in range(rows)], text=["a"] * rows, finish_reason=["stop", "early_stop", "stop", "stop", "stop", "stop"],
        logprob_kind=["raw"] * rows, seed=[None] * rows, model=[None] * rows,
        token_offsets=np.zeros(rows + 1, dtype=np.int64), token_logprobs=np.zeros(0),
        top_trace_offsets=np.zeros(rows + 1, dtype=np.int64), top_row_offsets=np.zeros(1, dtype=np.int64), top_values=np.zeros(0),
    )
    unchanged, no_mask = pipeline.without_cut_samples(chunk, {"fp9"})
    assert unchanged is chunk and no_mask is None
    out, cut_mask = pipeline.without_cut_samples(chunk, {"fp1", "fp3"})  # fp3 is a reference
    assert cut_mask.tolist() == [False, True, False, True, False, False]
    assert out.slots.tolist() == [[0, -1, 2], [3, 4, 5]]
    assert out.planned.tolist() == [[True, False, True], [True, True, True]]
    assert out.n_traces == rows and out.fingerprint == chunk.fingerprint


def test_stage_stats_count_as_they_go_and_add_up_across_shards():
    from curation.types import StageStats

    a = StageStats()
    a.update("rows_in", 10)
    a.update("rows_out", 7)
    a.update("dropped_unparsed_answer", 2)
    a.update("dropped_truncated")
    a.update("seconds", 0.5)
    b = StageStats(rows_in=5, rows_out=5, dropped={"truncated": 3}, seconds=1.0)
    total = a + b
    assert (total.rows_in, total.rows_out, total.dropped, total.seconds) == (15, 12, {"unparsed_answer": 2, "truncated": 4}, 1.5)
    assert (a.rows_in, a.dropped) == (10, {"unparsed_answer": 2, "truncated": 1})  # the operands are unchanged
    assert StageStats.from_json(total.to_json()).to_json() == total.to_json()
    with pytest.raises(KeyError, match="no counter 'rows'"):
        a.update("rows", 1)
