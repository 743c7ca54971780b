"""Adaptive `mode: deepconf`: streaming traces cut on their window confidence (curation.deepconf).

The cut happens in the backend while TGI streams (the TGI protocol test server counts what it
sent and sees the client leave), is decided by the same arithmetic as the replay from the
journal, and the run's decisions are a function of the journal: a rerun, a rescoring, or a run
over a journal filled by fixed K decide the same.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import replace

import numpy as np
import pyarrow as pa
import pytest
from pydantic import ValidationError

from curation import pipeline
from curation.backends.tgi import TGIBackend
from curation.deepconf import EARLY_STOP, EarlyStop, WindowConfidence, cut_at, lowest_group_confidence, token_confidence, warmup_threshold
from curation.recipe.sections import AdaptiveConfig, GeneratorConfig
from tests.builders.adaptive_run import kept_rows, nan_as_null, read_split, read_traces, recipe_text, run
from tests.builders.tgi_run import QUESTIONS, config_for, generate
from tests.servers.tgi_server import TGITestServer

DEEPCONF = "  adaptive:\n    mode: deepconf\n    window: 2\n    warmup: 16\n    confidence_window: 8\n    keep_top: 0.7"


# --------------------------------------------------------------------------- the arithmetic
def test_token_and_window_confidence_follow_deepconf():
    assert token_confidence([-0.1, -3.0, -5.9]) == pytest.approx(3.0)
    assert np.isnan(token_confidence([]))
    running = WindowConfidence(window=2, threshold=2.0)
    assert running.push([-3.0]) is False  # the window is not full yet: never cut
    assert running.push([-2.0]) is False  # mean 2.5
    assert running.push([-1.0]) is True  # mean 1.5 < 2.0
    assert running.lowest_group_confidence() == pytest.approx(1.5)
    # a trace shorter than the window: its lowest group confidence is its mean
    assert lowest_group_confidence([[-1.0], [-2.0]], window=8) == pytest.approx(1.5)
    # cut_at: where the online run would stop; a fall at the very last token cuts nothing
    rows = [[-3.0], [-2.0], [-1.0], [-1.0]]
    assert cut_at(rows, EarlyStop(2.0, 2)) == 3
    assert cut_at(rows[:3], EarlyStop(2.0, 2)) is None
    assert cut_at(rows, EarlyStop(0.5, 2)) is None
    # the threshold: the (1 - keep_top) quantile of the warm-up traces' lowest window confidence
    assert warmup_threshold([1.0, 2.0, 3.0, 4.0, 5.0, float("nan")], keep_top=0.75) == pytest.approx(2.0)
    assert warmup_threshold([], keep_top=0.9) == float("-inf")


def test_recipe_validation_of_deepconf():
    with pytest.raises(ValidationError, match="only apply to mode: deepconf"):
        AdaptiveConfig(mode="exact", warmup=4)
    with pytest.raises(ValidationError, match="needs backend tgi or openai"):
        GeneratorConfig(backend="local", adaptive={"mode": "deepconf"})
    with pytest.raises(ValidationError, match="top_logprobs >= 1"):
        GeneratorConfig(backend="tgi", url="http://x", top_logprobs=0, adaptive={"mode": "deepconf"})
    assert GeneratorConfig(backend="tgi", url="http://x", adaptive={"mode": "deepconf"}).adaptive.keep_top == 0.9
    # the run folder's recipe.yaml is a full dump that resume and `curate score` validate again
    for mode in ("exact", "esc", "deepconf"):
        config = GeneratorConfig(backend="tgi", url="http://x", adaptive={"mode": mode, "window": 1})
        assert GeneratorConfig.model_validate(config.model_dump(mode="json")) == config


# --------------------------------------------------------------------------- the TGI stream cut
def test_tgi_stream_is_cut_where_the_replay_says_and_the_server_stops(tmp_path):
    with TGITestServer(token_latency=0.004) as tgi:
        config = config_for(tgi.url, samples=2, max_new_tokens=96, stop=[], chat_template="chatml")  # no stop string: longer traces
        backend, requests, _, traces, failures = generate(config, QUESTIONS[:2], tmp_path=tmp_path)
        assert not failures
        sampled = [r for r in requests if not r.is_reference]
        full = [traces[r.fingerprint] for r in sampled]
        # a threshold that cuts each trace mid-way: the mean of its window confidences
        window = 4
        cuts = []
        for trace in full:
            rows = trace.top_logprobs
            means = [np.mean([token_confidence(r) for r in rows[i - window : i]]) for i in range(window, len(rows) + 1)]
            stop = EarlyStop(threshold=float(np.median(means)) + 1e-9, window=window)
            cuts.append((stop, cut_at(rows, stop)))
        assert all(c is not None and c < len(t.token_logprobs) for (_, c), t in zip(cuts, full))
        tgi.reset_counters()
        backend = TGIBackend(config)

        async def stream_all():
            try:
                return [(await backend.generate([replace(r, early_stop=stop)]))[0] for r, (stop, _) in zip(sampled, cuts)]
            finally:
                await backend.aclose()

        online = asyncio.run(stream_all())
        deadline = time.monotonic() + 5
        while tgi.streams_cancelled < len(online) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert tgi.requests_by_route["/generate_stream"] == len(online) and not tgi.invalid_requests
        assert tgi.streams_cancelled == len(online)
        for trace, whole, (stop, at) in zip(online, full, cuts):
            assert trace.finish_reason == EARLY_STOP and trace.usage["early_stop"] == stop.to_json()
            assert len(trace.token_logprobs) == at  # online == replay, token for token
            assert trace.token_logprobs == whole.token_logprobs[:at] and trace.top_logprobs == whole.top_logprobs[:at]
            assert trace.token_ids == whole.token_ids[:at] and whole.text.startswith(trace.text)
            assert trace.fingerprint == whole.fingerprint and trace.seed == whole.seed
        # the server stopped sending soon after each cut (a few events may be in flight)
        assert tgi.generated_tokens < sum(len(t.token_logprobs) for t in full)
        assert tgi.generated_tokens <= sum(at + 8 for _, at in cuts)


def test_tgi_stream_without_a_cut_equals_generate(tmp_path):
    with TGITestServer() as tgi:
        config = config_for(tgi.url, samples=2, chat_template="chatml")
        _, requests, _, traces, _ = generate(config, QUESTIONS[:2], tmp_path=tmp_path)
        backend = TGIBackend(config)
        never = EarlyStop(threshold=float("-inf"), window=4)

        async def stream_all():
            try:
                return [(await backend.generate([replace(r, early_stop=never)]))[0] for r in requests if not r.is_reference]
            finally:
                await backend.aclose()

        online = asyncio.run(stream_all())
    for trace in online:
        whole = traces[trace.fingerprint]
        assert (trace.text, trace.token_logprobs, trace.top_logprobs, trace.token_ids, trace.finish_reason, trace.seed) == (
            whole.text, whole.token_logprobs, whole.top_logprobs, whole.token_ids, whole.finish_reason, whole.seed
        )


# --------------------------------------------------------------------------- whole runs
def _cut_traces(run_dir):
    traces = read_traces(run_dir)
    return traces.filter(pa.compute.equal(traces["finish_reason"], EARLY_STOP))


@pytest.mark.slow
def test_deepconf_run_cuts_streams_records_them_and_replays_the_same(tmp_path, write_recipe):
    text = lambda url: recipe_text(url, adaptive_block=DEEPCONF, limit=60).replace("max_new_tokens: 48", "max_new_tokens: 96")  # noqa: E731
    with TGITestServer(hedge_rate=0.3, token_latency=0.001) as tgi:
        result = run(write_recipe, text(tgi.url), tmp_path / "deepconf", "deepconf.yaml")
        assert not tgi.invalid_requests and tgi.streams_cancelled > 0
        summary = result.summary.generation["adaptive"]
        early = summary["early_stop"]
        assert summary["mode"] == "deepconf" and summary["fallback"] is None
        assert early["threshold"] is not None and early["warmup_traces"] >= 16 and early["window"] == 8 and early["cut"] > 0
        cut = _cut_traces(tmp_path / "deepconf")
        assert cut.num_rows == early["cut"] and not any(cut["is_reference"].to_pylist())
        # every cut trace ends at the first token whose full window fell below the threshold
        for rows in cut["top_logprobs"].to_pylist():
            running = WindowConfidence(early["window"], early["threshold"])
            decisions = [running.push(row) for row in rows]
            assert decisions[-1] and not any(decisions[:-1])
        # a cut trace is not one of its question's samples
        scored = read_split(tmp_path / "deepconf", "scored")
        traces = read_traces(tmp_path / "deepconf")
        complete = traces.filter(pa.compute.and_(pa.compute.invert(traces["is_reference"]), pa.compute.not_equal(traces["finish_reason"], EARLY_STOP)))
        assert int(np.sum(scored["n_samples"].to_pylist())) == complete.num_rows
        assert summary["samples_drawn"] == complete.num_rows + cut.num_rows
        # the parse stage drops them as early_stop, not as unreadable answers
        parse_stage = json.loads((tmp_path / "deepconf" / "stats.json").read_text())["stages"]["parse"]
        assert parse_stage["dropped"]["early_stop"] == cut.num_rows
        assert parse_stage["rows_out"] == traces.num_rows - cut.num_rows - parse_stage["dropped"].get("unparsed_answer", 0)
        kept = kept_rows(scored)
        assert kept.num_rows == result.summary.kept > 0
        card = (tmp_path / "deepconf" / "README.md").read_text(encoding="utf-8")
        assert "deepconf" in card

        # a rerun asks for nothing and decides the same; so does `curate score`
        generations = lambda: tgi.requests_by_route["/generate"] + tgi.requests_by_route["/generate_stream"]  # noqa: E731
        before = generations()
        again = run(write_recipe, text(tgi.url), tmp_path / "deepconf", "deepconf.yaml")
        assert generations() == before and again.summary.generation["adaptive"]["early_stop"] == early
        assert nan_as_null(read_split(tmp_path / "deepconf", "scored")).equals(nan_as_null(scored))
        pipeline.rescore(tmp_path / "deepconf", show_progress=False)
        assert nan_as_null(read_split(tmp_path / "deepconf", "scored")).equals(nan_as_null(scored))

        # over a journal filled by fixed K (whole traces), the replay cuts the same traces itself:
        # the same threshold, the same samples left out, the same scores and kept set
        fixed_text = recipe_text(tgi.url, limit=60).replace("max_new_tokens: 48", "max_new_tokens: 96")
        run(write_recipe, fixed_text, tmp_path / "shared", "fixed.yaml")
        requests_after_fixed = generations()
        replayed = run(write_recipe, text(tgi.url), tmp_path / "shared", "deepconf-shared.yaml")
        assert generations() == requests_after_fixed  # every trace it needed was already there
        assert replayed.summary.generation["adaptive"]["early_stop"] == early
        assert nan_as_null(read_split(tmp_path / "shared", "scored")).equals(nan_as_null(scored))
