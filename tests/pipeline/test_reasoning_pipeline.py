"""Reasoning traces through parse -> score -> select -> publish -> train rows.

The run folder's filtered completion carries the thinking (`reasoning_content`, `thinking` or
inline), the traces config the thinking, answer start and token strings; metrics read the answer
span by default; a trace whose thinking never closed gets its own drop reason; and the rows
render through the real Qwen3 and DeepSeek-R1-Distill chat templates with the thinking inside
the text SFT learns."""

from __future__ import annotations

import json

import datasets
import numpy as np
import pytest

from curation import pipeline
from curation.generate import plan_requests
from curation.recipe.sections import Recipe
from curation.types import Question, Trace
from tests.builders.synthetic_run import planning_identity

LABELS = ["upregulated", "downregulated", "not differentially expressed"]


def recipe(**overrides) -> Recipe:
    data = {
        "name": "thinking",
        "license": "cc-by-4.0",
        "source": {"path": "x.csv", "label_column": "label"},
        "prompt": {"user": "{{ gene }}?"},
        "generator": {"samples": 3},
        "answer": {"labels": LABELS},
        "score": {"metric": "cocoa_ppl"},
        "select": {"strategy": "global", "fraction": 1.0},
    }
    for key, value in overrides.items():
        data[key] = {**data.get(key, {}), **value}
    return Recipe.model_validate(data)


def build(recipe_, n=6):
    """Traces as a vLLM reasoning parser gives them: thinking tokens, </think>, answer tokens."""
    rng = np.random.default_rng(1)
    questions = [Question(id=f"q{i}", messages=[{"role": "user", "content": f"gene{i}?"}], columns={"gene": f"G{i}"}, label=LABELS[i % 3]) for i in range(n)]
    requests = plan_requests(questions, recipe_.generator, planning_identity())
    traces = {}
    for r in requests:
        i = int(r.prompt_id[1:])
        label = LABELS[i % 3]
        thinking = ["<think>", "\n", "The", " gene", f" {i}", " is", " knocked", " down", "\n", "</think>"]
        answer = ["\n\n", "<answer>", label, "</answer>", "<|im_end|>"]
        tokens = thinking + answer
        logprobs = list(-rng.uniform(1.0, 3.0, size=len(thinking))) + list(-rng.uniform(0.01, 0.1, size=len(answer)))
        top = [[lp, lp - 1.0] for lp in logprobs]
        text, reasoning, start, alignment = f"\n\n<answer>{label}</answer>", f"\nThe gene {i} is knocked down\n", len(thinking), "ok"
        if i == 4 and r.is_reference:  # cut inside its thinking: no answer at all
            tokens, logprobs, top = thinking[:6], logprobs[:6], top[:6]
            text, reasoning, start, alignment = "", "\nThe gene 4 is", 6, "unfinished"
        if i == 5 and r.is_reference:  # answer tokens that do not give the text: recorded, never guessed
            text, start, alignment = f"<answer>{LABELS[0]}</answer>", None, "unaligned"
        traces[r.fingerprint] = Trace(
            r.fingerprint, r.prompt_id, r.sample_index, text, logprobs, top, "length" if alignment == "unfinished" else "stop", "raw", r.seed,
            reasoning=reasoning, tokens=tokens, answer_start=start, alignment=alignment,
        )
    return questions, requests, traces


def curate(recipe_, tmp_path):
    questions, requests, traces = build(recipe_)
    summary = pipeline.curate(recipe_, questions, requests, traces, {}, {"model_id": "m", "backend": "test", "logprob_kind": "raw"}, tmp_path, recipe_yaml="name: thinking\n")
    return summary, traces, requests


def test_the_run_folder_keeps_thinking_apart_and_scores_the_answer_span(tmp_path):
    summary, traces, requests = curate(recipe(), tmp_path)
    scored = datasets.load_dataset(str(tmp_path), split="scored")
    filtered = datasets.load_dataset(str(tmp_path), split="filtered")
    traces_ds = datasets.load_dataset(str(tmp_path), "traces", split="train")
    by_id = {r["id"]: r for r in scored}
    # the completion carries the thinking in the slot Qwen3 / R1 templates read; the answer alone in content
    row = by_id["q0"]
    (message,) = row["completion"]
    assert message["content"] == "\n\n<answer>upregulated</answer>" and message["reasoning_content"] == "\nThe gene 0 is knocked down\n"
    assert row["answer"] == "upregulated" and row["kept"]
    # perplexity of the answer span only (the thinking's logprobs are ~10x lower)
    reference = traces[requests[0].fingerprint]
    assert row["perplexity"] == pytest.approx(-np.mean(reference.token_logprobs[reference.answer_start :]))
    assert row["deepconf_tail"] < 0 and np.isfinite(row["deepconf_lowest_group"])
    # unfinished thinking: its own drop reason, not an unreadable answer
    assert by_id["q4"]["drop_reason"] == "unfinished_thinking" and by_id["q4"]["answer"] is None
    # unaligned: parsed from its text, but the answer-span metrics are undefined, so never kept
    assert by_id["q5"]["answer"] == "upregulated" and np.isnan(by_id["q5"]["perplexity"]) and not by_id["q5"]["kept"]
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["stages"]["parse"]["dropped"] == {"unfinished_thinking": 1}
    assert summary.reasoning == {"traces_with_thinking": 24, "unfinished_thinking": 1, "unaligned": 1, "scored_span": "answer"}
    # the traces config: thinking, answer start, token strings
    t0 = next(t for t in traces_ds if t["id"] == "q0" and t["is_reference"])
    assert t0["thinking"] == reference.reasoning and t0["answer_start"] == 10 and t0["alignment"] == "ok"
    assert t0["tokens"] == reference.tokens and len(t0["tokens"]) == len(t0["token_logprobs"])
    assert next(t for t in traces_ds if t["id"] == "q5" and t["is_reference"])["answer_start"] is None
    assert len(filtered) == summary.kept == 4
    card = (tmp_path / "README.md").read_text()
    assert "answer span" in card


def test_span_whole_and_thinking_and_other_formats(tmp_path):
    _, traces, requests = curate(recipe(score={"span": "whole"}, publish={"thinking_format": "inline"}), tmp_path / "a")
    row = datasets.load_dataset(str(tmp_path / "a"), split="scored")[0]
    reference = traces[requests[0].fingerprint]
    assert row["perplexity"] == pytest.approx(-np.mean(reference.token_logprobs))
    assert row["completion"][0]["content"] == "<think>\n\nThe gene 0 is knocked down\n\n</think>\n\n\n\n<answer>upregulated</answer>"
    curate(recipe(score={"span": "thinking"}, publish={"thinking_format": "thinking"}), tmp_path / "b")
    row = datasets.load_dataset(str(tmp_path / "b"), split="scored")[0]
    assert row["perplexity"] == pytest.approx(-np.mean(reference.token_logprobs[: reference.answer_start]))
    assert row["completion"][0]["thinking"] == reference.reasoning


# --------------------------------------------------------------------------- chat templates
# Qwen3's chat template (Qwen/Qwen3-8B tokenizer_config.json), its non-tool branches: it reads
# `reasoning_content`, and writes thinking only for assistant turns after the last user query.
QWEN3_TEMPLATE = (
    "{%- if messages[0].role == 'system' %}{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}{%- endif %}"
    "{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}"
    "{%- for message in messages[::-1] %}{%- set index = (messages|length - 1) - loop.index0 %}"
    "{%- if ns.multi_step_tool and message.role == 'user' and message.content is string and not(message.content.startswith('<tool_response>') and message.content.endswith('</tool_response>')) %}"
    "{%- set ns.multi_step_tool = false %}{%- set ns.last_query_index = index %}{%- endif %}{%- endfor %}"
    "{%- for message in messages %}{%- if message.content is string %}{%- set content = message.content %}{%- else %}{%- set content = '' %}{%- endif %}"
    "{%- if (message.role == 'user') or (message.role == 'system' and not loop.first) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>' + '\\n' }}"
    "{%- elif message.role == 'assistant' %}{%- set reasoning_content = '' %}"
    "{%- if message.reasoning_content is string %}{%- set reasoning_content = message.reasoning_content %}"
    "{%- else %}{%- if '</think>' in content %}"
    "{%- set reasoning_content = content.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') %}"
    "{%- set content = content.split('</think>')[-1].lstrip('\\n') %}{%- endif %}{%- endif %}"
    "{%- if loop.index0 > ns.last_query_index %}{%- if loop.last or (not loop.last and reasoning_content) %}"
    "{{- '<|im_start|>' + message.role + '\\n<think>\\n' + reasoning_content.strip('\\n') + '\\n</think>\\n\\n' + content.lstrip('\\n') }}"
    "{%- else %}{{- '<|im_start|>' + message.role + '\\n' + content }}{%- endif %}"
    "{%- else %}{{- '<|im_start|>' + message.role + '\\n' + content }}{%- endif %}"
    "{{- '<|im_end|>\\n' }}{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}{%- endif %}"
)
# DeepSeek-R1-Distill's chat template (deepseek-ai/DeepSeek-R1-Distill-Llama-8B), its non-tool
# branches: no thinking slot, every assistant turn is cut to what follows </think>, and the
# generation prompt opens <think>.
R1_DISTILL_TEMPLATE = (
    "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}"
    "{% set ns = namespace(is_first=false, is_tool=false, is_output_first=true, system_prompt='') %}"
    "{%- for message in messages %}{%- if message['role'] == 'system' %}{% set ns.system_prompt = message['content'] %}{%- endif %}{%- endfor %}"
    "{{bos_token}}{{ns.system_prompt}}"
    "{%- for message in messages %}{%- if message['role'] == 'user' %}{%- set ns.is_tool = false -%}{{'<｜User｜>' + message['content']}}{%- endif %}"
    "{%- if message['role'] == 'assistant' and message['content'] is not none %}"
    "{% set content = message['content'] %}{% if '</think>' in content %}{% set content = content.split('</think>')[-1] %}{% endif %}"
    "{{'<｜Assistant｜>' + content + '<｜end▁of▁sentence｜>'}}{%- endif %}{%- endfor -%}"
    "{% if add_generation_prompt and not ns.is_tool %}{{'<｜Assistant｜><think>\\n'}}{% endif %}"
)


@pytest.fixture(scope="module")
def tokenizer():
    from curation.train.base_model import load_tokenizer
    from curation.train.config import TrainConfig

    return load_tokenizer(TrainConfig())


def training_text(tokenizer, row) -> tuple[str, str]:
    """(prompt, completion) texts as TRL's SFT renders a prompt/completion row (conversational or not)."""
    if isinstance(row["prompt"], str):
        return row["prompt"], row["completion"]
    prompt = tokenizer.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(row["prompt"] + row["completion"], tokenize=False)
    assert full.startswith(prompt)
    return prompt, full[len(prompt):]


@pytest.mark.parametrize("template,layout", [(QWEN3_TEMPLATE, "slot:reasoning_content"), (R1_DISTILL_TEMPLATE, "text"), (None, "inline")])
def test_the_thinking_is_in_the_text_sft_learns(tmp_path, tokenizer, template, layout):
    from curation.train.sft import with_thinking_in_the_loss

    curate(recipe(), tmp_path)
    rows = datasets.load_dataset(str(tmp_path), split="filtered").to_list()
    original = tokenizer.chat_template
    try:
        if template is not None:
            tokenizer.chat_template = template
        converted, used = with_thinking_in_the_loss(rows, tokenizer)
        assert used == layout
        for row, before in zip(converted, rows):
            prompt, completion = training_text(tokenizer, row)
            thinking = before["completion"][0]["reasoning_content"].strip()
            assert thinking in completion and thinking not in prompt
            assert completion.index(thinking) < completion.index("</think>") < completion.index(before["answer"])
        if template is R1_DISTILL_TEMPLATE:
            # the template itself would have cut the thinking out of the conversational row
            full = tokenizer.apply_chat_template(rows[0]["prompt"] + [{"role": "assistant", "content": f"<think>\nx\n</think>\n\n{rows[0]['answer']}"}], tokenize=False)
            assert "x\n</think>" not in full
            assert converted[0]["prompt"].endswith("<｜Assistant｜><think>\n") and converted[0]["completion"].endswith("<｜end▁of▁sentence｜>")
    finally:
        tokenizer.chat_template = original


# --------------------------------------------------------------------------- the report
@pytest.mark.slow
def test_view_shows_thinking_and_answer_apart_with_exact_tokens(tmp_path):
    import re
    import subprocess

    from curation import view

    _, traces, requests = curate(recipe(), tmp_path / "run")
    data = view.build_report_data(tmp_path / "run")
    assert not data["approximate_tokens"]  # token strings recorded: exact boundaries
    q0 = next(q for q in data["questions"] if q["id"] == "q0")
    ref = next(t for t in q0["traces"] if t["is_reference"])
    assert ref["thinking"] == "\nThe gene 0 is knocked down\n" and ref["answer_start"] == 10 and ref["tokens"][9] == "</think>"
    page = view.write_report(tmp_path / "run")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run(["/usr/bin/chromium", *flags, "--dump-dom", str(page)], capture_output=True, text=True, timeout=120, check=True).stdout
    # every reference with thinking: a thinking block with its tokens, then the answer's tokens
    assert dom.count('<details class="thinking"') >= 5 and "Thinking (10 tokens)" in dom
    assert dom.count('class="tokens answer-span"') == 6  # q4's unfinished reference included (an empty answer)
    spans = re.findall(r'<span class="tok" title="logprob', dom)
    assert len(spans) == sum(len(traces[r.fingerprint].tokens) for r in requests if r.is_reference)
    assert "[unfinished]" in dom and "[unaligned]" in dom


# --------------------------------------------------------------------------- curate train (slow: real SFT steps)
TRAIN_SECTION = """train:
  base_model: embedded
  qlora: false
  lora_r: 4
  lora_alpha: 8
  lora_dropout: 0.0
  max_steps: 2
  per_device_train_batch_size: 2
  max_length: 160
  learning_rate: 5.0e-3
"""


@pytest.mark.slow
@pytest.mark.parametrize("template", [None, "qwen3", "r1"])
def test_curate_train_learns_the_thinking(tmp_path, template):
    """The real SFTTrainer's labels cover the thinking, the answer and the end of turn, never the prompt."""
    import yaml

    from curation.train.main import train
    from curation.train.sft import build_trainer
    from curation.train.target import load_training_rows, resolve_target

    recipe_ = recipe()
    text = yaml.safe_dump(recipe_.model_dump(mode="json", exclude_none=True)) + TRAIN_SECTION
    questions, requests, traces = build(recipe_)
    run_dir = tmp_path / "run"
    pipeline.curate(recipe_, questions, requests, traces, {}, {"model_id": "m", "backend": "test", "logprob_kind": "raw"}, run_dir, recipe_yaml=text)
    target = resolve_target(str(run_dir))
    rows = load_training_rows(target, "filtered", seed=0)
    import curation.train.sft as train_module

    original = train_module.load_tokenizer

    def with_template(config):
        tokenizer = original(config)
        if template:
            tokenizer.chat_template = {"qwen3": QWEN3_TEMPLATE, "r1": R1_DISTILL_TEMPLATE}[template]
        return tokenizer

    train_module.load_tokenizer = with_template
    try:
        trainer = build_trainer(target, rows, tmp_path / "out", show_progress=False)
        tokenizer = trainer.processing_class
        sources = datasets.load_dataset(str(run_dir), split="filtered").to_list()
        for example, source in zip(trainer.train_dataset, sources):
            ids, mask = example["input_ids"], example.get("completion_mask") or example.get("labels")
            learned = tokenizer.decode([i for i, m in zip(ids, mask) if m not in (0, -100)])
            thinking = source["completion"][0]["reasoning_content"].strip()
            assert thinking in learned and source["answer"] in learned, learned
            assert learned.index(thinking) < learned.index("</think>") < learned.index(source["answer"])
            assert "gene" not in learned.split(thinking)[0]  # the prompt ("geneN?") is not learned
        result = train(target, split="filtered", output_dir=tmp_path / "adapter", show_progress=False)
        assert result is not None
    finally:
        train_module.load_tokenizer = original


def test_the_critic_judges_the_thinking_too():
    from curation.critic import reasoning_block
    from curation.journal import chunks_from_traces

    recipe_ = recipe()
    questions, requests, traces = build(recipe_, n=1)
    grid = [[r.fingerprint for r in requests]]
    (chunk,) = chunks_from_traces(grid, traces)
    trace = pipeline.judged_trace(chunk, 0)
    assert reasoning_block(trace).strip() == "The gene 0 is knocked down" and trace.endswith("<answer>upregulated</answer>")
