"""OpenAI-compatible servers with a reasoning parser, as vLLM, SGLang and gpt-oss-on-vLLM answer.

Built from the projects' own serving code (read with the source tools, not copied):

- vLLM ``entrypoints/openai/chat_completion/serving.py`` with ``--reasoning-parser deepseek_r1``:
  ``logprobs.content`` covers every output token (``<think>``, thinking, ``</think>``, answer),
  because logprobs are built before the parser runs; the message carries ``reasoning`` (since
  vllm#27752) or ``reasoning_content`` (the only name before it, removed by #33402), and
  ``content`` is what follows ``</think>`` (null when nothing does, e.g. the thinking never
  closed). Streams: the first chunk is ``{role: assistant, content: ""}``; each step's logprobs
  ride on that step's delta (``delta.reasoning`` / ``delta.content``); a step the parser turns into
  no delta (a lone ``<think>`` or ``</think>`` token: ``extract_reasoning_streaming`` returns
  None) is skipped with ``continue``, so its logprob never reaches the client; the finish reason
  is on the last token's chunk.
- SGLang ``entrypoints/openai/serving_chat.py`` (``separate_reasoning`` default true):
  ``message.reasoning_content``; streams send reasoning chunks as ``delta.reasoning_content`` and
  "attach logprobs to the first chunk emitted this step" (since sgl-project/sglang#28601); older
  servers sent reasoning chunks with ``logprobs: null`` (``sglang_old``). The finish reason comes
  in a chunk of its own (with ``matched_stop``). ``separate_reasoning: false`` leaves the
  thinking inline in ``content``.
- gpt-oss on vLLM (harmony): tokens ``<|channel|>analysis<|message|>…<|end|><|start|>assistant
  <|channel|>final<|message|>…<|return|>``; ``message.reasoning`` holds the analysis channel,
  ``content`` the final channel, and logprobs cover every token, headers included.

Requests are validated for the reasoning fields each server takes (``chat_template_kwargs`` with
a boolean ``enable_thinking``; ``reasoning_effort`` in low/medium/high; SGLang's
``separate_reasoning``/``stream_reasoning``); anything else is refused as the base server does.
``enable_thinking: false`` makes the model answer without thinking (Qwen3's template writes an
empty think block into the prompt). ``template_opens_think``: the chat template wrote ``<think>``
into the prompt, so the output starts inside the thinking and holds only ``</think>``.
"""

from __future__ import annotations

import random

from tests.servers.openai_server import LABELS, WORDS, FakeOpenAIServer

DIALECTS = ("vllm", "vllm_old", "sglang", "sglang_old", "gpt_oss")
HARMONY_HEADER = ["<|channel|>", "analysis", "<|message|>"]
HARMONY_SWITCH = ["<|end|>", "<|start|>", "assistant", "<|channel|>", "final", "<|message|>"]


class ReasoningServer(FakeOpenAIServer):
    def __init__(self, dialect: str = "vllm", *, template_opens_think: bool = False, think_words: tuple[int, int] = (6, 14), **kwargs):
        if dialect not in DIALECTS:
            raise ValueError(dialect)
        owned_by = "sglang" if dialect.startswith("sglang") else "vllm"
        super().__init__(owned_by=owned_by, **kwargs)
        self.dialect = dialect
        self.template_opens_think = template_opens_think
        self.think_words = think_words

    # ------------------------------------------------------------------ validation
    def check(self, body, *, chat: bool) -> list[str]:
        if not isinstance(body, dict):
            return ["body must be a JSON object"]
        reasoning_keys = {"chat_template_kwargs", "reasoning_effort", "include_reasoning"}
        if self.owned_by == "sglang":
            reasoning_keys |= {"separate_reasoning", "stream_reasoning"}
        rest = {k: v for k, v in body.items() if k not in reasoning_keys}
        problems = super().check(rest, chat=chat)
        kwargs = body.get("chat_template_kwargs")
        if kwargs is not None and (not isinstance(kwargs, dict) or not isinstance(kwargs.get("enable_thinking", True), bool)):
            problems.append("chat_template_kwargs must be an object; enable_thinking a boolean")
        if body.get("reasoning_effort", "low") not in ("low", "medium", "high"):
            problems.append("reasoning_effort must be low, medium or high")
        for key in ("separate_reasoning", "stream_reasoning", "include_reasoning"):
            if key in body and not isinstance(body[key], bool):
                problems.append(f"{key} must be a boolean")
        return problems

    # ------------------------------------------------------------------ generation
    def _pieces(self, prompt: str, seed, body: dict) -> tuple[list[str], int]:
        """The output tokens and how many of them are thinking (markers included)."""
        rng = random.Random(f"{prompt}|{seed}")
        thinking_on = (body.get("chat_template_kwargs") or {}).get("enable_thinking", True)
        thought = [rng.choice(WORDS) for _ in range(rng.randint(*self.think_words))]
        answer = ["<answer>", rng.choice(LABELS), "</answer>"]
        if self.dialect == "gpt_oss":
            head = HARMONY_HEADER + thought + HARMONY_SWITCH
            return head + answer + ["<|return|>"], len(head)
        if not thinking_on:
            return answer + ["<|im_end|>"], 0
        head = ([] if self.template_opens_think else ["<think>"]) + ["\n"] + thought + ["\n", "</think>"]
        return head + ["\n\n"] + answer + ["<|im_end|>"], len(head)

    def choice(self, prompt: str, seed, index: int, body: dict, *, chat: bool) -> dict:
        rng = random.Random(f"lp|{prompt}|{seed}")
        pieces, n_thinking = self._pieces(prompt, seed, body)
        max_tokens = body.get("max_tokens", 16)
        tokens = pieces[:max_tokens]
        finish = "length" if len(pieces) > max_tokens else "stop"
        k = body.get("top_logprobs", 0) if chat else body.get("logprobs", 0)
        entries = []
        for token in tokens:
            lp = -round(rng.uniform(0.01, 3.0), 6)
            alternatives = sorted([lp] + [-round(rng.uniform(0.5, 8.0), 6) for _ in range(max(k - 1, 0))], reverse=True)[:k]
            entries.append({"token": token, "logprob": lp, "bytes": list(token.encode()), "top_logprobs": [{"token": f"alt{j}", "logprob": a, "bytes": [97]} for j, a in enumerate(alternatives)]})
        if not chat:  # /v1/completions is never parsed (vLLM): the thinking stays inline in `text`
            text = "".join(t for t in tokens if t not in ("<|im_end|>", "<|return|>"))
            legacy = {"tokens": tokens, "token_logprobs": [e["logprob"] for e in entries], "top_logprobs": [{f"alt{j}": a["logprob"] for j, a in enumerate(e["top_logprobs"])} for e in entries], "text_offset": [0] * len(tokens)}
            return {"index": index, "text": text, "logprobs": legacy, "finish_reason": finish, "_tokens": tokens, "_parts": [], "_n_thinking": n_thinking}
        reasoning, content = self._split(tokens, n_thinking, body)
        message = {"role": "assistant", "content": content}
        if reasoning is not None:
            message["reasoning_content" if self.dialect in ("vllm_old", "sglang", "sglang_old") else "reasoning"] = reasoning
        # the role tag the streaming view needs: which part each token's text belongs to
        parts = [("reasoning" if i < n_thinking else "content") for i in range(len(tokens))]
        return {"index": index, "message": message, "logprobs": {"content": entries}, "finish_reason": finish, "_tokens": tokens, "_parts": parts, "_n_thinking": n_thinking}

    def _split(self, tokens: list[str], n_thinking: int, body: dict) -> tuple[str | None, str | None]:
        """(reasoning, content) as the server's parser gives them for the whole output."""
        text = "".join(t for t in tokens if t not in ("<|im_end|>", "<|return|>"))
        if self.owned_by == "sglang" and body.get("separate_reasoning") is False:
            return None, text
        if self.dialect == "gpt_oss":
            thinking = "".join(tokens[len(HARMONY_HEADER) : min(n_thinking - len(HARMONY_SWITCH), len(tokens))])
            final = "".join(t for t in tokens[n_thinking:] if t != "<|return|>")
            return thinking, (final if len(tokens) > n_thinking else None)
        if n_thinking == 0:
            return None, text
        if "</think>" not in tokens:  # never closed: all of it is thinking (vLLM deepseek_r1: content None)
            return text.removeprefix("<think>"), None
        before, after = text.split("</think>", 1)
        return before.removeprefix("<think>"), (after or None)

    def complete(self, body: dict, *, chat: bool) -> dict:
        answer = super().complete(body, chat=chat)
        for choice in answer["choices"]:
            for key in ("_parts", "_n_thinking"):
                choice.pop(key, None)
        return answer

    # ------------------------------------------------------------------ streaming
    def stream_events(self, body: dict, *, chat: bool):
        prompt = __import__("json").dumps(body["messages"])
        seed = None if body.get("temperature", 1.0) == 0 else body.get("seed", 0)
        choice = self.choice(prompt, seed, 0, body, chat=chat)
        header = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 0, "model": body.get("model")}
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        field = "reasoning_content" if self.dialect in ("vllm_old", "sglang", "sglang_old") else "reasoning"
        separate = not (self.owned_by == "sglang" and body.get("separate_reasoning") is False)

        def chunk(piece: dict) -> dict:
            event = {**header, "choices": [{"index": 0, **piece}]}
            if include_usage and self.owned_by == "vllm":
                event["usage"] = None
            return event

        events = [(0, chunk({"delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}))]
        tokens, entries, parts = choice["_tokens"], choice["logprobs"]["content"], choice["_parts"]
        harmony_markers = set(HARMONY_HEADER + HARMONY_SWITCH)
        for i, (token, entry, part) in enumerate(zip(tokens, entries, parts)):
            last = i == len(tokens) - 1
            marker = token in ("<think>", "</think>") or (self.dialect == "gpt_oss" and token in harmony_markers and part == "reasoning")
            text = "" if token in ("<|im_end|>", "<|return|>") else token
            if separate and marker:
                if self.owned_by == "vllm" and not last:
                    continue  # vLLM: the parser gave no delta, the step is skipped with its logprob
                if self.dialect == "sglang_old":
                    continue  # old SGLang: nothing to send for a marker
                delta = {}
            elif separate and part == "reasoning":
                delta = {field: text}
            else:
                delta = {"content": text}
            logprobs = {"content": [entry]}
            if self.dialect == "sglang_old" and "reasoning_content" in delta:
                logprobs = None  # before sgl-project/sglang#28601
            vllm_finish = choice["finish_reason"] if (last and self.owned_by == "vllm") else None
            events.append((1, chunk({"delta": delta, "logprobs": logprobs, "finish_reason": vllm_finish})))
        if self.owned_by == "sglang":
            events.append((0, chunk({"delta": {}, "logprobs": None, "finish_reason": choice["finish_reason"], "matched_stop": None})))
        if include_usage:
            events.append((0, {**header, "choices": [], "usage": {"prompt_tokens": len(prompt) // 4, "completion_tokens": len(tokens), "total_tokens": 0}}))
        return events
