"""Thinking through a real llama-server's reasoning parser (slow; skipped only without the binary).

The embedded SmolLM2 is no thinking model, so the server is given a chat template that opens
`<think>` in the generation prompt (as Qwen3-Thinking and the R1 distills do): everything the model
writes is thinking until it writes `</think>`, and llama-server's parser (`--reasoning-format
deepseek`) moves it to `reasoning_content`. SmolLM2 never closes it on its own, so:

- unconstrained, every trace is thinking that never closed: recorded as `unfinished`, not as an
  unreadable answer;
- with a GBNF grammar (llama-server's own `grammar` field, sent through `extra_body`) the model
  must write some words, `</think>`, then `<answer>…</answer>`: the parser splits there, and the
  trace's answer tokens must reproduce `content` exactly.

Both streamed (the `stream: true` path) and not.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math

import pytest

from curation.backends.openai import OpenAIBackend
from curation.deepconf import EarlyStop
from curation.generate import plan_requests
from curation.recipe.sections import GeneratorConfig
from curation.types import Question
from tests.builders.llama_server import LlamaServer, llama_server_binary

pytestmark = pytest.mark.slow

THINK_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message.role == 'assistant' -%}{{- '<|im_start|>assistant\\n' -}}"
    "{%- if message.reasoning_content is defined and message.reasoning_content -%}{{- '<think>\\n' + message.reasoning_content + '\\n</think>\\n\\n' -}}{%- endif -%}"
    "{{- message.content + '<|im_end|>\\n' -}}"
    "{%- else -%}{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' -}}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n<think>\\n' -}}{%- endif -%}"
)
GRAMMAR = 'root ::= thought "</think>\\n\\n<answer>" label "</answer>"\nthought ::= [a-z ]{12,80}\nlabel ::= "up" | "down"\n'
QUESTIONS = [Question(id=f"q{i}", messages=[{"role": "user", "content": f"Is gene {g} up or down after the knockdown?"}], columns={}) for i, g in enumerate(["TP53", "MYC", "GATA1"])]
NEVER = EarlyStop(threshold=-math.inf, window=4)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    binary = llama_server_binary()
    if not binary.exists():
        pytest.skip(f"llama-server not built ({binary}): run scripts/build_llama_server.sh")
    folder = tmp_path_factory.mktemp("think")
    template = folder / "think.jinja"
    template.write_text(THINK_TEMPLATE)
    with LlamaServer(binary, folder / "server.log", slots=4, extra_args=("--jinja", "--chat-template-file", str(template), "--reasoning-format", "deepseek")) as running:
        yield running


def generate(server, stream: bool, **overrides):
    settings = dict(backend="openai", url=server.url, samples=2, max_new_tokens=48, top_logprobs=3, temperature=0.8, use_n=False)
    settings.update(overrides)
    config = GeneratorConfig(**settings)
    backend = OpenAIBackend(config)
    requests = plan_requests(QUESTIONS, config, backend)

    async def go():
        try:
            return [(await backend.generate([dataclasses.replace(r, early_stop=NEVER) if stream else r]))[0] for r in requests]
        finally:
            await backend.aclose()

    return asyncio.run(go())


def test_the_server_parser_splits_the_thinking_out(server):
    """The premise: llama-server itself moves the thinking to reasoning_content (so the backend reads the separated route)."""
    import httpx

    body = {"messages": QUESTIONS[0].messages, "max_tokens": 96, "grammar": GRAMMAR, "logprobs": True, "temperature": 0}
    message = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=120).json()["choices"][0]["message"]
    assert message.get("reasoning_content") and "</think>" not in message["content"] and message["content"].startswith("<answer>")


@pytest.mark.parametrize("stream", [False, True])
def test_closed_thinking_is_split_and_the_answer_tokens_give_the_content(server, stream):
    traces = generate(server, stream, extra_body={"grammar": GRAMMAR}, max_new_tokens=96)
    for trace in traces:
        assert trace.alignment == "ok", (trace.reasoning, trace.text, trace.tokens)
        assert trace.text.strip() in ("<answer>up</answer>", "<answer>down</answer>") and trace.reasoning
        assert len(trace.tokens) == len(trace.token_logprobs)
        answer = "".join(trace.tokens[trace.answer_start :])
        assert answer.strip() == trace.text.strip()
        thinking = "".join(trace.tokens[: trace.answer_start])
        assert trace.reasoning.strip() in thinking
        if not stream:  # the non-streamed logprobs cover every token, the marker's included
            assert "</think>" in thinking


@pytest.mark.parametrize("stream", [False, True])
def test_thinking_that_never_closes_is_unfinished_not_an_unreadable_answer(server, stream):
    traces = generate(server, stream, max_new_tokens=12)
    for trace in traces:
        assert trace.alignment == "unfinished" and trace.text == "" and trace.reasoning and trace.finish_reason == "length"
        assert trace.answer_start == len(trace.tokens) == len(trace.token_logprobs) == 12
