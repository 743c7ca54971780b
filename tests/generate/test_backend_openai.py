"""The `openai` backend against an in-process OpenAI-compatible server (tests/servers/openai_server.py).

The real-server test is tests/generate/test_llama_server.py; this one covers what a real server will not
do on demand: each server flavour, `n` ignored, errors of every kind, API keys.
"""

from __future__ import annotations

import datasets
import pytest

from curation import pipeline
from curation.backends.openai import OpenAIBackend
from curation.generate import RetryPolicy, plan_requests, run_generation
from curation.journal import Journal
from curation.recipe.load import load_recipe
from curation.recipe.sections import GeneratorConfig
from curation.types import GenerationError, Question, RecipeError, derive_seed
from tests.servers.openai_server import FakeOpenAIServer

QUESTIONS = [Question(id=f"q{i}", messages=[{"role": "user", "content": f"What happens to gene {i}?"}], columns={}) for i in range(3)]
FAST = RetryPolicy(max_retries=4, backoff=0.01)


def config_for(**overrides) -> GeneratorConfig:
    settings = dict(backend="openai", url="http://fake.test/v1", model="fake-org/fake-model", samples=4, max_new_tokens=32, top_logprobs=3, temperature=0.8, top_p=0.9)
    settings.update(overrides)
    return GeneratorConfig(**settings)


def generate(server, config, tmp_path, questions=QUESTIONS, policy=FAST):
    backend = OpenAIBackend(config, transport=server.transport)
    requests = plan_requests(questions, config, backend)
    with Journal(tmp_path / "journal.sqlite") as journal:
        stats = run_generation(requests, backend, journal, show_progress=False, policy=policy)
        traces = journal.load(r.fingerprint for r in requests)
        failures = journal.failures()
    return backend, requests, stats, traces, failures


def test_n_groups_a_questions_samples_in_one_request(tmp_path):
    server = FakeOpenAIServer(owned_by="vllm", first_choice_usage=True)
    backend, requests, stats, traces, failures = generate(server, config_for(), tmp_path)
    assert backend.server == "vllm" and backend.use_n and not server.invalid_requests and not failures
    bodies = [r["body"] for r in server.generation_requests]
    assert len(bodies) == 3 * 2  # per question: the greedy reference, and one n=4 request
    greedy = [b for b in bodies if b["temperature"] == 0.0]
    sampled = [b for b in bodies if b["temperature"] != 0.0]
    assert all("n" not in b and "seed" not in b and "top_p" not in b for b in greedy)
    for body in sampled:
        question = body["messages"][0]["content"].split()[-1].rstrip("?")
        assert body["n"] == 4 and body["seed"] == derive_seed(0, f"q{question}", 1) and body["top_p"] == 0.9
        assert body["top_k"] == -1 and body["min_p"] == 0.0 and body["repetition_penalty"] == 1.0  # vLLM's own defaults off
        assert body["logprobs"] is True and body["top_logprobs"] == 3 and body["max_tokens"] == 32
    assert stats.generated == 15 and stats.attempts == 6
    # tokens come from the logprob arrays, not from usage (which counts only the first choice here)
    assert stats.tokens == sum(len(t.token_logprobs) for t in traces.values())
    samples = [traces[r.fingerprint] for r in requests if r.prompt_id == "q0" and not r.is_reference]
    assert len({t.text for t in samples}) > 1 and all(t.usage["n"] == 4 for t in samples)
    assert all(t.logprob_kind == "raw" and len(t.top_logprobs[0]) == 3 for t in traces.values())


def test_n_is_in_the_samples_fingerprint_only(tmp_path):
    with_n = OpenAIBackend(config_for(), transport=FakeOpenAIServer(owned_by="vllm").transport)
    without = OpenAIBackend(config_for(use_n=False), transport=FakeOpenAIServer(owned_by="vllm").transport)
    a, b = plan_requests(QUESTIONS, config_for(), with_n), plan_requests(QUESTIONS, config_for(use_n=False), without)
    for x, y in zip(a, b):
        assert (x.fingerprint == y.fingerprint) == x.is_reference


def test_a_resumed_n_group_equals_the_uninterrupted_one(tmp_path):
    server = FakeOpenAIServer(owned_by="llamacpp")
    _, requests, _, first, _ = generate(server, config_for(), tmp_path / "a")
    # a journal that lost two samples of q1 (say, a group written by an older run) asks again with n=4
    with Journal(tmp_path / "a" / "journal.sqlite") as journal:
        lost = [r.fingerprint for r in requests if r.prompt_id == "q1" and r.sample_index in (2, 3)]
        journal.db.execute(f"DELETE FROM traces WHERE fingerprint IN ({','.join('?' * len(lost))})", lost)
    _, _, stats, again, _ = generate(server, config_for(), tmp_path / "a")
    assert stats.generated == 2 and server.generation_requests[-1]["body"]["n"] == 4
    assert all(again[fp] == first[fp] for fp in lost)


def test_servers_that_ignore_n(tmp_path):
    server = FakeOpenAIServer(owned_by="someone", honour_n=False)
    backend, requests, stats, traces, failures = generate(server, config_for(), tmp_path / "auto")
    assert not backend.use_n and stats.generated == 15 and stats.attempts == 15 and not failures
    seeds = [r["body"]["seed"] for r in server.generation_requests if "seed" in r["body"]]
    assert sorted(seeds) == sorted(r.seed for r in requests if not r.is_reference)  # one seed per sample
    assert "top_k" not in server.generation_requests[0]["body"]  # unknown server: nothing non-standard is sent
    forced = FakeOpenAIServer(owned_by="someone", honour_n=False)
    _, _, stats, _, failures = generate(forced, config_for(use_n=True), tmp_path / "forced")
    assert stats.failed == 12 and all("use_n: false" in reason for reason in failures.values())


def test_llama_server_flavour(tmp_path):
    server = FakeOpenAIServer(owned_by="llamacpp", models=("/models/smol.Q4_1.gguf",))
    backend, requests, stats, traces, failures = generate(server, config_for(model="embedded", extra_body={"min_p": 0.02}), tmp_path)
    assert backend.server == "llama.cpp" and backend.use_n and not failures and not server.invalid_requests
    assert backend.model_identity() == "smol.Q4_1.gguf (gguf Q4_1, 1234 params, 5678 bytes)"
    body = server.generation_requests[-1]["body"]
    assert body["model"] == "/models/smol.Q4_1.gguf" and body["top_k"] == 0 and body["min_p"] == 0.02
    provenance = backend.provenance()
    assert provenance["server"] == "llama.cpp" and provenance["server_version"] == "b1-fake" and provenance["request_defaults"] == {"top_k": 0, "min_p": 0.02}
    assert all(t.token_ids for t in traces.values())
    # with slots known and concurrency not set: a request queued behind every slot
    assert backend.concurrency == 8  # max(default 8, 2 x 8 slots / n=4)
    single = OpenAIBackend(config_for(use_n=False), transport=server.transport)
    single.model_identity()
    assert single.concurrency == 16
    explicit = OpenAIBackend(config_for(use_n=False, concurrency=3), transport=server.transport)
    explicit.model_identity()
    assert explicit.concurrency == 3


def test_truncated_traces_are_kept_with_their_finish_reason(tmp_path):
    server = FakeOpenAIServer()
    _, requests, stats, traces, _ = generate(server, config_for(max_new_tokens=5), tmp_path)
    assert stats.generated == 15
    assert all(t.finish_reason == "length" and len(t.token_logprobs) == 5 for t in traces.values())


def test_completions_api_legacy_logprobs_and_templates(tmp_path):
    server = FakeOpenAIServer(owned_by="vllm", legacy_completions=True)
    _, requests, stats, traces, failures = generate(server, config_for(api="completions", chat_template="chatml"), tmp_path)
    assert not failures and not server.invalid_requests and stats.generated == 15
    body = server.generation_requests[0]["body"]
    assert body["prompt"] == "<|im_start|>user\nWhat happens to gene 0?<|im_end|>\n<|im_start|>assistant\n" and body["logprobs"] == 3
    assert all(len(row) == 3 and row == sorted(row, reverse=True) for t in traces.values() for row in t.top_logprobs)


@pytest.mark.parametrize(
    "fault, retried",
    [((429, 0.2), True), (503, True), (500, True), ("reset", True), ("garbage", True), (400, False), ("quota", False), (404, False)],
)
def test_errors(tmp_path, fault, retried):
    server = FakeOpenAIServer()
    server.faults = [fault]
    config = config_for(samples=1, reference=False, use_n=False)
    _, requests, stats, traces, failures = generate(server, config, tmp_path, questions=QUESTIONS[:1])
    assert (stats.generated, stats.retries, stats.failed) == ((1, 1, 0) if retried else (0, 0, 1))
    if fault == (429, 0.2):
        assert stats.seconds >= 0.2  # Retry-After honoured
    if not retried:
        assert list(failures.values())[0].startswith(f"HTTP {400 if fault == 400 else 429 if fault == 'quota' else 404}")


def test_api_key_is_used_and_never_written(tmp_path, monkeypatch, write_recipe):
    secret = "sk-test-4f9a1c0b7e"
    monkeypatch.setenv("FAKE_OPENAI_KEY", secret)
    server = FakeOpenAIServer(api_key=secret)
    config = config_for(api_key="${FAKE_OPENAI_KEY}")
    backend, _, stats, _, _ = generate(server, config, tmp_path)
    assert stats.generated == 15 and all(r["headers"]["authorization"] == f"Bearer {secret}" for r in server.requests)
    assert secret not in repr(backend.provenance()) and secret not in repr(backend.__dict__.get("config"))
    assert secret.encode() not in (tmp_path / "journal.sqlite").read_bytes()
    # a wrong key is a clear start-up error; a missing variable names the variable
    with pytest.raises(GenerationError, match="check generator.api_key"):
        OpenAIBackend(config, transport=FakeOpenAIServer(api_key="other").transport).model_identity()
    monkeypatch.delenv("FAKE_OPENAI_KEY")
    with pytest.raises(RecipeError, match="FAKE_OPENAI_KEY is not set"):
        OpenAIBackend(config, transport=server.transport)


def test_whole_run_through_the_openai_backend(tmp_path, write_recipe, monkeypatch):
    """pipeline.run end to end, with the secret in the environment: nothing in the run folder has it."""
    secret = "sk-run-0d1e2a3b"
    monkeypatch.setenv("RUN_KEY", secret)
    server = FakeOpenAIServer(owned_by="llamacpp", api_key=secret)
    import curation.backends.openai as module

    original = module.OpenAIBackend.__init__
    monkeypatch.setattr(module.OpenAIBackend, "__init__", lambda self, config, transport=None: original(self, config, transport=server.transport))
    recipe = write_recipe(
        """
name: openai-run
source: {path: SAMPLE_CSV, limit: 9, shuffle_seed: 1, label_column: label}
prompt: {user: "{{ pert }} knocked down in {{ cell_line }}: what happens to {{ gene }}?"}
generator: {backend: openai, url: "http://fake.test", api_key: "${RUN_KEY}", samples: 3, max_new_tokens: 24, stop: ["</answer>"]}
answer: {tag: answer, labels: [upregulated, downregulated, not differentially expressed]}
select: {strategy: per_class, fraction: 0.5}
"""
    )
    result = pipeline.run(load_recipe(str(recipe)), tmp_path / "run", show_progress=False)
    assert result.generation.generated == 36 and result.generation.failed == 0 and not server.invalid_requests
    traces = datasets.load_dataset(str(tmp_path / "run"), "traces", split="train", cache_dir=str(tmp_path / "hf-cache"))
    scored = datasets.load_dataset(str(tmp_path / "run"), split="scored", cache_dir=str(tmp_path / "hf-cache"))
    assert traces.num_rows == 36 and scored.num_rows == 9 and set(traces["logprob_kind"]) == {"raw"}
    for path in (tmp_path / "run").rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path


def test_requests_are_spread_over_endpoints(tmp_path):
    server = FakeOpenAIServer(owned_by="vllm")
    config = config_for(url=["http://a.test/v1", "http://b.test/v1"], concurrency=1, use_n=False)
    backend, requests, stats, traces, failures = generate(server, config, tmp_path)
    hosts = [r["headers"]["host"] for r in server.generation_requests]
    assert stats.generated == 15 and not failures
    assert hosts.count("a.test") >= 4 and hosts.count("b.test") >= 4
    assert {r["headers"]["host"] for r in server.requests if r["path"] == "/v1/models"} == {"a.test", "b.test"}
