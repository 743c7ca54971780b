"""The `openai` backend's `stream: true` path for adaptive deepconf (requests with `early_stop`).

Against the in-process server (tests/servers/openai_server.py): a stream run to its end gives the
very trace the non-streaming request gives, a cut stream stops where `deepconf.cut_at` says the
whole trace would have been cut (online == offline), the client closes the stream (the server
counts the cancel and sends no more), and errors inside a stream are sorted like HTTP errors.
Against a real llama-server (slow): the same, with what llama-server streams differently.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import time

import numpy as np
import pytest

from curation.backends.openai import OpenAIBackend
from curation.deepconf import EARLY_STOP, EarlyStop, WindowConfidence, cut_at
from curation.generate import RetryPolicy, plan_requests, run_generation
from curation.journal import Journal
from curation.recipe.sections import GeneratorConfig
from curation.types import GenerationError, Question, RetryableError
from tests.servers.openai_server import FakeOpenAIServer

QUESTIONS = [Question(id=f"q{i}", messages=[{"role": "user", "content": f"What happens to gene {i}?"}], columns={}) for i in range(6)]
NEVER = EarlyStop(threshold=-math.inf, window=4)  # streams, never cuts
FLAVOURS = [  # (owned_by, api, legacy completions logprobs)
    ("vllm", "chat", False),  # finish_reason on the last token's chunk, usage: null on every chunk
    ("llamacpp", "chat", False),  # finish_reason on a chunk of its own, token ids
    ("openai", "chat", False),
    ("llamacpp", "completions", False),  # llama-server's /v1/completions: chat-style logprob entries
    ("vllm", "completions", True),  # vLLM's legacy {tokens, token_logprobs, top_logprobs: [{token: lp}]}
]


def config_for(**overrides) -> GeneratorConfig:
    settings = dict(backend="openai", url="http://fake.test/v1", model="fake-org/fake-model", samples=4, max_new_tokens=32, top_logprobs=3, temperature=0.8, top_p=0.9, use_n=False)
    settings.update(overrides)
    return GeneratorConfig(**settings)


def setup(owned_by="vllm", api="chat", legacy=False, questions=QUESTIONS[:1], server=None, **overrides):
    server = server or FakeOpenAIServer(owned_by=owned_by, legacy_completions=legacy)
    config = config_for(api=api, **overrides)
    backend = OpenAIBackend(config, transport=server.transport)
    requests = [r for r in plan_requests(questions, config, backend) if not r.is_reference]
    return server, backend, requests


def generate(backend, requests, stop=None):
    """Each request alone, without early_stop (stop=None) or with it, in one event loop."""

    async def go():
        try:
            return [(await backend.generate([dataclasses.replace(r, early_stop=stop) if stop else r]))[0] for r in requests]
        finally:
            await backend.aclose()

    return asyncio.run(go())


@pytest.mark.parametrize("owned_by,api,legacy", FLAVOURS)
def test_an_uncut_stream_is_the_non_streamed_trace(owned_by, api, legacy):
    server, backend, requests = setup(owned_by, api, legacy)
    full = generate(backend, requests)
    streamed = generate(backend, requests, NEVER)
    assert streamed == full and not server.invalid_requests
    assert all(t.finish_reason in ("stop", "length") and "prompt_tokens" in t.usage for t in streamed)
    if owned_by == "llamacpp":
        assert all(t.token_ids for t in streamed)
    # the same body plus stream (and the usage chunk, which brings prompt_tokens)
    plain, stream = server.generation_requests[: len(requests)], server.generation_requests[len(requests):]
    for a, b in zip(plain, stream):
        assert b["body"] == {**a["body"], "stream": True, "stream_options": {"include_usage": True}}
        assert b["path"] == a["path"] == ("/v1/chat/completions" if api == "chat" else "/v1/completions")
    assert server.streams == len(requests) and server.streams_cancelled == 0
    assert server.streamed_tokens == sum(len(t.token_logprobs) for t in full)


def test_a_length_truncated_stream_and_no_alternatives():
    _, backend, requests = setup("llamacpp", max_new_tokens=5)
    full, streamed = generate(backend, requests), generate(backend, requests, NEVER)
    assert streamed == full and {t.finish_reason for t in full} == {"length"}
    # top_logprobs: 0 gives no rows to judge by: a token without alternatives never cuts
    _, backend, requests = setup("llamacpp", top_logprobs=0)
    full, streamed = generate(backend, requests), generate(backend, requests, EarlyStop(math.inf, 2))
    assert streamed == full and all(t.top_logprobs == [] for t in streamed)


def test_an_unknown_server_gets_no_stream_options():
    server, backend, requests = setup("someone")
    full, streamed = generate(backend, requests), generate(backend, requests, NEVER)
    assert all("stream_options" not in r["body"] and r["body"]["stream"] is True for r in server.generation_requests[len(requests):])
    # without the usage chunk the prompt's length is unknown; everything else is the same
    assert [dataclasses.replace(t, usage={k: v for k, v in t.usage.items() if k != "prompt_tokens"}) for t in full] == streamed


@pytest.mark.parametrize("owned_by,api,legacy", FLAVOURS)
def test_every_full_window_cuts_at_the_window(owned_by, api, legacy):
    server, backend, requests = setup(owned_by, api, legacy)
    full = generate(backend, requests)
    stop = EarlyStop(threshold=math.inf, window=3)
    before = server.streamed_tokens
    cut = generate(backend, requests, stop)
    for whole, trace, request in zip(full, cut, requests):
        assert cut_at(whole.top_logprobs, stop) == 3 == len(trace.token_logprobs) < len(whole.token_logprobs)
        assert trace.finish_reason == EARLY_STOP
        assert trace.usage == {"finish_reason": EARLY_STOP, "completion_tokens": 3, "early_stop": {"threshold": math.inf, "window": 3}}
        assert trace.token_logprobs == whole.token_logprobs[:3] and trace.top_logprobs == whole.top_logprobs[:3]
        assert trace.token_ids == whole.token_ids[:3] and trace.seed == whole.seed == request.seed
        assert (trace.fingerprint, trace.prompt_id, trace.sample_index) == (whole.fingerprint, whole.prompt_id, whole.sample_index)
        answer = server.complete({**server.generation_requests[0]["body"], "seed": request.seed}, chat=api == "chat")["choices"][0]["logprobs"]
        tokens = answer["tokens"] if legacy else [e["token"] for e in answer["content"]]
        assert trace.text == "".join(tokens[:3]) and whole.text.startswith(trace.text)
    # the client read one token past each cut (to know the trace goes on), then closed the stream
    assert server.streamed_tokens - before == 4 * len(requests) < sum(len(t.token_logprobs) for t in full)
    assert server.streams_cancelled == len(requests)


def test_online_cuts_equal_the_offline_replay():
    """For thresholds at every window value of each trace: the stream keeps what cut_at says."""
    _, backend, requests = setup("llamacpp", questions=QUESTIONS)
    full = generate(backend, requests)
    window, checked, last_token_cases = 3, 0, 0

    async def go(cases):
        try:
            return [(await backend.generate([dataclasses.replace(r, early_stop=s)]))[0] for r, s in cases]
        finally:
            await backend.aclose()

    cases, expected = [], []
    for request, whole in zip(requests, full):
        running, means = WindowConfidence(window), []
        for row in whole.top_logprobs:
            running.push(row)
            if running.tokens >= window:
                means.append(float(np.sum(np.asarray(list(running._values), dtype=np.float64))) / window)
        for mean in means:  # just above a window's value: that window (or an earlier, lower one) cuts
            stop = EarlyStop(threshold=float(np.nextafter(mean, math.inf)), window=window)
            cases.append((request, stop))
            expected.append((whole, cut_at(whole.top_logprobs, stop)))
            last_token_cases += mean == means[-1] and min(means) == mean  # first below at the last token
    for (whole, n), trace in zip(expected, asyncio.run(go(cases))):
        if n is None:  # not cut: the whole trace, exactly
            assert trace == whole
        else:
            assert trace.finish_reason == EARLY_STOP and len(trace.token_logprobs) == n
            assert trace.top_logprobs == whole.top_logprobs[:n] and whole.text.startswith(trace.text)
        checked += 1
    assert checked > 50 and last_token_cases > 0 and any(n is None for _, n in expected) and any(n for _, n in expected)


def test_a_window_that_first_fills_at_the_last_token_does_not_cut():
    server, backend, requests = setup("vllm")  # vLLM style: the finish_reason rides on the last token
    full = generate(backend, requests)
    for request, whole in zip(requests, full):
        stop = EarlyStop(threshold=math.inf, window=len(whole.token_logprobs))
        assert cut_at(whole.top_logprobs, stop) is None
        assert generate(backend, [request], stop) == [whole]
    assert server.streams_cancelled == 0


class _MergingServer(FakeOpenAIServer):
    """Two tokens per chunk, as vLLM can send (stream intervals, speculative decoding)."""

    def stream_events(self, body, *, chat):
        events, merged = super().stream_events(body, chat=chat), []
        for n, event in events:
            if n and merged and merged[-1][0] == 1 and event["choices"][0]["finish_reason"] is None:
                choice, new = merged[-1][1]["choices"][0], event["choices"][0]
                choice["delta"]["content"] += new["delta"]["content"]
                choice["logprobs"]["content"] += new["logprobs"]["content"]
                merged[-1] = (2, merged[-1][1])
            else:
                merged.append((n, event))
        return merged


def test_chunks_with_several_tokens():
    server, backend, requests = setup(server=_MergingServer(owned_by="vllm"))
    full = generate(backend, requests)
    assert generate(backend, requests, NEVER) == full
    for window in (2, 3):  # the cut falls at a chunk's end, then inside a chunk
        cut = generate(backend, requests, EarlyStop(math.inf, window))
        for whole, trace in zip(full, cut):
            assert len(trace.token_logprobs) == window and trace.token_logprobs == whole.token_logprobs[:window]
            answer = server.complete({**server.generation_requests[0]["body"], "seed": trace.seed}, chat=True)["choices"][0]["logprobs"]["content"]
            assert trace.text == "".join(e["token"] for e in answer[:window])


@pytest.mark.parametrize(
    "fault,kind",
    [
        (("stream_error", 500), RetryableError),  # llama-server's mid-stream server_error
        (("stream_error", 503), RetryableError),
        (("stream_error", 400), GenerationError),  # a request a retry cannot fix
        ("stream_cut", RetryableError),  # the body ends halfway: no finish_reason, no [DONE]
        ("stream_no_done", RetryableError),
        ("garbage", RetryableError),  # a chunk cut in the middle of its JSON
        ((429, 2), RetryableError),  # refused before the stream starts
        (422, GenerationError),
        ("reset", RetryableError),
    ],
)
def test_errors_in_and_before_a_stream(fault, kind):
    server, backend, requests = setup("llamacpp")
    server.faults = [fault]
    with pytest.raises(GenerationError) as caught:
        generate(backend, requests[:1], NEVER)
    assert type(caught.value) is kind
    if fault == ("stream_error", 503) or fault == (429, 2):
        assert caught.value.overload
    if fault == ("stream_error", 500):
        assert "inside the stream" in str(caught.value) and caught.value.endpoint_fault
    if fault in ("stream_cut", "stream_no_done"):
        assert "cut short" in str(caught.value)


def test_retried_streams_give_the_same_traces(tmp_path):
    server, backend, requests = setup("llamacpp", questions=QUESTIONS[:2])
    full = generate(backend, requests)
    server.faults = ["stream_cut", ("stream_error", 500), "stream_no_done"]
    streamed = [dataclasses.replace(r, early_stop=NEVER) for r in requests]
    with Journal(tmp_path / "journal.sqlite") as journal:
        stats = run_generation(streamed, backend, journal, show_progress=False, policy=RetryPolicy(max_retries=4, backoff=0.01))
        traces = journal.load(r.fingerprint for r in requests)
    assert stats.failed == 0 and stats.generated == len(requests) and stats.attempts == len(requests) + 3
    assert [traces[r.fingerprint] for r in requests] == full


def test_early_stop_in_an_n_batch_is_refused():
    server, backend, requests = setup("vllm", use_n=None)  # vLLM: n batching on
    (group,) = [g for g in backend.group(requests) if len(g) > 1]
    marked = [dataclasses.replace(r, early_stop=NEVER) for r in group]
    with pytest.raises(GenerationError, match="n-batched"):
        asyncio.run(backend.generate(marked))
    assert not any(r["body"].get("stream") for r in server.generation_requests)


def test_the_fingerprint_does_not_know_about_streaming():
    _, backend, requests = setup("llamacpp")
    _, again, _ = setup("llamacpp")
    marked = [dataclasses.replace(r, early_stop=EarlyStop(1.5, 8)) for r in requests]
    assert backend.fingerprint_params(backend.config) == again.fingerprint_params(again.config)
    assert [r.fingerprint for r in marked] == [r.fingerprint for r in plan_requests(QUESTIONS[:1], config_for(), again) if not r.is_reference]


def test_a_cut_stream_stops_the_server_early():
    """With a per-token delay the cut is visible in time too: the server sends no more after the close."""
    server = FakeOpenAIServer(owned_by="llamacpp", token_delay=0.01)
    server, backend, requests = setup(server=server)
    full = generate(backend, requests[:1], NEVER)[0]
    assert len(full.token_logprobs) >= 8
    before = server.streamed_tokens
    cut = generate(backend, requests[:1], EarlyStop(math.inf, 2))[0]
    assert len(cut.token_logprobs) == 2 and server.streamed_tokens - before == 3 and server.streams_cancelled == 1


# ---------------------------------------------------------------------------- real llama-server


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory):
    from tests.builders.llama_server import LlamaServer, llama_server_binary

    binary = llama_server_binary()
    if not binary.exists():
        pytest.skip(f"llama-server is not built ({binary} missing): run scripts/build_llama_server.sh")
    with LlamaServer(binary, tmp_path_factory.mktemp("llama") / "server.log", slots=2) as server:
        yield server


def real(server, api="chat", **overrides):
    settings = dict(url=server.url, model="embedded", samples=2, max_new_tokens=40, top_logprobs=5, temperature=1.0, timeout=300, api=api)
    settings.update(overrides)
    config = config_for(**settings)
    backend = OpenAIBackend(config, transport=None)
    requests = [r for r in plan_requests(QUESTIONS[:2], config, backend) if not r.is_reference]
    return backend, requests


@pytest.mark.slow
def test_llama_server_streams_the_non_streamed_trace(llama_server):
    # /v1/completions streams every token: uncut streams equal the non-streamed traces exactly
    backend, requests = real(llama_server, api="completions", chat_template="chatml", max_new_tokens=200)
    full, streamed = generate(backend, requests), generate(backend, requests, NEVER)
    assert backend.server == "llama.cpp" and streamed == full
    assert all(t.token_ids and len(t.top_logprobs[0]) == 5 for t in full)
    # chat, ended by max_tokens: the same trace
    backend, requests = real(llama_server, max_new_tokens=6)
    full, streamed = generate(backend, requests), generate(backend, requests, NEVER)
    assert {t.finish_reason for t in full} == {"length"} and streamed == full
    # chat, ended by EOS: llama-server sends no chunk for a token without text, so the stream has
    # every token but the EOS (this checks that this is the only difference, and will fail, to be
    # looked at, if llama-server starts streaming it)
    backend, requests = real(llama_server, max_new_tokens=200)
    full, streamed = generate(backend, requests), generate(backend, requests, NEVER)
    for whole, trace in zip(full, streamed):
        if whole.finish_reason == "length":
            assert trace == whole
            continue
        n = len(whole.token_logprobs) - 1
        assert trace.text == whole.text and trace.finish_reason == whole.finish_reason == "stop"
        assert trace.token_logprobs == whole.token_logprobs[:n] and trace.top_logprobs == whole.top_logprobs[:n] and trace.token_ids == whole.token_ids[:n]
    assert any(t.finish_reason == "stop" for t in full)


@pytest.mark.slow
@pytest.mark.parametrize("api", ["chat", "completions"])
def test_llama_server_cut_at_the_offline_point(llama_server, api):
    backend, requests = real(llama_server, api=api, max_new_tokens=40)
    full = generate(backend, requests)
    window = 4
    stops = []
    for whole in full:
        running, means = WindowConfidence(window), []
        for row in whole.top_logprobs:
            running.push(row)
            if running.tokens >= window:
                means.append(float(np.sum(np.asarray(list(running._values), dtype=np.float64))) / window)
        assert len(means) > 3
        # just above a window in the middle: a cut there, or at an earlier lower window
        stops.append(EarlyStop(threshold=float(np.nextafter(means[len(means) // 2], math.inf)), window=window))
    cancels = llama_server.log_path.read_text(errors="replace").count("stop: cancel task")
    cut = [generate(backend, [request], stop)[0] for request, stop in zip(requests, stops)]
    # closing the stream is what stops the generation: llama-server cancels each cut task
    deadline = time.monotonic() + 10
    while llama_server.log_path.read_text(errors="replace").count("stop: cancel task") < cancels + len(requests) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert llama_server.log_path.read_text(errors="replace").count("stop: cancel task") == cancels + len(requests)
    for whole, trace, stop in zip(full, cut, stops):
        n = cut_at(whole.top_logprobs, stop)
        assert n is not None and trace.finish_reason == EARLY_STOP and len(trace.token_logprobs) == n < len(whole.token_logprobs)
        assert trace.token_logprobs == whole.token_logprobs[:n] and trace.top_logprobs == whole.top_logprobs[:n] and trace.token_ids == whole.token_ids[:n]
        assert whole.text.startswith(trace.text) and trace.usage["early_stop"] == stop.to_json()
