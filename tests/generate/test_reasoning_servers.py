"""The `openai` backend against reasoning servers: vLLM (both field names), SGLang (new and old
streams), gpt-oss harmony, each as tests/servers/reasoning_server.py answers from the projects'
own serving code. Streamed (the `stream: true` path adaptive deepconf uses) and not: the trace
keeps the thinking, its text is the answer, and its answer tokens reproduce the answer."""

from __future__ import annotations

import asyncio
import dataclasses
import math

import pytest

from curation.backends.openai import OpenAIBackend
from curation.deepconf import EarlyStop
from curation.generate import plan_requests, run_generation
from curation.journal import Journal
from curation.recipe.sections import GeneratorConfig
from curation.types import Question
from tests.servers.reasoning_server import DIALECTS, ReasoningServer

QUESTIONS = [Question(id=f"q{i}", messages=[{"role": "user", "content": f"What happens to gene {i}?"}], columns={}) for i in range(3)]
NEVER = EarlyStop(threshold=-math.inf, window=4)


def setup(dialect="vllm", server=None, **overrides):
    server = server or ReasoningServer(dialect)
    settings = dict(backend="openai", url="http://fake.test/v1", model="fake-org/fake-model", samples=3, max_new_tokens=64, top_logprobs=3, temperature=0.8)
    settings.update(overrides)
    config = GeneratorConfig(**settings)
    backend = OpenAIBackend(config, transport=server.transport)
    return server, backend, config


def one_by_one(backend, requests, stop=None):
    async def go():
        try:
            return [(await backend.generate([dataclasses.replace(r, early_stop=stop) if stop else r]))[0] for r in requests]
        finally:
            await backend.aclose()

    return asyncio.run(go())


def check_span(trace):
    """The answer tokens give the answer text; the tokens before them hold the thinking."""
    assert trace.alignment == "ok", (trace.tokens, trace.text)
    answer = "".join(trace.tokens[trace.answer_start :]).replace("<|im_end|>", "").replace("<|return|>", "")
    assert answer.strip() == trace.text.strip()
    assert trace.reasoning and trace.reasoning.strip() in "".join(trace.tokens[: trace.answer_start])
    assert "<answer>" not in trace.reasoning and "</think>" not in trace.text


@pytest.mark.parametrize("dialect", DIALECTS)
def test_thinking_is_kept_and_the_answer_span_found(dialect, tmp_path):
    server, backend, config = setup(dialect)
    requests = plan_requests(QUESTIONS, config, backend)
    with Journal(tmp_path / "j.sqlite") as journal:
        stats = run_generation(requests, backend, journal, show_progress=False)
        traces = journal.load(r.fingerprint for r in requests)
    assert stats.generated == len(requests) == 12 and not server.invalid_requests
    for trace in traces.values():
        check_span(trace)
        assert trace.text.startswith("\n\n<answer>") or trace.text.startswith("<answer>")
        assert len(trace.tokens) == len(trace.token_logprobs)  # every output token, thinking included


@pytest.mark.parametrize("dialect", DIALECTS)
def test_streams_keep_the_thinking_as_the_servers_stream_it(dialect):
    server, backend, config = setup(dialect, use_n=False)
    requests = [r for r in plan_requests(QUESTIONS[:2], config, backend)]
    whole = one_by_one(backend, requests)
    streamed = one_by_one(backend, requests, NEVER)
    assert not server.invalid_requests
    for full, trace in zip(whole, streamed):
        assert trace.reasoning.strip() == full.reasoning.strip() and trace.text.strip() == full.text.strip()
        check_span(trace) if dialect != "sglang_old" else None
        if dialect == "vllm" or dialect == "vllm_old" or dialect == "gpt_oss":
            # vLLM skips the step of a lone marker token, with its logprob
            assert len(trace.token_logprobs) < len(full.token_logprobs)
        if dialect == "sglang":  # every step's logprobs ride on the first chunk of that step
            assert trace.token_logprobs == full.token_logprobs and trace.answer_start == full.answer_start
        if dialect == "sglang_old":  # reasoning chunks without logprobs: the arrays hold the answer only
            assert trace.usage["thinking_logprobs"] == "missing" and trace.answer_start == 0 and trace.alignment == "ok"
            assert "".join(trace.tokens).replace("<|im_end|>", "").strip() == trace.text.strip()
        # the answer's own logprobs are the same however they arrived
        assert trace.token_logprobs[trace.answer_start :][-4:] == full.token_logprobs[full.answer_start :][-4:]


@pytest.mark.parametrize("stream", [False, True])
def test_thinking_cut_by_max_tokens_is_unfinished_not_an_unreadable_answer(stream):
    server, backend, config = setup("vllm", max_new_tokens=6, use_n=False)
    requests = plan_requests(QUESTIONS[:1], config, backend)
    traces = one_by_one(backend, requests, NEVER if stream else None)
    for trace in traces:
        assert trace.alignment == "unfinished" and trace.text == "" and trace.reasoning and trace.finish_reason == "length"
        assert trace.answer_start == len(trace.tokens) == len(trace.token_logprobs)


def test_template_that_opens_think_and_inline_thinking():
    server, backend, config = setup(server=ReasoningServer("vllm", template_opens_think=True))
    traces = one_by_one(backend, plan_requests(QUESTIONS[:1], config, backend))
    for trace in traces:
        check_span(trace)
        assert trace.tokens[0] != "<think>"
    # SGLang with separate_reasoning: false leaves the thinking inline in content
    server, backend, config = setup("sglang", extra_body={"separate_reasoning": False})
    traces = one_by_one(backend, plan_requests(QUESTIONS[:1], config, backend))
    assert not server.invalid_requests
    for trace in traces:
        check_span(trace)
        assert trace.text.startswith("<answer>")


@pytest.mark.parametrize("mode,fields", [
    (True, {"chat_template_kwargs": {"enable_thinking": True}}),
    ("off", {"chat_template_kwargs": {"enable_thinking": False}}),
    ("high", {"chat_template_kwargs": {"enable_thinking": True}, "reasoning_effort": "high"}),
])
def test_generator_reasoning_is_sent_as_the_server_takes_it_and_fingerprinted(mode, fields):
    server, backend, config = setup("vllm", reasoning=mode)
    requests = plan_requests(QUESTIONS[:1], config, backend)
    traces = one_by_one(backend, requests)
    assert not server.invalid_requests
    for sent in server.generation_requests:
        assert {k: sent["body"][k] for k in fields} == fields
    if mode == "off":
        assert all(t.reasoning is None and t.answer_start == 0 and t.text.startswith("<answer>") for t in traces)
    _, plain_backend, plain_config = setup("vllm")
    plain = plan_requests(QUESTIONS[:1], plain_config, plain_backend)
    assert {r.fingerprint for r in plain}.isdisjoint(r.fingerprint for r in requests)


def test_validate_says_where_a_backend_cannot_honour_generator_reasoning(tmp_path):
    import subprocess
    import sys

    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "name: r\nsource: {path: x.csv}\nprompt: {user: '{{ q }}'}\n"
        "generator:\n  backend: tgi\n  url: http://localhost:1\n  reasoning: on\n"
        "answer: {labels: [a, b]}\nselect: {strategy: global, fraction: 0.5}\n"
    )
    (tmp_path / "x.csv").write_text("q\nhello\n")
    out = subprocess.run([sys.executable, "-m", "curation.cli", "validate", str(recipe)], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode != 0 and "r.yaml:7:14: generator.reasoning: TGI has no per-request thinking switch" in out.stderr
    recipe.write_text(recipe.read_text().replace("backend: tgi", "backend: openai"))
    out = subprocess.run([sys.executable, "-m", "curation.cli", "validate", str(recipe)], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr


def test_completions_route_keeps_the_thinking_inline_and_it_is_split():
    """vLLM never parses /v1/completions: `text` holds <think>…</think>answer, `logprobs.tokens` every token."""
    server, backend, config = setup("vllm", api="completions", chat_template="chatml")
    traces = one_by_one(backend, plan_requests(QUESTIONS[:1], config, backend))
    assert not server.invalid_requests
    for trace in traces:
        check_span(trace)
        assert trace.text.startswith("<answer>") and trace.tokens[trace.answer_start - 1] == "</think>"
