"""The scorer: teacher-forced token logprobs (curation.scorer), journaled by scorer identity, serving the token metrics."""

from __future__ import annotations

import numpy as np
import pytest

from curation.generate import plan_requests, run_generation
from curation.journal import Journal, fingerprint_grid
from curation.recipe.sections import GeneratorConfig, ScorerConfig
from curation.scorer import LocalScorer, ScoreRequest, hashable_messages, run_scorer, score_text
from curation.types import Question

QUESTIONS = [
    Question(id=f"q{i}", messages=[{"role": "user", "content": text}], columns={})
    for i, text in enumerate(["Is a dolphin a mammal, bird or fish? Answer in one word.", "Which continent is Peru in?", "Say something about cats."])
]


class _Recipe:
    """The two sections run_scorer reads."""

    def __init__(self, generator, scorer):
        self.generator, self.scorer = generator, scorer


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    """The embedded model's own raw-sampled traces (reference + 3 samples per question), in a journal."""
    from curation.backends.local import LocalBackend

    folder = tmp_path_factory.mktemp("scorer")
    config = GeneratorConfig(samples=3, max_new_tokens=24, temperature=1.0, top_logprobs=5, seed=3)
    backend = LocalBackend(config)
    requests = plan_requests(QUESTIONS, config, backend)
    journal_path = folder / "journal.sqlite"
    with Journal(journal_path) as journal:
        stats = run_generation(requests, backend, journal, show_progress=False)
        traces = journal.load(r.fingerprint for r in requests)
    assert stats.failed == 0
    grid = fingerprint_grid(requests, [q.id for q in QUESTIONS], config.samples)
    return config, journal_path, grid, traces


@pytest.mark.slow
def test_teacher_forcing_reproduces_the_generators_own_logprobs(local_run):
    """Correctness: the local model reading its own raw-sampled traces gives the logprobs it recorded while
    generating them, within 1e-4 per token (and the same top-k)."""
    config, journal_path, grid, traces = local_run
    outcome = run_scorer(_Recipe(config, ScorerConfig(top_logprobs=5)), QUESTIONS, grid, journal_path, show_progress=False)
    assert outcome.stats["scored"] == 12 and outcome.stats["failed"] == 0
    with Journal(journal_path) as journal:
        forced = journal.scorer_view(outcome.key).load(traces)
    worst = 0.0
    for fp, trace in traces.items():
        got = forced[fp]
        assert got.token_ids == trace.token_ids and len(got.token_logprobs) == len(trace.token_logprobs) > 0
        worst = max(worst, float(np.max(np.abs(np.array(got.token_logprobs) - np.array(trace.token_logprobs)))))
        assert np.allclose(np.array(got.top_logprobs), np.array(trace.top_logprobs), atol=1e-4)
    assert worst < 1e-4, worst
    # resumed: nothing is scored twice
    again = run_scorer(_Recipe(config, ScorerConfig(top_logprobs=5)), QUESTIONS, grid, journal_path, show_progress=False)
    assert again.key == outcome.key and again.stats["scored"] == 0 and again.stats["cached"] == 12
    # another scorer identity (top-k differs) re-scores beside it, without regenerating
    other = run_scorer(_Recipe(config, ScorerConfig(top_logprobs=2, traces="reference")), QUESTIONS, grid, journal_path, show_progress=False)
    assert other.key != outcome.key and other.stats["scored"] == 3


@pytest.mark.slow
def test_the_text_route_matches_where_the_text_tokenizes_as_sampled(local_run):
    """Imported traces have only text: re-tokenized (plus the end-of-turn token), the same logprobs wherever
    the tokenizer splits the text as the sampler did."""
    config, _, _, traces = local_run
    scorer = LocalScorer(ScorerConfig(top_logprobs=5))
    matched = 0
    for trace in traces.values():
        question = next(q for q in QUESTIONS if q.id == trace.prompt_id)
        forced = score_text(scorer, question.messages, trace.text, ends_with_eos=trace.finish_reason == "stop")
        if forced.token_ids != trace.token_ids:
            continue  # a non-canonical split (or decode-time normalisation) of the sampled tokens
        matched += 1
        assert np.max(np.abs(np.array(forced.token_logprobs) - np.array(trace.token_logprobs))) < 1e-4
        assert "".join(forced.tokens)  # token strings for the span rules of reasoning teachers
    assert matched >= len(traces) // 2, matched


@pytest.mark.slow
def test_reasoning_is_read_inside_think_tags():
    from curation.reasoning import capture

    scorer = LocalScorer(ScorerConfig(top_logprobs=0))
    messages = [{"role": "user", "content": "Which continent is Peru in?"}]
    with_reasoning = score_text(scorer, messages, "South America", reasoning="Peru borders Brazil.")
    # as the Qwen3 and R1 chat templates render an assistant turn's reasoning_content
    plain = score_text(scorer, messages, "<think>\nPeru borders Brazil.\n</think>\n\nSouth America")
    assert with_reasoning.token_ids == plain.token_ids and with_reasoning.token_logprobs == plain.token_logprobs
    assert with_reasoning.top_logprobs == []
    # the answer span is found in the scorer's own tokens, which are text as servers give them
    span = capture("South America", "Peru borders Brazil.", with_reasoning.tokens)
    assert span.alignment == "ok" and "".join(with_reasoning.tokens[span.answer_start :]).strip().startswith("South America")


def test_score_request_carries_the_runner_interface():
    request = ScoreRequest("fp", "q0", 0, hashable_messages([{"role": "user", "content": "hi"}]), "text", None)
    assert request.is_reference and request.chat == [{"role": "user", "content": "hi"}] and request.early_stop is None


MESSAGES = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Which continent is Peru in?"}]
TEXTS = [
    ("South America", None, True),
    ("<answer>South America</answer>", "Peru borders Brazil and Chile, so it is in South America.", True),
    ("Peru is a country in", None, False),  # cut at max_new_tokens: no end-of-turn token
]


@pytest.fixture(scope="module")
def local_scorer():
    return LocalScorer(ScorerConfig(top_logprobs=4))


def _tgi_spec():
    from tests.servers.tgi_server import OpenAPISpec, find_openapi_spec

    try:
        return OpenAPISpec(find_openapi_spec(), strict_fields=True)
    except FileNotFoundError:
        return None


@pytest.mark.slow
@pytest.mark.parametrize("flavour", ["vllm", "tgi"])
def test_http_routes_agree_with_the_local_route(flavour, local_scorer):
    """vLLM's prompt_logprobs and TGI's decoder_input_details, served over the same model, give the local
    route's tokens and logprobs (top-k too on vLLM; TGI's prefill has none)."""
    from curation.scorer import make_scorer
    from tests.servers.forcing_server import ForcingServer

    server = ForcingServer(flavour, spec=_tgi_spec() if flavour == "tgi" else None)
    backend = "openai" if flavour == "vllm" else "tgi"
    route = make_scorer(ScorerConfig(backend=backend, url="http://scorer.test", model="smollm2-135m-instruct" if flavour == "vllm" else "embedded", top_logprobs=4), transport=server.transport)
    for text, reasoning, ends in TEXTS:
        local = score_text(local_scorer, MESSAGES, text, reasoning, ends_with_eos=ends)
        remote = score_text(route, MESSAGES, text, reasoning, ends_with_eos=ends)
        assert remote.token_ids == local.token_ids, (text, remote.tokens, local.tokens)
        assert remote.prompt_tokens == local.prompt_tokens
        assert np.max(np.abs(np.array(remote.token_logprobs) - np.array(local.token_logprobs))) < 1e-4
        if flavour == "vllm":
            assert np.allclose(np.array(remote.top_logprobs), np.array(local.top_logprobs), atol=1e-4)
        else:
            assert remote.top_logprobs == []
        assert (local.token_ids[-1] == 2) == ends  # <|im_end|> closes a trace that ended by itself
    assert not server.invalid_requests


@pytest.mark.slow
def test_the_vllm_route_runs_through_the_runner_and_journal(local_run, local_scorer):
    """The runner drives the HTTP route like a generator; the journaled tokens equal the local route's."""
    import curation.scorer as module
    from tests.servers.forcing_server import ForcingServer

    config, journal_path, grid, traces = local_run
    server = ForcingServer("vllm")
    original = module.make_scorer
    scorer_config = ScorerConfig(backend="openai", url="http://scorer.test", model="smollm2-135m-instruct", top_logprobs=4, traces="reference")
    module.make_scorer = lambda c, transport=None: original(c, transport=server.transport)
    try:
        outcome = run_scorer(_Recipe(config, scorer_config), QUESTIONS, grid, journal_path, show_progress=False)
    finally:
        module.make_scorer = original
    assert outcome.stats["scored"] == 3 and outcome.stats["failed"] == 0
    with Journal(journal_path) as journal:
        forced = journal.scorer_view(outcome.key).load(row[0] for row in grid)
    for fp, trace in forced.items():
        question = next(q for q in QUESTIONS if q.id == trace.prompt_id)
        original_trace = traces[fp]
        # the route tokenized the text (its model identity is the server's, not the generator's)
        local = score_text(local_scorer, question.messages, original_trace.text, ends_with_eos=original_trace.finish_reason == "stop")
        assert trace.token_ids == local.token_ids
        assert np.max(np.abs(np.array(trace.token_logprobs) - np.array(local.token_logprobs))) < 1e-4
