"""A small OpenAI-compatible server for protocol tests, served in-process through httpx.MockTransport.

It imitates the servers the `openai` backend meets, as far as the backend can tell them apart:
`owned_by` in /v1/models ("vllm", "llamacpp", "sglang", or anything else), `n` honoured or not,
llama-server's logprob entries with `id` and `bytes` (also on /v1/completions) or vLLM's legacy
completions logprobs, llama-server's `usage.completion_tokens` that counts only the first choice,
API keys, and scripted failures (status codes with OpenAI error bodies and Retry-After, dropped
connections, bodies cut short). Generation is a pure function of (prompt, seed, choice index),
so retried and resumed requests get the same answer; choice i of an `n` request samples with
seed + i, as llama-server does.

Requests are checked against the rules the real APIs enforce (known fields only, top_logprobs
needs logprobs, ranges); violations are answered 400 and recorded in `invalid_requests`.

`stream: true` (n=1) is answered as server-sent events, one chunk per token, in the real chunk
format: a first chunk with the assistant role, then per token `delta.content` (chat) or `text`
(completions) with that token's `logprobs` (chat entries; the legacy dicts with
`legacy_completions`), the `finish_reason` on the last token's chunk (vLLM, SGLang) or on a chunk
of its own with an empty delta (llama-server, OpenAI), the usage chunk with `choices: []` when
`stream_options.include_usage`, then `data: [DONE]`. The stream is pulled by the client, so
`streamed_tokens` counts the token chunks the client actually read, `streams_cancelled` the
streams it closed before the end; `token_delay` paces the tokens. Stream faults (in `faults`):
`"stream_cut"` (the body ends halfway), `"stream_no_done"` (all but `[DONE]`),
`("stream_error", status)` (an error object halfway, as llama-server and vLLM send one), and
`"garbage"` (a chunk cut in the middle of its JSON). A streamed answer carries the same tokens,
text and logprobs as the non-streamed answer to the same request.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator
from typing import Any

import httpx

LABELS = ("upregulated", "downregulated", "not differentially expressed")
WORDS = ("the", " gene", " is", " knocked", " down", " so", " expression", " of", " target", " changes", " likely", " because", " pathway")
COMMON_FIELDS = {"model", "max_tokens", "logprobs", "top_logprobs", "stop", "temperature", "top_p", "seed", "n", "stream", "stream_options"}
EXTRA_FIELDS = {"llamacpp": {"top_k", "min_p"}, "vllm": {"top_k", "min_p", "repetition_penalty"}, "sglang": {"top_k", "min_p", "repetition_penalty"}}


class FakeOpenAIServer:
    def __init__(
        self,
        *,
        owned_by: str = "vllm",
        models: tuple[str, ...] = ("fake-org/fake-model",),
        honour_n: bool = True,
        api_key: str | None = None,
        legacy_completions: bool = False,
        first_choice_usage: bool = False,
        top_logprobs_limit: int = 20,
        token_delay: float = 0.0,
    ):
        self.owned_by = owned_by
        self.models = models
        self.honour_n = honour_n
        self.api_key = api_key
        self.legacy_completions = legacy_completions
        self.first_choice_usage = first_choice_usage
        self.top_logprobs_limit = top_logprobs_limit
        self.token_delay = token_delay  # seconds before each streamed token
        self.faults: list[Any] = []  # per generation request, in order: status int, (status, retry_after), "reset", "garbage", stream faults
        self.streams = 0  # streamed answers started
        self.streamed_tokens = 0  # token chunks the clients read
        self.streams_cancelled = 0  # streams closed by the client before their end
        self.requests: list[dict] = []  # {"method", "path", "headers", "body"}
        self.invalid_requests: list[dict] = []
        self.transport = httpx.MockTransport(self.handle)

    @property
    def generation_requests(self) -> list[dict]:
        return [r for r in self.requests if r["method"] == "POST"]

    # ------------------------------------------------------------------ routing
    def handle(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else None
        self.requests.append({"method": request.method, "path": request.url.path, "headers": dict(request.headers), "body": body})
        if self.api_key is not None and request.headers.get("authorization") != f"Bearer {self.api_key}":
            return _error(401, "Incorrect API key provided", "invalid_request_error", "invalid_api_key")
        path = request.url.path
        if request.method == "GET" and path == "/v1/models":
            data = [{"id": m, "object": "model", "created": 0, "owned_by": self.owned_by} for m in self.models]
            if self.owned_by == "llamacpp":
                for entry in data:
                    entry["meta"] = {"n_params": 1234, "size": 5678, "ftype": "Q4_1"}
            return httpx.Response(200, json={"object": "list", "data": data})
        if request.method == "GET" and path == "/props" and self.owned_by == "llamacpp":
            return httpx.Response(200, json={"build_info": "b1-fake", "total_slots": 8})
        if request.method == "GET" and path == "/version" and self.owned_by == "vllm":
            return httpx.Response(200, json={"version": "0.0.0-fake"})
        if request.method == "POST" and path in ("/v1/chat/completions", "/v1/completions"):
            streaming = isinstance(body, dict) and body.get("stream") is True
            fault = self.faults.pop(0) if self.faults else None
            if streaming and (fault in ("stream_cut", "stream_no_done", "garbage") or (isinstance(fault, tuple) and fault[0] == "stream_error")):
                stream_fault, fault = fault, None
            else:
                stream_fault = None
            if fault is not None:
                if fault == "reset":
                    raise httpx.RemoteProtocolError("Server disconnected without sending a response.", request=request)
                if fault == "garbage":
                    return httpx.Response(200, content=b'{"choices": [{"index": 0, "mess', headers={"content-type": "application/json"})
                status, retry_after = fault if isinstance(fault, tuple) else (fault, None)
                headers = {"retry-after": str(retry_after)} if retry_after is not None else {}
                if status == "quota":
                    return _error(429, "You exceeded your current quota", "insufficient_quota", "insufficient_quota")
                return _error(status, f"injected {status}", "server_error" if status >= 500 else "rate_limit_error", None, headers)
            problems = self.check(body, chat=path.endswith("chat/completions"))
            if problems:
                self.invalid_requests.append({"path": path, "body": body, "errors": problems})
                return _error(400, problems[0], "invalid_request_error", None)
            if streaming:
                events = self.stream_events(body, chat=path.endswith("chat/completions"))
                return httpx.Response(200, headers={"content-type": "text/event-stream"}, stream=_EventStream(self, events, stream_fault))
            return httpx.Response(200, json=self.complete(body, chat=path.endswith("chat/completions")))
        return _error(404, f"no route {request.method} {path}", "not_found", None)

    def check(self, body: Any, *, chat: bool) -> list[str]:
        if not isinstance(body, dict):
            return ["body must be a JSON object"]
        problems = []
        allowed = COMMON_FIELDS | EXTRA_FIELDS.get(self.owned_by, set()) | ({"messages"} if chat else {"prompt"})
        problems += [f"unknown field {key!r}" for key in body if key not in allowed]
        if "model" not in body:
            problems.append("model is required")
        elif body["model"] not in self.models and self.owned_by in ("vllm", "sglang"):
            problems.append(f"model {body['model']!r} does not exist")
        if chat:
            messages = body.get("messages")
            if not messages or not all(isinstance(m, dict) and set(m) == {"role", "content"} for m in messages):
                problems.append("messages must be a list of {role, content}")
            if "top_logprobs" in body and body.get("logprobs") is not True:
                problems.append("top_logprobs needs logprobs: true")
            if not 0 <= body.get("top_logprobs", 0) <= self.top_logprobs_limit:
                problems.append("top_logprobs out of range")
        else:
            if not isinstance(body.get("prompt"), str):
                problems.append("prompt must be a string")
            if not isinstance(body.get("logprobs", 0), int) or isinstance(body.get("logprobs"), bool):
                problems.append("completions logprobs must be an integer")
        if not 0 <= body.get("temperature", 1.0) <= 2:
            problems.append("temperature must be in [0, 2]")
        if not 0 < body.get("top_p", 1.0) <= 1:
            problems.append("top_p must be in (0, 1]")
        if not isinstance(body.get("max_tokens", 16), int) or body.get("max_tokens", 16) < 1:
            problems.append("max_tokens must be a positive integer")
        if body.get("n", 1) > 1 and body.get("temperature", 1.0) == 0:
            problems.append("n > 1 needs sampling")
        if "stream" in body and not isinstance(body["stream"], bool):
            problems.append("stream must be a boolean")
        if "stream_options" in body:
            options = body["stream_options"]
            if body.get("stream") is not True:
                problems.append("stream_options is only allowed when stream is true")
            elif not isinstance(options, dict) or set(options) - {"include_usage"} or not isinstance(options.get("include_usage", False), bool):
                problems.append("stream_options must be {include_usage: bool}")
        if body.get("stream") is True and body.get("n", 1) > 1:
            problems.append("this fake server streams n=1 only")
        return problems

    # ------------------------------------------------------------------ generation
    def complete(self, body: dict, *, chat: bool) -> dict:
        prompt = json.dumps(body["messages"]) if chat else body["prompt"]
        n = body.get("n", 1) if self.honour_n else 1
        greedy = body.get("temperature", 1.0) == 0
        choices = []
        for index in range(n):
            seed = None if greedy else body.get("seed", 0) + index
            choices.append(self.choice(prompt, seed, index, body, chat=chat))
        first = len(choices[0]["_tokens"])
        total = sum(len(c["_tokens"]) for c in choices)
        for choice in choices:
            del choice["_tokens"]
        return {
            "id": "cmpl-fake",
            "object": "chat.completion" if chat else "text_completion",
            "created": 0,
            "model": body.get("model"),
            "choices": choices,
            "usage": {"prompt_tokens": len(prompt) // 4, "completion_tokens": first if self.first_choice_usage else total, "total_tokens": 0},
        }

    def choice(self, prompt: str, seed: int | None, index: int, body: dict, *, chat: bool) -> dict:
        rng = random.Random(f"{prompt}|{seed}")
        length = rng.randint(4, 12)
        pieces = [rng.choice(WORDS) for _ in range(length)] + [" <answer>", rng.choice(LABELS), "</answer>"]
        max_tokens = body.get("max_tokens", 16)
        stops = body.get("stop") or []
        tokens, finish = [], "stop"
        for piece in pieces:
            if len(tokens) == max_tokens:
                finish = "length"
                break
            if piece in stops:  # OpenAI semantics: the stop sequence is not returned
                break
            tokens.append(piece)
        else:
            if len(tokens) < max_tokens:
                tokens.append("")  # EOS, scored but empty, as llama-server reports it
        k = body.get("top_logprobs", 0) if chat else body.get("logprobs", 0)
        entries = []
        for position, token in enumerate(tokens):
            lp = -round(rng.uniform(0.01, 3.0), 6)
            alternatives = sorted([lp] + [-round(rng.uniform(0.5, 8.0), 6) for _ in range(max(k - 1, 0))], reverse=True)[:k]
            entries.append((position, token, lp, alternatives))
        text = "".join(tokens)
        if chat or not self.legacy_completions:
            content = [
                {"id": 100 + WORDS.index(t) if t in WORDS else 7, "token": t, "bytes": list(t.encode()), "logprob": lp,
                 "top_logprobs": [{"id": 1 + j, "token": f"alt{j}", "bytes": [97], "logprob": a} for j, a in enumerate(alts)]}
                for _, t, lp, alts in entries
            ]
            logprobs: dict = {"content": content}
        else:
            logprobs = {
                "tokens": [t for _, t, _, _ in entries],
                "token_logprobs": [lp for _, _, lp, _ in entries],
                "top_logprobs": [{f"alt{j}": a for j, a in enumerate(alts)} for _, _, _, alts in entries],
                "text_offset": [0] * len(entries),
            }
        choice = {"index": index, "logprobs": logprobs, "finish_reason": finish, "_tokens": tokens}
        if chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        return choice


    # ------------------------------------------------------------------ streaming
    def stream_events(self, body: dict, *, chat: bool) -> list[tuple[int, dict]]:
        """The answer to a `stream: true` request: (tokens in the chunk, chunk) in order, before [DONE]."""
        answer = self.complete(body, chat=chat)
        choice = answer["choices"][0]
        kind = "chat.completion.chunk" if chat else "text_completion"
        vllm_style = self.owned_by in ("vllm", "sglang")  # finish_reason on the last token's chunk
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        header = {"id": "cmpl-fake", "object": kind, "created": 0, "model": body.get("model")}

        def chunk(piece: dict) -> dict:
            event = {**header, "choices": [{"index": 0, **piece}]}
            if vllm_style and include_usage:
                event["usage"] = None  # vLLM: every chunk carries usage, null until the last
            return event

        events: list[tuple[int, dict]] = []
        if chat:  # the role first, with no token (llama-server: content null; OpenAI and vLLM: "")
            role = {"role": "assistant", "content": None if self.owned_by == "llamacpp" else ""}
            events.append((0, chunk({"delta": role, "logprobs": None, "finish_reason": None})))
        logprobs = choice["logprobs"]
        legacy = "content" not in logprobs
        count = len(logprobs["token_logprobs"]) if legacy else len(logprobs["content"])
        for i in range(count):
            if legacy:
                one = {"tokens": [logprobs["tokens"][i]], "token_logprobs": [logprobs["token_logprobs"][i]], "top_logprobs": [logprobs["top_logprobs"][i]], "text_offset": [0]}
                token = logprobs["tokens"][i]
            else:
                one = {"content": [logprobs["content"][i]]}
                token = logprobs["content"][i]["token"]
            last = i == count - 1
            piece = {"delta": {"content": token}} if chat else {"text": token}
            events.append((1, chunk({**piece, "logprobs": one, "finish_reason": choice["finish_reason"] if (last and vllm_style) else None})))
        if not vllm_style or not count:
            events.append((0, chunk({**({"delta": {}} if chat else {"text": ""}), "logprobs": None, "finish_reason": choice["finish_reason"]})))
        if include_usage:
            events.append((0, {**header, "choices": [], "usage": answer["usage"]}))
        return events


class _EventStream(httpx.AsyncByteStream):
    """The SSE body of one streamed answer, produced as the client reads it (so a closed stream stops it)."""

    def __init__(self, server: FakeOpenAIServer, events: list[tuple[int, dict]], fault: Any):
        self.server, self.events, self.fault = server, events, fault
        self.finished = False
        server.streams += 1

    async def __aiter__(self) -> AsyncIterator[bytes]:
        events = self.events
        halfway = None
        if self.fault is not None and self.fault != "stream_no_done":
            tokens = [i for i, (n, _) in enumerate(events) if n]
            halfway = tokens[len(tokens) // 2] if tokens else len(events)
        for position, (tokens, event) in enumerate(events):
            if position == halfway:
                self.finished = True
                if self.fault == "garbage":
                    yield b'data: {"choices": [{"index": 0, "delta": {"cont\n\n'
                elif isinstance(self.fault, tuple):  # llama-server's and vLLM's error event, then the end
                    status = self.fault[1]
                    kind = {400: "invalid_request_error", 429: "rate_limit_error", 503: "unavailable_error"}.get(status, "server_error")
                    yield b"data: " + json.dumps({"error": {"code": status, "message": f"injected {status} in the stream", "type": kind}}).encode() + b"\n\n"
                return  # "stream_cut": the body just ends
            if tokens:
                if self.server.token_delay:
                    await asyncio.sleep(self.server.token_delay)
                self.server.streamed_tokens += tokens
            yield b"data: " + json.dumps(event).encode() + b"\n\n"
        self.finished = True
        if self.fault != "stream_no_done":
            yield b"data: [DONE]\n\n"

    async def aclose(self) -> None:
        if not self.finished:
            self.finished = True
            self.server.streams_cancelled += 1


def _error(status: int, message: str, kind: str, code: str | None, headers: dict | None = None) -> httpx.Response:
    return httpx.Response(status, json={"error": {"message": message, "type": kind, "param": None, "code": code}}, headers=headers or {})
