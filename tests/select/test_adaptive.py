"""Adaptive sampling (curation.adaptive): exact mode keeps what fixed K keeps, for fewer samples.

Whole runs go through the TGI protocol test server, whose fake model gives every prompt its own
answer margin (some questions certain, some split). The property tests drive the same planner and
pipeline over random answer distributions, with ties, through a real journal.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from curation import adaptive, pipeline
from curation.eval.run import evaluate_run
from curation.generate import plan_requests
from curation.journal import Journal
from curation.recipe.load import load_recipe
from curation.recipe.sections import Recipe
from curation.types import REFERENCE_INDEX, Question, Trace
from tests.builders.adaptive_run import kept_rows, nan_as_null, read_split, read_traces, recipe_text, run
from tests.builders.synthetic_run import planning_identity
from tests.servers.tgi_server import TGITestServer

REPO = Path(__file__).resolve().parents[2]


def assert_same_kept_data(fixed_dir: Path, adaptive_dir: Path) -> None:
    fixed, adapt = read_split(fixed_dir, "scored"), read_split(adaptive_dir, "scored")
    assert fixed.num_rows == adapt.num_rows
    assert set(kept_rows(fixed)["id"].to_pylist()) == set(kept_rows(adapt)["id"].to_pylist())
    assert kept_rows(fixed).equals(kept_rows(adapt))  # every column of every kept row
    assert read_split(fixed_dir, "filtered").sort_by("id").equals(read_split(adaptive_dir, "filtered").sort_by("id"))
    kept = set(kept_rows(fixed)["id"].to_pylist())
    keep = lambda t: t.filter(pa.array([i in kept for i in t["id"].to_pylist()])).sort_by([("id", "ascending"), ("sample_index", "ascending")])  # noqa: E731
    assert keep(read_traces(fixed_dir)).equals(keep(read_traces(adaptive_dir)))


@pytest.mark.slow
@pytest.mark.parametrize(
    "metric,fraction,strategy",
    [("cocoa_ppl", 0.1, "per_class"), ("cocoa_msp", 0.3, "per_class"), ("self_consistency", 0.1, "per_class"), ("perplexity", 0.1, "per_class"), ("cocoa_mte", 0.2, "global")],
)
def test_exact_mode_keeps_what_fixed_k_keeps_for_fewer_samples(tmp_path, write_recipe, metric, fraction, strategy):
    with TGITestServer() as tgi:
        fixed = run(write_recipe, recipe_text(tgi.url, metric=metric, fraction=fraction, strategy=strategy), tmp_path / "fixed", "fixed.yaml")
        block = "  adaptive:\n    window: 2"
        result = run(write_recipe, recipe_text(tgi.url, metric=metric, fraction=fraction, strategy=strategy, adaptive_block=block), tmp_path / "adaptive", "adaptive.yaml")
        assert not tgi.invalid_requests
    assert_same_kept_data(tmp_path / "fixed", tmp_path / "adaptive")
    summary = result.summary.generation["adaptive"]
    assert summary["fallback"] is None and summary["mode"] == "exact"
    # what was paid for: the adaptive run shares the fixed run's journal entries only by fingerprint,
    # so count what its own run folder is made of
    assert summary["samples_fixed_k"] == 60 * 8
    assert summary["samples_drawn"] < summary["samples_fixed_k"] * (0.6 if fraction <= 0.1 else 0.9)
    scored = read_split(tmp_path / "adaptive", "scored")
    n_samples = np.array(scored["n_samples"].to_pylist())
    assert int(n_samples.sum()) == summary["samples_drawn"]
    assert (n_samples[np.array(scored["kept"].to_pylist())] == 8).all()
    assert fixed.summary.kept == result.summary.kept
    card = (tmp_path / "adaptive" / "README.md").read_text(encoding="utf-8")
    assert "Adaptive sampling" in card and f"{summary['samples_drawn']} of 480 samples drawn" in card and "`n_samples`" in card
    if metric == "cocoa_ppl":  # curate eval on a variable-K run: sample-based metrics judged on fully sampled rows
        report = evaluate_run(tmp_path / "adaptive", write=False)
        full = int((n_samples == 8).sum())
        assert report["variable_k"]["rows_below_max"] == 60 - full
        assert report["metrics"]["cocoa_ppl"]["n"] <= full < report["metrics"]["perplexity"]["n"]
        # bootstrap intervals on each metric's own pool; the selection metric is compared only with
        # metrics ranked on the same rows (paired resamples), and every metric with random
        pairs = {(row["a"], row["b"]) for row in report["comparisons"]}
        assert ("cocoa_ppl", "self_consistency") in pairs and ("cocoa_ppl", "perplexity") not in pairs and ("perplexity", "random") in pairs
        assert report["metrics"]["perplexity"]["auroc_ci"] is not None


@pytest.mark.slow
def test_esc_is_an_approximation_that_samples_less_than_exact(tmp_path, write_recipe):
    with TGITestServer() as tgi:
        exact = run(write_recipe, recipe_text(tgi.url, adaptive_block="  adaptive:\n    window: 2"), tmp_path / "exact", "exact.yaml")
        esc = run(write_recipe, recipe_text(tgi.url, adaptive_block="  adaptive:\n    mode: esc\n    window: 2"), tmp_path / "esc", "esc.yaml")
    e, a = exact.summary.generation["adaptive"], esc.summary.generation["adaptive"]
    assert a["mode"] == "esc" and a["samples_drawn"] <= e["samples_drawn"]
    assert a["stopped"].get(adaptive.ESC_AGREED, 0) > 0
    kept_exact = set(kept_rows(read_split(tmp_path / "exact", "scored"))["id"].to_pylist())
    kept_esc = set(kept_rows(read_split(tmp_path / "esc", "scored"))["id"].to_pylist())
    assert len(kept_esc) == len(kept_exact)  # same budgets; which rows is what bench/adaptive.py measures


@pytest.mark.slow
def test_no_sound_bound_falls_back_to_k_samples_and_says_why(tmp_path, write_recipe):
    with TGITestServer() as tgi:
        text = recipe_text(tgi.url, metric="cocoa_ppl", adaptive_block="  adaptive: {}").replace("  metric: cocoa_ppl", "  metric: cocoa_ppl\n  similarity: rouge_l")
        result = run(write_recipe, text, tmp_path / "run", "fallback.yaml")
    summary = result.summary.generation["adaptive"]
    assert "rouge_l" in summary["fallback"] and summary["samples_drawn"] == summary["samples_fixed_k"]
    assert (np.array(read_split(tmp_path / "run", "scored")["n_samples"].to_pylist()) == 8).all()


@pytest.mark.slow
def test_interrupted_then_resumed_equals_uninterrupted_and_rescoring_replays(tmp_path, write_recipe):
    block = "  adaptive:\n    window: 1"
    with TGITestServer(latency=0.02) as tgi:
        whole = run(write_recipe, recipe_text(tgi.url, adaptive_block=block), tmp_path / "whole", "whole.yaml")
        path = write_recipe(recipe_text(tgi.url, adaptive_block=block).replace("generator:", "generator:\n  concurrency: 2"), name="cut.yaml")
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        process = subprocess.Popen([sys.executable, "-m", "curation.cli", "run", str(path), "-o", str(tmp_path / "cut")], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        journal = tmp_path / "cut" / "journal.sqlite"
        deadline = time.monotonic() + 60
        interrupted = False
        while time.monotonic() < deadline and process.poll() is None:
            if journal.exists():
                with Journal(journal) as j:
                    done = j.db.execute("SELECT count(*) FROM traces WHERE status='ok' AND sample_index > 0").fetchone()[0]
                if done >= 20:  # inside the sampling rounds
                    process.send_signal(signal.SIGINT)
                    interrupted = True
                    break
            time.sleep(0.05)
        output = process.communicate(timeout=60)[0].decode()
        assert interrupted and process.returncode != 0, output
        resumed = run(write_recipe, path.read_text(), tmp_path / "cut", "cut.yaml")
    assert resumed.generation.cached > 0
    assert nan_as_null(read_split(tmp_path / "whole", "scored")).equals(nan_as_null(read_split(tmp_path / "cut", "scored")))
    assert read_traces(tmp_path / "whole").sort_by([("id", "ascending"), ("sample_index", "ascending")]).equals(
        read_traces(tmp_path / "cut").sort_by([("id", "ascending"), ("sample_index", "ascending")])
    )
    assert resumed.summary.generation["adaptive"] == whole.summary.generation["adaptive"] | {"rounds": resumed.summary.generation["adaptive"]["rounds"]}
    # `curate score` replays the decisions from the journal: the same data without a server
    pipeline.rescore(tmp_path / "whole", show_progress=False)
    assert nan_as_null(read_split(tmp_path / "whole", "scored")).equals(nan_as_null(read_split(tmp_path / "cut", "scored")))


# --------------------------------------------------------------------------- property tests

LABELS = ["up", "down", "none"]


def _synthetic(seed: int, n: int, k: int):
    """Questions whose answer distributions range from certain to split, with confidence ties."""
    rng = np.random.default_rng(seed)
    questions = [Question(id=f"q{i:03d}", messages=[{"role": "user", "content": f"question {i}"}], columns={}) for i in range(n)]
    favoured = rng.integers(0, 3, n)
    certainty = rng.choice([1.0, 0.95, 0.8, 0.5, 0.34], n)
    logprob_levels = rng.choice([-0.05, -0.1, -0.2, -0.4], n)  # few levels: many confidence ties
    lengths = rng.integers(3, 8, n)
    answers = {}
    for i in range(n):
        probs = np.full(3, (1 - certainty[i]) / 2)
        probs[favoured[i]] = certainty[i]
        answers[i] = [LABELS[favoured[i]] if rng.random() < 0.9 else LABELS[rng.integers(0, 3)]] + [LABELS[j] for j in rng.choice(3, k, p=probs / probs.sum())]
        if rng.random() < 0.05:
            answers[i][rng.integers(1, k + 1)] = "???"  # an unparsed sample
    return questions, answers, logprob_levels, lengths


def _trace(request, text, level, length):
    return Trace(request.fingerprint, request.prompt_id, request.sample_index, f"<answer>{text}</answer>", [float(level)] * int(length), [[float(level), -3.0]] * int(length), "stop", "processed", request.seed)


@pytest.mark.parametrize("seed", range(12))
def test_property_exact_mode_equals_fixed_k_on_random_answer_distributions(tmp_path, seed):
    rng = np.random.default_rng(1000 + seed)
    metric = ["cocoa_ppl", "cocoa_msp", "cocoa_mte", "self_consistency", "perplexity", "semantic_consistency"][seed % 6]
    k = int(rng.integers(1, 9))
    select = {"strategy": "per_class", "fraction": float(rng.choice([0.05, 0.1, 0.3, 0.7]))} if seed % 4 else {"strategy": "global", "count": int(rng.integers(1, 20))}
    base = {
        "name": "property",
        "source": {"path": "unused.csv"},
        "prompt": {"user": "{{ q }}"},
        "generator": {"backend": "tgi", "url": "http://unused", "samples": k},
        "answer": {"labels": LABELS},
        "score": {"metric": metric},
        "select": select,
    }
    fixed_recipe = Recipe.model_validate(base)
    adaptive_recipe = Recipe.model_validate({**base, "generator": {**base["generator"], "adaptive": {"window": int(rng.integers(1, 4))}}})
    questions, answers, levels, lengths = _synthetic(seed, 80, k)
    requests = plan_requests(questions, fixed_recipe.generator, planning_identity(model="synthetic", params={"backend": "tgi"}))
    index_of = {q.id: i for i, q in enumerate(questions)}
    traces = {
        r.fingerprint: _trace(r, answers[index_of[r.prompt_id]][0 if r.sample_index == REFERENCE_INDEX else r.sample_index], levels[index_of[r.prompt_id]], lengths[index_of[r.prompt_id]])
        for r in requests
    }
    fixed = pipeline.curate(fixed_recipe, questions, requests, traces, {}, {}, tmp_path / "fixed", recipe_yaml="", show_progress=False)

    asked: list[str] = []
    with Journal(tmp_path / "journal.sqlite") as journal:

        def generate(batch):
            asked.extend(r.fingerprint for r in batch)
            journal.commit([traces[r.fingerprint] for r in batch])
            from curation.generate import GenerationStats

            return GenerationStats(requested=len(batch), generated=len(batch))

        outcome = adaptive.sample(adaptive_recipe, questions, requests, journal, {"backend": "tgi"}, generate)
        granted = journal.load(r.fingerprint for r in outcome.requests)
        replayed = adaptive.sample(adaptive_recipe, questions, requests, journal, {"backend": "tgi"}, None)
    assert len(asked) == len(set(asked))  # nothing asked for twice
    assert [r.fingerprint for r in replayed.requests] == [r.fingerprint for r in outcome.requests] and replayed.selection_keys == outcome.selection_keys
    adapt = pipeline.curate(adaptive_recipe, questions, outcome.requests, granted, {}, {}, tmp_path / "adaptive", recipe_yaml="", show_progress=False, adaptive=outcome)
    assert fixed.kept == adapt.kept and fixed.per_class_after == adapt.per_class_after
    fixed_table, adapt_table = kept_rows(read_split(tmp_path / "fixed", "scored")), kept_rows(read_split(tmp_path / "adaptive", "scored"))
    assert fixed_table.equals(adapt_table)
    assert outcome.summary()["samples_drawn"] <= k * len(questions)


def test_sharded_runs_refuse_adaptive_sampling(tmp_path, write_recipe):
    from curation import shards

    path = write_recipe(recipe_text("http://127.0.0.1:9", adaptive_block="  adaptive: {}"), name="sharded.yaml")
    with pytest.raises(shards.ShardError, match="generator.adaptive cannot run sharded"):
        shards.run_shard(load_recipe(str(path)), tmp_path / "run", shards.Shard.parse("0/2"), show_progress=False)
    assert not (tmp_path / "run" / "shards").exists()


# ----------------------------------------------------------------------------- planning a round, without a journal
def test_plan_round_is_pure_and_proves_questions_out_by_their_bounds():
    from collections import Counter

    from curation.adaptive import SamplingState, Status, plan_round
    from curation.score import METRICS

    k, window = 4, 2
    confidence = np.array([0.1, 0.2, 0.3, 0.9, 5.0])  # cocoa_ppl's factor: the reference's perplexity
    ids = np.array(["a", "b", "c", "d", "e"])
    state = SamplingState.start(np.array([True, True, True, True, False]))
    # a: 2 samples, both disagree (best case 0.1 * 2/4 = 0.05); d: 2 samples, both agree (worst case 0.9 * 2/4 = 0.45)
    state.record(0, ["down", "down"], "up", 2)
    state.record(3, ["up", "up"], "up", 2)
    before = (state.status.copy(), state.drawn.copy(), state.agree.copy())
    groups = {"up": np.array([0, 1, 2, 3])}
    plan = plan_round(state, groups, {"up": 1}, METRICS["cocoa_ppl"].bound, confidence, confidence, ids, k, window, False)
    assert (state.status == before[0]).all() and (state.drawn == before[1]).all() and (state.agree == before[2]).all()
    # budget 1: the best cases are b 0, c 0, d 0 (the rest may all agree) and a 0.05; no upper bound is
    # below anyone's best case yet, so nothing is out
    assert plan.pruned == []
    assert [i for _, i, _ in plan.grants] == [1]  # one question at budget 1: the best lower bound, b (ties broken by confidence)
    assert plan.grants[0][2] == window  # others could still be ahead of its worst case: one window
    # once b has all K samples agreeing its value is exactly 0: a's best case (0.05) is behind it, and so are
    # c's and d's best cases (0, tied, but ranked after b by their confidence tie-break)
    state.record(1, ["up"] * 4, "up", 4)
    state.status[1] = Status.FULL
    plan = plan_round(state, groups, {"up": 1}, METRICS["cocoa_ppl"].bound, confidence, confidence, ids, k, window, False)
    assert set(plan.pruned) == {0, 2, 3} and plan.grants == []
    assert Status.OUT == state.status[4] and all(i != 4 for _, i, _ in plan.grants)
    assert isinstance(state.counts[1], Counter) and state.counts[1]["up"] == 4


def test_every_metric_declares_its_bound_in_the_registry():
    from curation.score import METRICS

    bounded = {name for name, m in METRICS.items() if m.bound is not None}
    assert {"msp", "perplexity", "mean_token_entropy", "self_consistency", "semantic_consistency", "cocoa_msp", "cocoa_ppl", "cocoa_mte"} <= bounded
    assert METRICS["critic"].bound is None
