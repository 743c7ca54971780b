"""Teachers without logprobs: a hosted chat API that refuses what OpenAI's reasoning models refuse
(tests/servers/hosted_chat_server.py), driven through the `openai` backend, the runner and the critic."""

from __future__ import annotations

import datasets
import pytest

from curation import pipeline
from curation.backends.openai import OpenAIBackend
from curation.generate import RetryPolicy, plan_requests, run_generation
from curation.journal import Journal
from curation.recipe.load import load_recipe
from curation.recipe.sections import GeneratorConfig
from curation.types import Question, RecipeError, RequestRejected
from tests.servers.hosted_chat_server import HostedReasoningChatServer

QUESTIONS = [Question(id=f"q{i}", messages=[{"role": "user", "content": f"What happens to gene {i}?"}], columns={}) for i in range(3)]
FAST = RetryPolicy(max_retries=2, backoff=0.01)
REASONING = dict(logprobs=False, max_tokens_param="max_completion_tokens", send_sampling=False, reasoning_effort="low")


def config_for(**overrides) -> GeneratorConfig:
    settings = dict(backend="openai", url="https://api.openai.test/v1", model="o4-mini", samples=3, max_new_tokens=32, top_logprobs=3)
    settings.update(overrides)
    return GeneratorConfig(**settings)


def generate(server, config, tmp_path):
    backend = OpenAIBackend(config, transport=server.transport)
    requests = plan_requests(QUESTIONS, config, backend)
    with Journal(tmp_path / "journal.sqlite") as journal:
        stats = run_generation(requests, backend, journal, show_progress=False, policy=FAST)
        traces = journal.load(r.fingerprint for r in requests)
    return requests, stats, traces


@pytest.mark.parametrize(
    "settings, param, code, server_words, recipe_key",
    [
        ({}, "max_tokens", "unsupported_parameter", "Use 'max_completion_tokens' instead.", "generator.max_tokens_param: max_completion_tokens"),
        ({"max_tokens_param": "max_completion_tokens"}, "logprobs", "unsupported_parameter", "'logprobs' is not supported with this model", "generator.logprobs: false"),
        ({"max_tokens_param": "max_completion_tokens", "logprobs": False}, "temperature", "unsupported_value", "does not support 0 with this model", "generator.send_sampling: false"),
    ],
)
def test_a_refused_parameter_stops_the_run_with_the_servers_words_and_the_key_to_change(tmp_path, settings, param, code, server_words, recipe_key):
    server = HostedReasoningChatServer()
    with pytest.raises(RequestRejected) as caught:
        generate(server, config_for(**settings), tmp_path)
    message = str(caught.value)
    assert server_words in message and recipe_key in message and code in message
    assert server.refused[0] == {"param": param, "code": code}
    # it stopped instead of failing every request alike: at most one request per worker got through
    assert len(server.refused) <= len(QUESTIONS) * 2


def test_generation_without_logprobs_speaks_the_reasoning_api(tmp_path):
    server = HostedReasoningChatServer()
    requests, stats, traces = generate(server, config_for(**REASONING), tmp_path)
    assert stats.failed == 0 and stats.generated == len(requests) == 12 and not server.refused and not server.invalid_requests
    bodies = [r["body"] for r in server.generation_requests]
    for body in bodies:
        assert body["max_completion_tokens"] == 32 and body["reasoning_effort"] == "low"
        assert not {"max_tokens", "temperature", "top_p", "logprobs", "top_logprobs"} & set(body)
    for trace in traces.values():
        assert trace.text and trace.token_logprobs == [] and trace.top_logprobs == [] and trace.logprob_kind == "none"
        if trace.is_reference:  # one choice: the server's count (reasoning included), there being no logprobs to count
            assert trace.usage["completion_tokens"] > 0


def test_a_server_without_logprobs_when_they_were_asked_for(tmp_path):
    """A server that takes `logprobs` but returns none (most hosted APIs): the run stops and says which key to change."""
    server = HostedReasoningChatServer()
    config = config_for(max_tokens_param="max_completion_tokens", send_sampling=False)
    backend = OpenAIBackend(config, transport=server.transport)
    server.refusal = lambda body: None  # accept everything, answer without logprobs
    requests = plan_requests(QUESTIONS, config, backend)
    with Journal(tmp_path / "j.sqlite") as journal, pytest.raises(RequestRejected, match="generator.logprobs: false"):
        run_generation(requests, backend, journal, show_progress=False, policy=FAST)


def test_request_shape_is_in_the_fingerprint_only_when_it_differs():
    server = HostedReasoningChatServer()
    plain = OpenAIBackend(config_for(), transport=server.transport)
    reasoning = OpenAIBackend(config_for(**REASONING), transport=server.transport)
    assert "request" not in plain.fingerprint_params(plain.config)  # old journals keep their fingerprints
    assert reasoning.fingerprint_params(reasoning.config)["request"] == REASONING


RECIPE = """
name: hosted
source: {path: SAMPLE_CSV, limit: 6, shuffle_seed: 1, label_column: label}
prompt: {user: "{{ pert }} knocked down in {{ cell_line }}: what happens to {{ gene }}?"}
generator: {backend: openai, url: "https://api.openai.test/v1", model: o4-mini, samples: 3, max_new_tokens: 24,
  logprobs: false, max_tokens_param: max_completion_tokens, send_sampling: false}
answer: {tag: answer, labels: [upregulated, downregulated, not differentially expressed]}
score: {metric: METRIC}
select: {strategy: per_class, fraction: 0.5}
"""


def test_validate_says_a_token_metric_needs_a_scorer(write_recipe):
    recipe = write_recipe(RECIPE.replace("METRIC", "cocoa_ppl"))
    with pytest.raises(RecipeError) as caught:
        load_recipe(str(recipe))
    text = str(caught.value)
    line = next(i for i, row in enumerate(recipe.read_text().splitlines(), 1) if "metric:" in row)
    assert f"{recipe}:{line}:" in text and "score.metric: metric 'cocoa_ppl' needs token logprobs" in text
    assert "scorer:" in text and "self_consistency" in text
    load_recipe(str(recipe).replace("x", "x"), overrides=["score.metric=self_consistency"])  # a consistency metric is fine


def test_whole_run_and_critic_against_a_reasoning_model(tmp_path, write_recipe, monkeypatch):
    """Generator and critic both o4-mini-like: no logprobs, no temperature, max_completion_tokens; the run keeps what the judge grades well."""
    def reply(body):
        prompt = body["messages"][-1]["content"]
        return "<reasoning>ok</reasoning><evaluation>good</evaluation>" if prompt.startswith("Judge") else None

    server = HostedReasoningChatServer(reply=reply)
    import curation.backends.openai as module

    original = module.OpenAIBackend.__init__
    monkeypatch.setattr(module.OpenAIBackend, "__init__", lambda self, config, transport=None: original(self, config, transport=server.transport))
    text = RECIPE.replace("METRIC", "self_consistency") + """
critic: {backend: openai, url: "https://api.openai.test/v1", model: o4-mini, scale: words, min_grade: 4, reasoning_only: true,
  prompt: "Judge this reasoning: {{ trace }}", logprobs: false, max_tokens_param: max_completion_tokens, send_sampling: false}
"""
    result = pipeline.run(load_recipe(str(write_recipe(text))), tmp_path / "run", show_progress=False)
    assert result.generation.failed == 0 and not server.refused and not server.invalid_requests
    judge_bodies = [r["body"] for r in server.generation_requests if r["body"]["messages"][-1]["content"].startswith("Judge")]
    assert judge_bodies and all("temperature" not in b and "max_completion_tokens" in b and "logprobs" not in b for b in judge_bodies)
    scored = datasets.load_dataset(str(tmp_path / "run"), split="scored", cache_dir=str(tmp_path / "hf"))
    assert set(scored["critic"]) <= {4.0, None} and scored.num_rows == 6
    assert "self_consistency" in result.summary.metrics_computed and "perplexity" not in result.summary.metrics_computed


@pytest.mark.slow
def test_a_teacher_without_logprobs_scored_by_the_local_model(tmp_path, write_recipe, monkeypatch):
    """o4-mini-like teacher, SmolLM2 scorer: token metrics exist, the card says which model scored, and
    `curate score` reuses the scorer's journaled logprobs without a backend."""
    server = HostedReasoningChatServer()
    import curation.backends.openai as module

    original = module.OpenAIBackend.__init__
    monkeypatch.setattr(module.OpenAIBackend, "__init__", lambda self, config, transport=None: original(self, config, transport=server.transport))
    text = RECIPE.replace("METRIC", "cocoa_ppl").replace("limit: 6", "limit: 3") + "scorer: {backend: local, top_logprobs: 3}\n"
    result = pipeline.run(load_recipe(str(write_recipe(text))), tmp_path / "run", show_progress=False)
    assert {"perplexity", "cocoa_ppl", "mean_token_entropy"} <= set(result.summary.metrics_computed)
    assert result.summary.stages["scorer"]["rows_in"] == 12 and result.summary.stages["scorer"]["dropped"] == {}
    card = (tmp_path / "run" / "README.md").read_text()
    assert "teacher-forced" in card and "SmolLM2-135M-Instruct" in card
    scored = datasets.load_dataset(str(tmp_path / "run"), split="scored", cache_dir=str(tmp_path / "hf"))
    assert all(value is not None and value > 0 for value in scored["perplexity"])
    again = pipeline.rescore(tmp_path / "run", show_progress=False)
    assert again.metrics_computed == result.summary.metrics_computed
    rescored = datasets.load_dataset(str(tmp_path / "run"), split="scored", cache_dir=str(tmp_path / "hf2"))
    assert rescored["perplexity"] == scored["perplexity"]


def test_dry_run_adds_the_scorer_and_the_bill(tmp_path):
    from pathlib import Path

    from curation.dry_run import describe, make_plan

    csv = Path(__file__).resolve().parents[2] / "recipes" / "data" / "m49-continents.csv"
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"""
name: bill
source: {{path: {csv}, limit: 10}}
prompt: {{user: "Which continent is {{{{ country }}}} in?"}}
generator: {{backend: openai, url: "https://api.openai.test/v1", model: o4-mini, samples: 4, max_new_tokens: 1000,
  logprobs: false, max_tokens_param: max_completion_tokens, send_sampling: false}}
scorer: {{backend: local, traces: reference}}
cost: {{generator: {{input: 1.0, output: 4.0}}, scorer: {{input: 0.1, output: 0}}}}
answer: {{labels: [Africa, Americas, Asia, Europe, Oceania]}}
select: {{fraction: 0.5}}
""")
    plan = make_plan(load_recipe(str(recipe)), tmp_path / "run")
    assert plan.traces_to_generate == 50 and plan.scorer_traces == 10
    text = describe(plan, tmp_path / "run")
    out_cost = 50 * 1000 * 4.0 / 1e6
    in_cost = 50 * plan.prompt_tokens_per_trace * 1.0 / 1e6
    assert f"= {in_cost + out_cost:,.2f}" in text and "scorer (local model embedded): 10 traces" in text
    assert f"{plan.scorer_tokens:,.0f} in x 0.1" in text and "total: about" in text


def test_adaptive_sampling_cannot_rank_by_a_scorers_logprobs(write_recipe):
    text = RECIPE.replace("METRIC", "cocoa_ppl") + "scorer: {backend: local}\n"
    text = text.replace("send_sampling: false}", "send_sampling: false, adaptive: {mode: exact}}")
    with pytest.raises(RecipeError, match="generator.adaptive: adaptive sampling ranks by the generator's own logprobs"):
        load_recipe(str(write_recipe(text)))
    load_recipe(str(write_recipe(text.replace("cocoa_ppl", "self_consistency"))))


@pytest.mark.slow
def test_cross_model_perplexity_replaces_the_generators_logprobs(tmp_path, write_recipe, monkeypatch):
    """A teacher that gives logprobs, scored under another model: the token metrics are the scorer's."""
    from tests.servers.openai_server import FakeOpenAIServer

    server = FakeOpenAIServer(owned_by="vllm")
    import curation.backends.openai as module

    original = module.OpenAIBackend.__init__
    monkeypatch.setattr(module.OpenAIBackend, "__init__", lambda self, config, transport=None: original(self, config, transport=server.transport))
    text = """
name: cross
source: {path: SAMPLE_CSV, limit: 3, shuffle_seed: 1, label_column: label}
prompt: {user: "{{ pert }} knocked down in {{ cell_line }}: what happens to {{ gene }}?"}
generator: {backend: openai, url: "http://fake.test", model: fake-org/fake-model, samples: 2, max_new_tokens: 24}
answer: {tag: answer, labels: [upregulated, downregulated, not differentially expressed]}
score: {metric: perplexity}
select: {strategy: per_class, fraction: 0.5}
"""
    plain = pipeline.run(load_recipe(str(write_recipe(text, "plain.yaml"))), tmp_path / "plain", show_progress=False)
    crossed = pipeline.run(load_recipe(str(write_recipe(text.replace("name: cross", "name: cross2") + "scorer: {backend: local, traces: reference}\n", "cross.yaml"))), tmp_path / "cross", show_progress=False)
    assert crossed.summary.stages["scorer"]["rows_in"] == 3  # references only
    a = datasets.load_dataset(str(tmp_path / "plain"), split="scored", cache_dir=str(tmp_path / "hf"))
    b = datasets.load_dataset(str(tmp_path / "cross"), split="scored", cache_dir=str(tmp_path / "hf"))
    assert a["id"] == b["id"] and all(x != y for x, y in zip(a["perplexity"], b["perplexity"]))
    assert plain.summary.provenance.get("scorer") is None and "SmolLM2" in crossed.summary.provenance["scorer"]["model_id"]
    traces = datasets.load_dataset(str(tmp_path / "cross"), "traces", split="train", cache_dir=str(tmp_path / "hf"))
    kinds = {(row["is_reference"], row["logprob_kind"]) for row in traces}
    assert kinds == {(True, "teacher_forced"), (False, "teacher_forced")}  # samples unscored: no tokens, still marked


def test_best_agreeing_without_logprobs_keeps_an_agreeing_sample():
    """No logprobs, no scorer: every sample's perplexity is undefined; the kept trace must still agree with the majority."""
    from curation.journal import chunks_from_traces
    from curation.parse import AnswerCodes, AnswerParser, parse_chunk
    from curation.recipe.sections import AnswerConfig
    from curation.types import Trace

    answers = ["b", "a", "a"]  # sample 1 disagrees with the majority
    traces = {f"s{i}": Trace(f"s{i}", "q", i + 1, f"<answer>{a}</answer>", [], [], "stop", "none") for i, a in enumerate(answers)}
    chunk = next(chunks_from_traces([[None, "s0", "s1", "s2"]], traces))
    config = AnswerConfig(labels=["a", "b"])
    parsed = parse_chunk(chunk, AnswerParser(config), AnswerCodes(config.classes), 3, "best_agreeing")
    assert parsed.predicted == ["a"] and chunk.text[int(parsed.chosen[0])] == "<answer>a</answer>"


def test_the_hosted_teacher_recipe_runs_label_free_on_what_the_api_returns(tmp_path, monkeypatch):
    """recipes/perturbqa-hosted.yaml end to end against the o4-mini-like server: no logprobs, no scorer;
    semantic entropy of the answers selects, the stated confidence breaks its ties, every column is computed."""
    import zlib

    import numpy as np

    from curation.parse import read_confidence
    from curation.score import METRICS
    from tests.conftest import REPO

    def stated(body, text):  # 0..100, a function of the choice's text: a rerun sees the same
        return f" <confidence>{zlib.crc32(text.encode()) % 101}</confidence>"

    server = HostedReasoningChatServer(append=stated)
    import curation.backends.openai as module

    original = module.OpenAIBackend.__init__
    monkeypatch.setattr(module.OpenAIBackend, "__init__", lambda self, config, transport=None: original(self, config, transport=server.transport))
    monkeypatch.setenv("OPENAI_BASE_URL", "https://api.openai.test/v1")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    loaded = load_recipe(str(REPO / "recipes" / "perturbqa-hosted.yaml"), overrides=["source.limit=12", "generator.max_new_tokens=24", "select.fraction=0.5"])
    recipe = loaded.recipe
    assert recipe.scorer is None and not recipe.generator.logprobs and recipe.score.metric == "semantic_entropy_frequency"
    result = pipeline.run(loaded, tmp_path / "run", show_progress=False)
    assert result.generation.failed == 0 and not server.refused and not server.invalid_requests
    assert all("logprobs" not in r["body"] and "temperature" not in r["body"] for r in server.generation_requests)
    assert set(result.summary.metrics_computed) == set(recipe.score.metrics)
    assert not any(METRICS[name].family in ("confidence", "cocoa") for name in result.summary.metrics_computed)
    scored = datasets.load_dataset(str(tmp_path / "run"), split="scored", cache_dir=str(tmp_path / "hf"))
    traces = datasets.load_dataset(str(tmp_path / "run"), "traces", split="train", cache_dir=str(tmp_path / "hf"))
    assert scored.num_rows == 12 and "perplexity" not in scored.column_names
    references = {row["id"]: row["text"] for row in traces if row["is_reference"]}
    expected = 1.0 - read_confidence([references[i] for i in scored["id"]])
    assert np.allclose(scored["verbalized_confidence"], expected) and np.isfinite(expected).all()
    entropy = np.array(scored["semantic_entropy_frequency"], dtype=float)
    assert np.allclose(scored["uncertainty"], entropy) and (entropy >= 0).all() and entropy.max() > 0
    # per class, the kept rows are the least uncertain, ties in entropy ordered by the stated confidence
    for answer in set(scored["answer"]) - {None}:
        rows = [r for r in scored if r["answer"] == answer and r["uncertainty"] is not None]
        kept = [(r["uncertainty"], r["verbalized_confidence"]) for r in rows if r["kept"]]
        dropped = [(r["uncertainty"], r["verbalized_confidence"]) for r in rows if not r["kept"]]
        if kept and dropped:
            assert max(kept) <= min(dropped)


@pytest.mark.slow
def test_p_true_through_the_scorer_model(tmp_path, write_recipe, monkeypatch):
    """P(True): the scorer model is asked whether the reference's answer is true; the column is -log P("True")."""
    import numpy as np

    from curation import scorer as scorer_module
    from curation.recipe.sections import ScorerConfig

    server = HostedReasoningChatServer()
    import curation.backends.openai as module

    original = module.OpenAIBackend.__init__
    monkeypatch.setattr(module.OpenAIBackend, "__init__", lambda self, config, transport=None: original(self, config, transport=server.transport))
    text = RECIPE.replace("METRIC", "self_consistency").replace("limit: 6", "limit: 2")
    text += "scorer: {backend: local, traces: reference, top_logprobs: 0}\n"
    text = text.replace("score: {metric: self_consistency}", "score: {metric: self_consistency, metrics: [self_consistency, p_true, trace_length]}")
    result = pipeline.run(load_recipe(str(write_recipe(text))), tmp_path / "run", show_progress=False)
    assert {"p_true", "trace_length"} <= set(result.summary.metrics_computed)
    scored = datasets.load_dataset(str(tmp_path / "run"), split="scored", cache_dir=str(tmp_path / "hf"))
    traces = datasets.load_dataset(str(tmp_path / "run"), "traces", split="train", cache_dir=str(tmp_path / "hf"))
    values = np.array(scored["p_true"], dtype=float)
    assert np.isfinite(values).all() and (values > 0).all()  # -log of a probability below 1
    # the same question asked directly of the same model gives the same value
    reference = {row["id"]: row["text"] for row in traces if row["is_reference"]}
    local = scorer_module.make_scorer(ScorerConfig(backend="local", top_logprobs=0))
    for row in scored:
        asked = [m["content"] for m in row["prompt"] if m["role"] == "user"][-1]
        direct = scorer_module.p_true(local, [asked], [reference[row["id"]]])[0]
        assert abs(-direct - row["p_true"]) < 1e-4


def test_sample_measures_read_the_samples_likelihoods_from_the_journal(tmp_path, write_recipe, monkeypatch):
    """A teacher with logprobs: semantic entropy's sum estimate and SAR read each sample's summed logprobs,
    self-certainty the reference's top-k, trace length its tokens; each equals the value recomputed from the traces split."""
    import numpy as np

    from curation import semantic
    from tests.servers.openai_server import FakeOpenAIServer

    server = FakeOpenAIServer(owned_by="vllm")
    import curation.backends.openai as module

    original = module.OpenAIBackend.__init__
    monkeypatch.setattr(module.OpenAIBackend, "__init__", lambda self, config, transport=None: original(self, config, transport=server.transport))
    names = ["semantic_entropy", "semantic_entropy_frequency", "sentence_sar", "self_certainty", "trace_length", "num_semantic_sets"]
    text = f"""
name: sampled
source: {{path: SAMPLE_CSV, limit: 5, shuffle_seed: 1, label_column: label}}
prompt: {{user: "{{{{ pert }}}} knocked down in {{{{ cell_line }}}}: what happens to {{{{ gene }}}}?"}}
generator: {{backend: openai, url: "http://fake.test", model: fake-org/fake-model, samples: 4, max_new_tokens: 24, top_logprobs: 3}}
answer: {{tag: answer, labels: [upregulated, downregulated, not differentially expressed]}}
score: {{metric: semantic_entropy, metrics: {names}}}
select: {{strategy: per_class, fraction: 0.5}}
"""
    result = pipeline.run(load_recipe(str(write_recipe(text))), tmp_path / "run", show_progress=False)
    assert set(names) <= set(result.summary.metrics_computed)
    scored = datasets.load_dataset(str(tmp_path / "run"), split="scored", cache_dir=str(tmp_path / "hf"))
    traces = datasets.load_dataset(str(tmp_path / "run"), "traces", split="train", cache_dir=str(tmp_path / "hf"))
    labels = {"upregulated": 0, "downregulated": 1, "not differentially expressed": 2}
    for row in scored:
        mine = sorted((t for t in traces if t["id"] == row["id"]), key=lambda t: t["sample_index"])
        reference, samples = mine[0], mine[1:]
        loglik = np.array([[sum(t["token_logprobs"]) for t in samples]])
        answers = np.array([[labels.get(t["answer"], -1) for t in samples]])
        classes = semantic.AnswerClasses(answers, None)
        # the traces split stores float32 logprobs, the journal (what scoring reads) float64
        assert row["semantic_entropy"] == pytest.approx(float(classes.sum_entropy(loglik)[0]), abs=1e-5)
        assert row["sentence_sar"] == pytest.approx(float(classes.sentence_sar(loglik)[0]), abs=1e-5)
        assert row["trace_length"] == len(reference["token_logprobs"])
        certainty = np.mean([np.mean(r) + np.log(len(r)) for r in reference["top_logprobs"]])
        assert row["self_certainty"] == pytest.approx(certainty, abs=1e-6)
