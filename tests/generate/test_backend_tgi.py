"""The `tgi` backend against the TGI protocol test server (TGI itself cannot run here).

Every request the backend sends is checked against TGI's OpenAPI spec by the server
(`invalid_requests`), and every trace against what the server's scripted model produces for
the same prompt, parameters and seed.
"""

from __future__ import annotations

from pathlib import Path

import datasets
import httpx
import pyarrow.parquet as pq
import pytest

from curation import pipeline, run_folder
from curation.backends.templates import local_renderer
from curation.backends.tgi import TGIBackend
from curation.generate import RetryPolicy
from curation.recipe.load import load_recipe
from curation.recipe.sections import GeneratorConfig
from curation.types import GenerationError
from tests.builders.tgi_run import QUESTIONS, RECIPE, ChatTemplateTGIServer, config_for, generate
from tests.servers.tgi_server import SamplingParams, TGITestServer


def expected(server: TGITestServer, request, config: GeneratorConfig):
    """What the scripted model writes for this request (TGI semantics)."""
    prompt = local_renderer("chatml")(request.chat)
    if request.params.greedy:
        params = SamplingParams(max_new_tokens=config.max_new_tokens, stop=tuple(config.stop), top_n_tokens=config.top_logprobs)
    else:
        params = SamplingParams(
            max_new_tokens=config.max_new_tokens, do_sample=True, temperature=config.temperature, top_p=config.top_p,
            seed=request.seed, stop=tuple(config.stop), top_n_tokens=config.top_logprobs,
        )
    return server.model.generate(prompt, params)


def test_requests_are_valid_and_traces_are_what_tgi_returns(tmp_path):
    with ChatTemplateTGIServer() as tgi:
        config = config_for(tgi.url)
        backend, requests, stats, traces, failures = generate(config, tmp_path=tmp_path)
        assert not tgi.invalid_requests and stats.generated == 16 and not failures
        # the chat template is asked once per question, not once per trace
        assert tgi.requests_by_route["/chat_tokenize"] == 4 and tgi.requests_by_route["/generate"] == 16
        bodies = [r["body"] for r in tgi.received if r["route"] == "/generate"]
        greedy = [b["parameters"] for b in bodies if "seed" not in b["parameters"]]
        sampled = [b["parameters"] for b in bodies if "seed" in b["parameters"]]
        assert len(greedy) == 4 and len(sampled) == 12
        for p in greedy:  # no sampling setting at all, or TGI would sample
            assert p == {"details": True, "max_new_tokens": 48, "top_n_tokens": 5, "stop": ["</answer>"]}
        for p in sampled:
            assert p["do_sample"] is True and p["temperature"] == 0.8 and p["top_p"] == 0.95 and 0 < p["seed"] < 2**31
        for request in requests:
            trace, want = traces[request.fingerprint], expected(tgi, request, config)
            # TGI keeps the fake reasoner's <think>…</think> inline: the trace splits it off the answer
            thinking, answer = want.text.split("</think>", 1)
            assert trace.text == answer.strip() and trace.text.endswith("</answer>")  # the stop sequence stays
            assert trace.reasoning == thinking.removeprefix("<think>").strip() and trace.alignment == "ok"
            assert trace.tokens == [t["text"] for t in want.tokens]
            assert "".join(trace.tokens[: trace.answer_start]).endswith("</think>")
            assert "".join(trace.tokens[trace.answer_start :]).strip() == trace.text
            assert trace.token_logprobs == [t["logprob"] for t in want.tokens]
            assert trace.token_ids == [t["id"] for t in want.tokens]
            assert trace.top_logprobs == [[t["logprob"] for t in row] for row in want.top_tokens]
            assert trace.finish_reason == "stop" and trace.usage["finish_reason"] == "stop_sequence"
            assert trace.logprob_kind == "processed"
            assert trace.seed == (None if request.is_reference else request.seed)
            assert trace.model == "curate-test/fake-reasoner@0123456789abcdef0123456789abcdef01234567"
        samples = {traces[r.fingerprint].reasoning for r in requests if r.prompt_id == "q0" and not r.is_reference}
        assert len(samples) > 1  # seeds differ per sample


def test_defaults_and_eos_and_truncation(tmp_path):
    """temperature 1 and top_p 1 are omitted (TGI rejects top_p 1.0); EOS is scored, not printed; length is kept."""
    with TGITestServer() as tgi:
        config = config_for(tgi.url, temperature=1.0, top_p=1.0, stop=[], top_logprobs=0, chat_template="chatml", samples=2)
        _, requests, stats, traces, _ = generate(config, tmp_path=tmp_path)
        assert not tgi.invalid_requests and stats.generated == 12
        sampled = [r["body"]["parameters"] for r in tgi.received if "seed" in r["body"]["parameters"]]
        assert all("temperature" not in p and "top_p" not in p and "top_n_tokens" not in p and "stop" not in p for p in sampled)
        ends = {traces[r.fingerprint].finish_reason for r in requests}
        for request in requests:
            trace, want = traces[request.fingerprint], expected(tgi, request, config)
            assert trace.top_logprobs == []
            if want.finish_reason == "eos_token":
                assert trace.token_ids[-1] == 2 and "</s>" not in trace.text and len(trace.token_logprobs) == len(trace.token_ids)
        short = config_for(tgi.url, max_new_tokens=5, chat_template="chatml", samples=1)
        _, requests, _, traces, _ = generate(short, tmp_path=tmp_path)
        assert all(traces[r.fingerprint].finish_reason == "length" and len(traces[r.fingerprint].token_logprobs) == 5 for r in requests)
        assert "stop" in ends


def test_streaming_equals_generate_through_faults(tmp_path):
    with TGITestServer() as tgi:
        config = config_for(tgi.url, chat_template="chatml")
        _, requests, _, plain, _ = generate(config, tmp_path=tmp_path / "plain")
    kinds = ["429", "424", "reset", "truncated", "timeout"]
    with TGITestServer(fault_rate=0.3, fault_kinds=kinds, fault_seed=3, timeout_delay=5) as tgi:
        config = config_for(tgi.url, chat_template="chatml", stream=True, timeout=1.0)
        _, requests2, stats, streamed, failures = generate(config, tmp_path=tmp_path / "stream")
        assert not tgi.invalid_requests and not failures and stats.retries > 0
        assert tgi.requests_by_route["/generate_stream"] == stats.attempts
        assert 0 < sum(tgi.faults_injected.values()) <= stats.retries  # a loaded machine may add a real timeout
    assert [r.fingerprint for r in requests] == [r.fingerprint for r in requests2]  # streaming changes nothing
    for request in requests:
        a, b = plain[request.fingerprint], streamed[request.fingerprint]
        assert (a.text, a.token_logprobs, a.top_logprobs, a.token_ids, a.finish_reason, a.seed) == (b.text, b.token_logprobs, b.top_logprobs, b.token_ids, b.finish_reason, b.seed)


def test_stream_validation_error_is_not_retried(tmp_path):
    with TGITestServer(max_input_tokens=40, max_total_tokens=64) as tgi:
        config = config_for(tgi.url, chat_template="chatml", stream=True, max_new_tokens=60, samples=1)
        _, requests, stats, traces, failures = generate(config, questions=QUESTIONS[:1], tmp_path=tmp_path)
        assert stats.failed == 2 and stats.retries == 0 and not traces
        assert all("stream error validation" in reason and "must be <= 64" in reason for reason in failures.values())


def test_validation_errors_are_recorded_once(tmp_path):
    with TGITestServer(max_input_tokens=40, max_total_tokens=64) as tgi:
        config = config_for(tgi.url, chat_template="chatml", max_new_tokens=60)
        _, requests, stats, traces, failures = generate(config, tmp_path=tmp_path)
        assert stats.failed == 16 and stats.retries == 0 and tgi.requests_by_route["/generate"] == 16
        reason = next(iter(failures.values()))
        assert reason.startswith("HTTP 422 validation: `inputs` tokens + `max_new_tokens` must be <= 64")
        with pytest.raises(GenerationError, match="max_total_tokens"):
            TGIBackend(config_for(tgi.url, max_new_tokens=64)).model_identity()


def test_unavailable_endpoint_fails_within_budget_then_a_rerun_heals(tmp_path):
    with ChatTemplateTGIServer() as tgi:
        config = config_for(tgi.url, samples=1)
        backend = TGIBackend(config)
        backend.model_identity()  # /info answered; then the endpoint goes away
        tgi.set_unavailable(True)
        _, requests, stats, traces, failures = generate(config, tmp_path=tmp_path, policy=RetryPolicy(max_retries=2, backoff=0.01), backend=backend)
        assert stats.failed == 8 and stats.generated == 0 and stats.retries == 8 * 2
        assert set(failures.values()) == {"HTTP 503 unavailable: Service Unavailable"}
        tgi.set_unavailable(False)
        _, _, stats, traces, failures = generate(config, tmp_path=tmp_path)
        assert stats.generated == 8 and not failures and len(traces) == 8


def test_concurrency_is_capped_by_the_server_and_429s_are_retried(tmp_path):
    with TGITestServer(max_concurrent_requests=3, latency=0.02) as tgi:
        config = config_for(tgi.url, chat_template="chatml", concurrency=16)
        backend = TGIBackend(config)
        backend.model_identity()
        assert backend.concurrency == 3
        tgi.inject_faults("429", "429", "429")
        _, _, stats, traces, failures = generate(config, tmp_path=tmp_path, backend=backend)
        assert stats.generated == 16 and not failures and stats.retry_reasons["HTTP 429 overloaded"] == 3
        assert tgi.max_in_flight <= 3


def test_requests_are_spread_over_endpoints(tmp_path):
    with TGITestServer(latency=0.01) as a, TGITestServer(latency=0.01) as b:
        config = config_for([a.url, b.url], chat_template="chatml", concurrency=2)
        _, requests, stats, traces, _ = generate(config, tmp_path=tmp_path)
        assert stats.generated == 16
        assert a.requests_by_route["/generate"] >= 4 and b.requests_by_route["/generate"] >= 4
        assert a.max_in_flight <= 2 and b.max_in_flight <= 2
    with TGITestServer() as a, TGITestServer(model_id="other/model") as b:
        with pytest.raises(GenerationError, match="different models"):
            TGIBackend(config_for([a.url, b.url])).model_identity()


def test_provenance_and_secrets(tmp_path, monkeypatch):
    seen = []

    class Recording(httpx.AsyncBaseTransport, httpx.BaseTransport):
        def __init__(self):
            self.sync, self.async_ = httpx.HTTPTransport(), httpx.AsyncHTTPTransport()

        def handle_request(self, request):
            seen.append(request.headers.get("authorization"))
            return self.sync.handle_request(request)

        async def handle_async_request(self, request):
            seen.append(request.headers.get("authorization"))
            return await self.async_.handle_async_request(request)

    monkeypatch.setenv("TGI_TOKEN", "hf_secret_abc123")
    with TGITestServer(model_sha=None, version="3.3.6") as tgi:
        config = config_for(tgi.url, chat_template="chatml", api_key="${TGI_TOKEN}", samples=1)
        backend = TGIBackend(config, transport=Recording())
        assert backend.model_identity() == "curate-test/fake-reasoner@unknown-sha"
        provenance = backend.provenance()
        assert provenance["model_id"] == "curate-test/fake-reasoner" and provenance["model_sha"] is None
        assert provenance["server_version"] == "3.3.6" and provenance["logprob_kind"] == "processed"
        generate(config, questions=QUESTIONS[:1], tmp_path=tmp_path, backend=backend)
    assert seen and all(header == "Bearer hf_secret_abc123" for header in seen)
    assert "hf_secret_abc123" not in repr(provenance) and b"hf_secret_abc123" not in (tmp_path / "journal.sqlite").read_bytes()


# --------------------------------------------------------------------------- whole runs


def run_recipe(write_recipe, url: str, run_dir: Path, name: str):
    path = write_recipe(RECIPE.replace("URL", url), name=name)
    result = pipeline.run(load_recipe(str(path)), run_dir, show_progress=False)
    return result


def outputs(run_dir: Path):
    return pq.read_table(run_dir / run_folder.SCORED_FILE), pq.read_table(run_dir / run_folder.TRACES_FILE)


def test_twenty_percent_faults_give_the_same_dataset(tmp_path, write_recipe):
    """The required fault test: a run through 20% faults of every kind equals a fault-free run."""
    with ChatTemplateTGIServer() as tgi:
        clean = run_recipe(write_recipe, tgi.url, tmp_path / "clean", "clean.yaml")
        assert not tgi.invalid_requests
    with ChatTemplateTGIServer(fault_rate=0.2, fault_seed=14, timeout_delay=3.0) as tgi:  # seed 14: all six kinds
        faulty = run_recipe(write_recipe, tgi.url, tmp_path / "faulty", "faulty.yaml")
        assert not tgi.invalid_requests
        injected = dict(tgi.faults_injected)
    assert clean.generation.failed == faulty.generation.failed == 0
    assert faulty.generation.generated == clean.generation.generated == 60
    assert 12 <= sum(injected.values()) <= faulty.generation.retries and len(injected) == 6  # every kind happened
    clean_scored, clean_traces = outputs(tmp_path / "clean")
    faulty_scored, faulty_traces = outputs(tmp_path / "faulty")
    assert clean_traces.num_rows == 60 and clean_scored.num_rows == 12
    assert faulty_scored.equals(clean_scored) and faulty_traces.equals(clean_traces)
    scored = datasets.load_dataset(str(tmp_path / "faulty"), split="scored", cache_dir=str(tmp_path / "hf-cache"))
    assert scored.num_rows == 12 and sum(scored["kept"]) > 0


def test_failed_traces_are_reported_and_retried_by_a_rerun(tmp_path, write_recipe):
    with ChatTemplateTGIServer() as tgi:
        run_recipe(write_recipe, tgi.url, tmp_path / "reference", "ref.yaml")
    with ChatTemplateTGIServer(fault_rate=0.5, fault_kinds=["503"], fault_seed=1) as tgi:
        path = write_recipe(RECIPE.replace("URL", tgi.url).replace("max_retries: 8", "max_retries: 1"), name="flaky.yaml")
        first = pipeline.run(load_recipe(str(path)), tmp_path / "flaky", show_progress=False)
        assert first.generation.failed > 0
        assert first.summary.failed_traces == first.generation.failed
        assert set(first.generation.failure_reasons) == {"HTTP 503 unavailable: Service Unavailable"}
        tgi.faults.rate = 0.0
        second = pipeline.run(load_recipe(str(path)), tmp_path / "flaky", show_progress=False)
    assert second.generation.generated == first.generation.failed and second.generation.cached == 60 - first.generation.failed
    assert second.summary.failed_traces == 0
    assert outputs(tmp_path / "flaky") == outputs(tmp_path / "reference")
