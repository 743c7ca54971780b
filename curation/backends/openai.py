"""The `openai` backend: `/v1/chat/completions` (or `/v1/completions`) with logprobs.

One backend for vLLM, SGLang, llama.cpp's llama-server, TGI's Messages API and hosted
providers. What differs between them is found out once, at start-up, from `GET /v1/models`
(llama-server says `owned_by: llamacpp`, vLLM `vllm`, SGLang `sglang`; TGI answers `/info`):

- `n`: vLLM, SGLang, llama-server and OpenAI return K samples for one `n=K` request, sharing
  the prompt's prefill (llama-server: 5.1 vs 4.5 traces/s in DESIGN.md). TGI's Messages API
  does not. `use_n: null` (auto) uses it where it is known to work. The K samples then depend
  on the request as a whole (one seed, the server derives one RNG stream per choice), so `n`
  is part of their fingerprint; the greedy reference is always its own `n=1` request.
- Server-side sampling defaults: llama-server samples with top_k=40, min_p=0.05 and top_p=0.95
  unless told otherwise, and vLLM/SGLang apply the model's generation_config.json. The recipe's
  sampling is temperature and top_p only, so for those servers the request also switches the
  other truncations off (`extra_body` overrides; whatever is sent is in the fingerprint).
- Token counts come from the logprob arrays: llama-server's `usage.completion_tokens` counts
  only the first choice when n > 1.

Logprobs are the model's raw distribution (`logprob_kind = "raw"`): vLLM's default, and
llama-server's unless `post_sampling_probs` is set. The greedy reference is `temperature: 0`.
Finish reasons are kept (`length` marks a truncated trace, which is recorded, never dropped or
resampled). As in OpenAI's API, the text does not include the stop sequence that ended it.

The API key is read from the environment when the backend starts (`api_key: ${ENV}`) and lives
only in the HTTP clients' headers: it is never in provenance, the journal, or an error message.

Adaptive `mode: deepconf` streams (`stream: true`): a request with `early_stop` is sent as the
same body plus `stream` (and `stream_options.include_usage` where the server is known to take
it), the SSE chunks are read one by one and every token's top-k row goes into a
`deepconf.WindowConfidence`. When it says stop and another token arrives, the stream is closed
(leaving `client.stream` drops the connection, which is how vLLM and llama-server learn to stop
generating) and the trace so far comes back with `finish_reason: early_stop`. Waiting for that
next token is what makes the online cut equal `deepconf.cut_at` on the whole trace, which never
cuts at the last token. A stream that runs to its end gives the trace the non-streaming request
gives, except where the server streams differently (llama-server, checked on build b1-0c1e570:
chat streams send no chunk, so no logprobs, for a token without text, so the EOS token of a trace
ended by EOS is missing; completions streams do send it, but also send the tokens of a matched
stop sequence, which the non-streaming answer leaves out). `stream` is not in the fingerprint.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Sequence

import httpx
import msgspec

from curation.backends.http import (
    JSON_HEADERS,
    decode_response,
    dumps,
    endpoint_setup,
    loads,
    probe,
    request_rejected,
    status_error,
    sync_client,
    transport_error,
)
from curation.backends.templates import local_renderer
from curation.deepconf import EARLY_STOP, EarlyStop, WindowConfidence
from curation.reasoning import capture as reasoning_span
from curation.reasoning import expects_thinking, markers_from, thinking_mode
from curation.recipe.sections import GeneratorConfig
from curation.types import GenerationError, RequestRejected, RetryableError, Trace, TraceRequest, derive_seed

# Replies without logprobs, none with, before the run stops as misconfigured (one alone is that request's failure).
MISSING_LOGPROBS_TO_STOP = 3

log = logging.getLogger(__name__)

SERVERS_WITH_N = {"llama.cpp", "vllm", "sglang", "openai"}
# servers known to accept `stream_options: {include_usage: true}` (the usage chunk gives prompt_tokens);
# others (TGI's OpenAI route, unknown proxies) may refuse an unknown field, so it is left out there
SERVERS_WITH_STREAM_USAGE = {"llama.cpp", "vllm", "sglang", "openai"}
# an error object inside a stream (HTTP 200 already sent) without a numeric code: its type's status
STREAM_ERROR_STATUS = {
    "invalid_request_error": 400, "exceed_context_size_error": 400, "authentication_error": 401, "permission_error": 403,
    "not_found_error": 404, "rate_limit_error": 429, "server_error": 500, "not_supported_error": 501, "unavailable_error": 503,
}
# request fields that switch off each server's own sampling truncations, so that the recipe's
# temperature and top_p are the whole sampling procedure
NEUTRAL_SAMPLING = {
    "llama.cpp": {"top_k": 0, "min_p": 0.0},
    "vllm": {"top_k": -1, "min_p": 0.0, "repetition_penalty": 1.0},
    "sglang": {"top_k": -1, "min_p": 0.0, "repetition_penalty": 1.0},
}
# `generator.reasoning` as each server takes it. Qwen3-style templates read `enable_thinking` from
# `chat_template_kwargs` (vLLM, SGLang, llama-server); gpt-oss and OpenAI's reasoning models take
# `reasoning_effort`. Servers not listed (TGI's Messages API, unknown proxies) get nothing: an
# unknown field can be refused, and `validate` already says TGI cannot switch thinking per request.
SERVERS_WITH_TEMPLATE_KWARGS = {"llama.cpp", "vllm", "sglang"}
SERVERS_WITH_EFFORT = {"vllm", "sglang", "openai"}
OWNERS = {"llamacpp": "llama.cpp", "vllm": "vllm", "sglang": "sglang", "openai": "openai", "system": "openai", "openai-internal": "openai"}


class _Alternative(msgspec.Struct):
    logprob: float


class _Entry(msgspec.Struct):
    logprob: float | None = None
    id: int | None = None  # llama-server adds the token id; vLLM and OpenAI do not
    token: str | None = None  # the token's string: where thinking ends and the answer starts
    top_logprobs: list[_Alternative] | None = None


class _Logprobs(msgspec.Struct):
    content: list[_Entry] | None = None  # chat format (and llama-server's /v1/completions)
    tokens: list[str] | None = None  # legacy completions format
    token_logprobs: list[float | None] | None = None
    top_logprobs: list[dict[str, float] | None] | None = None


class _Message(msgspec.Struct):
    content: str | None = None
    # the thinking a server's reasoning parser split out of `content`: vLLM `reasoning` (since
    # vllm#27752; also gpt-oss's harmony analysis channel), `reasoning_content` (vLLM before #33402,
    # SGLang, llama-server), `thinking` (Ollama-style and HF's gpt-oss template field)
    reasoning: str | None = None
    reasoning_content: str | None = None
    thinking: str | None = None

    @property
    def thought(self) -> str | None:
        return self.reasoning or self.reasoning_content or self.thinking


class _Choice(msgspec.Struct):
    index: int = 0
    message: _Message | None = None
    text: str | None = None
    logprobs: _Logprobs | None = None
    finish_reason: str | None = None
    stop_reason: str | int | None = None  # vLLM: the stop string (or stop token id) that ended the choice; None for EOS


class _Usage(msgspec.Struct):
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


class _Response(msgspec.Struct):
    """What curate reads of a (chat) completion; token strings and byte lists are skipped."""

    choices: list[_Choice] = []
    usage: _Usage | None = None


_RESPONSE = msgspec.json.Decoder(_Response)


# ---- the streamed chunks (`chat.completion.chunk`, streamed `text_completion`)
class _StreamEntry(msgspec.Struct):
    logprob: float | None = None
    id: int | None = None
    token: str | None = None  # only to split a chunk's text when it holds several tokens
    top_logprobs: list[_Alternative] | None = None


class _StreamLogprobs(msgspec.Struct):
    content: list[_StreamEntry] | None = None  # chat format (and llama-server's /v1/completions)
    tokens: list[str] | None = None  # legacy completions format (vLLM)
    token_logprobs: list[float | None] | None = None
    top_logprobs: list[dict[str, float] | None] | None = None


class _Delta(msgspec.Struct):
    content: str | None = None
    reasoning: str | None = None  # as _Message: vLLM, older vLLM / SGLang / llama-server, thinking
    reasoning_content: str | None = None
    thinking: str | None = None


class _StreamChoice(msgspec.Struct):
    index: int = 0
    delta: _Delta | None = None
    text: str | None = None
    logprobs: _StreamLogprobs | None = None
    finish_reason: str | None = None


class _Chunk(msgspec.Struct):
    choices: list[_StreamChoice] = []
    usage: _Usage | None = None
    error: Any = None  # OpenAI, vLLM and llama-server: {"error": {message, type, code}}
    object: str | None = None  # older vLLM: the error itself, {"object": "error", message, type, code}
    message: str | None = None


_CHUNK = msgspec.json.Decoder(_Chunk)


class _Streamed:
    """What a stream has delivered so far: the token arrays, the answer's text, the thinking beside it, how it ended."""

    __slots__ = ("logprobs", "top", "ids", "strings", "text", "thought", "unscored_thinking", "finish", "prompt_tokens", "done")

    def __init__(self) -> None:
        self.logprobs: list[float | None] = []
        self.top: list[list[float]] = []
        self.ids: list[int | None] = []
        self.strings: list[str | None] = []
        self.text = ""
        self.thought = ""  # the thinking the server's parser streams apart from `content`
        self.unscored_thinking = False  # thinking chunks came without logprobs
        self.finish: str | None = None
        self.prompt_tokens: int | None = None
        self.done = False  # `[DONE]` arrived


class OpenAIBackend:
    name = "openai"
    logprob_kind = "raw"

    def __init__(self, config: GeneratorConfig, *, transport: Any = None):
        """`transport`: an httpx transport used for every call (tests and benchmarks use MockTransport)."""
        self.config = config
        self.section = "generator"  # the recipe section whose keys an error names (the critic sets "critic")
        self.endpoints, self._headers, self._clients = endpoint_setup(config, "openai", transport)
        self.concurrency = config.concurrency
        self._transport = transport
        self.chat = config.api == "chat"
        self.path = "/v1/chat/completions" if self.chat else "/v1/completions"
        self._render = None if self.chat else local_renderer(config.chat_template or "none")
        self._probed = False
        self._logprobs_seen = False  # a reply of this run carried logprobs: a later one without is that request's fault
        self._replies_without_logprobs = 0
        self._slots: list[int] = []  # llama-server's parallel slots per endpoint
        self.server = "unknown"
        self.server_version: str | None = None
        self.served_model: str | None = None
        self.model_name = config.model
        self.identity: str | None = None
        self.use_n = False
        self.extra: dict = {}
        self.markers = markers_from(getattr(config, "thinking_markers", None))
        self.expect_thinking = expects_thinking(getattr(config, "reasoning", None))

    # ------------------------------------------------------------------ start-up
    def _probe(self) -> None:
        """Find the server kind, the served model and its identity (once, before planning)."""
        if self._probed:
            return
        identities = []
        with sync_client(self._headers, min(self.config.timeout, 30.0), transport=self._transport) as client:
            for url in self.endpoints:
                identities.append(self._probe_one(client, url))
        if len(set(identities)) > 1:
            raise GenerationError(f"endpoints serve different models ({', '.join(sorted(set(identities)))}); traces from them cannot be mixed")
        self.identity = identities[0] + (f"@{self.config.revision}" if self.config.revision else "")
        use_n = self.config.use_n
        self.use_n = (self.server in SERVERS_WITH_N) if use_n is None else use_n
        self.extra = {**NEUTRAL_SAMPLING.get(self.server, {}), **reasoning_fields(self.server, thinking_mode(getattr(self.config, "reasoning", None))), **self.config.extra_body}
        if self._slots and "concurrency" not in self.config.model_fields_set:
            # keep a request queued behind every slot, so a slot never waits for our next
            # request (the saturation bench: 0.97 -> 0.99 of a bare client with n=1)
            per_request = self.config.samples if self.use_n and self.config.samples > 1 else 1
            self.concurrency = max(self.concurrency, -(-2 * min(self._slots) // per_request))
            self._clients.max_connections = self.concurrency * len(self.endpoints) + 4
        self._probed = True

    def _probe_one(self, client: httpx.Client, url: str) -> str:
        try:
            response = probe(client, "GET", url + "/v1/models")
        except RetryableError as exc:
            raise GenerationError(f"OpenAI-compatible endpoint {url} is not answering /v1/models: {exc}") from None
        if response.status_code in (401, 403):
            raise GenerationError(f"{url}: {status_error(response.status_code, response.content, response.headers)} (check generator.api_key)")
        models: list[dict] = []
        if response.status_code == 200:
            try:
                models = [m for m in loads(response.content).get("data", []) if isinstance(m, dict)]
            except Exception:  # noqa: BLE001 - a server without a useful model list
                models = []
        owners = {OWNERS.get(str(m.get("owned_by")).lower()) for m in models} - {None}
        server = owners.pop() if len(owners) == 1 else "unknown"
        if server == "unknown":
            info = _get_json(client, url + "/info")
            if "text-generation" in str(info.get("router", "")):
                server = "tgi"
                self.server_version = info.get("version")
        self.server = server
        ids = [m.get("id") for m in models if m.get("id")]
        if self.config.model == "embedded":  # the default: whatever the server serves, if it is one model
            if len(ids) != 1:
                raise GenerationError(f"{url} serves {len(ids)} models ({', '.join(map(str, ids[:5]))}); set generator.model")
            self.model_name = ids[0]
        elif ids and self.config.model not in ids and server in ("vllm", "sglang"):
            raise GenerationError(f"{url} does not serve {self.config.model!r} (it serves {', '.join(map(str, ids[:5]))})")
        served = next((m for m in models if m.get("id") == self.model_name), models[0] if len(models) == 1 else {})
        if server == "llama.cpp":
            props = _get_json(client, url + "/props")
            self.server_version = props.get("build_info")
            if isinstance(props.get("total_slots"), int):
                self._slots.append(props["total_slots"])
            meta = served.get("meta") or {}
            # the GGUF file, not where it lies: moving the file must not invalidate the journal
            name = os.path.basename(str(served.get("id") or self.model_name))
            return f"{name} (gguf {meta.get('ftype', '?')}, {meta.get('n_params', '?')} params, {meta.get('size', '?')} bytes)"
        if server == "vllm":
            self.server_version = _get_json(client, url + "/version").get("version")
        self.served_model = served.get("root") or served.get("id") or self.model_name
        return str(self.model_name)

    def model_identity(self) -> str:
        self._probe()
        return self.identity

    def fingerprint_params(self, config: GeneratorConfig) -> dict:
        self._probe()
        params: dict[str, Any] = {"backend": "openai", "api": config.api, "extra": self.extra}
        from curation.recipe.sections import OPENAI_REQUEST_DEFAULTS

        # only what differs from the defaults: journals written before these settings keep their fingerprints
        shape = {name: getattr(config, name) for name, default in OPENAI_REQUEST_DEFAULTS.items() if getattr(config, name, default) != default}
        if shape:
            params["request"] = shape
        if not self.chat:
            params["chat_template"] = config.chat_template or "none"
        if self.use_n and config.samples > 1:
            params["sampled"] = {"n": config.samples}  # n-batched samples depend on the batch
        return params

    def provenance(self) -> dict:
        self._probe()
        return {
            "backend": "openai",
            "api": self.config.api,
            "server": self.server,
            "server_version": self.server_version,
            "model_id": self.identity,
            "model_name": self.model_name,
            "logprob_kind": self.logprob_kind if self.config.logprobs else "none",
            "use_n": self.use_n,
            "request_defaults": self.extra,
            "endpoints": len(self.endpoints),
        }

    def group(self, requests: Sequence[TraceRequest]) -> list[list[TraceRequest]]:
        if not self.use_n:
            return [[request] for request in requests]
        references = [[r] for r in requests if r.is_reference]
        samples = [r for r in requests if not r.is_reference]
        return references + ([samples] if samples else [])

    # ------------------------------------------------------------------ requests
    def body(self, group: list[TraceRequest]) -> tuple[dict, list[int]]:
        """The request body, and which returned choice answers each request of the group."""
        first = group[0]
        params = first.params
        config = self.config
        body: dict[str, Any] = {"model": self.model_name}
        if self.chat:
            body["messages"] = first.chat
        else:
            body["prompt"] = self._render(first.chat)
        # OpenAI's reasoning models refuse max_tokens (400 unsupported_parameter) and want max_completion_tokens
        body[config.max_tokens_param] = params.max_new_tokens
        if not config.logprobs:
            pass  # a chat API that gives none, or refuses the field (400 unsupported_parameter)
        elif self.chat:
            body["logprobs"] = True
            if params.top_logprobs > 0:
                body["top_logprobs"] = params.top_logprobs
        else:  # legacy completions: logprobs is the number of alternatives
            body["logprobs"] = max(params.top_logprobs, 1)
        if params.stop:
            body["stop"] = list(params.stop)
        if config.reasoning_effort is not None:
            body["reasoning_effort"] = config.reasoning_effort
        body.update(self.extra)
        if params.greedy:
            if config.send_sampling:
                body["temperature"] = 0.0
            return body, [0]
        if config.send_sampling:
            body["temperature"] = params.temperature
            body["top_p"] = params.top_p
        if self.use_n and first.group_size > 1:
            # one request for all K samples: its seed is sample 1's, choice i is sample i + 1
            body["n"] = first.group_size
            body["seed"] = derive_seed(self.config.seed, first.prompt_id, 1)
            return body, [r.sample_index - 1 for r in group]
        body["seed"] = first.seed
        return body, [0]

    async def generate(self, group: list[TraceRequest], endpoint: str | None = None) -> list[Trace]:
        endpoint = endpoint or self.endpoints[0]
        body, choice_of = self.body(group)
        if any(request.early_stop is not None for request in group):
            if len(group) > 1 or "n" in body:
                # adaptive sampling never batches with n; a cut cannot be applied to one choice of n
                raise GenerationError(f"early_stop requests cannot be sent in an n-batched group ({len(group)} requests, n={body.get('n', 1)}): set generator.use_n: false")
            return [await self._generate_stream(group[0], endpoint, body)]
        try:
            response = await self._clients.post_json(endpoint + self.path, dumps(body))
        except httpx.TransportError as exc:
            raise transport_error(exc) from None
        if response.status_code != 200:
            raise request_rejected(response.status_code, response.content, response.headers, self.section)
        data = decode_response(response, _RESPONSE)
        choices = data.choices
        if not choices:
            raise RetryableError("response without choices")
        wanted = body.get("n", 1)
        if len(choices) < wanted:
            raise GenerationError(f"asked for n={wanted} samples, the server returned {len(choices)}: set generator.use_n: false")
        by_index = {choice.index: choice for choice in choices} if wanted > 1 else {0: choices[0]}
        prompt_tokens = data.usage.prompt_tokens if data.usage is not None else None
        # the server's count of one choice's tokens: only meaningful when it answered one choice
        completion_tokens = data.usage.completion_tokens if data.usage is not None and wanted == 1 else None
        return [self._trace(request, by_index[index], body, prompt_tokens, completion_tokens) for request, index in zip(group, choice_of)]

    def _trace(self, request: TraceRequest, choice: _Choice, body: dict, prompt_tokens: int | None, completion_tokens: int | None = None) -> Trace:
        trace = self._choice_trace(request, choice, body, prompt_tokens, completion_tokens)
        if isinstance(choice.stop_reason, str):  # vLLM: a stop string ended it, so no end-of-turn token follows (curation.scorer)
            trace.usage["stop_sequence"] = choice.stop_reason
        return trace

    def _choice_trace(self, request: TraceRequest, choice: _Choice, body: dict, prompt_tokens: int | None, completion_tokens: int | None = None) -> Trace:
        logprobs = choice.logprobs
        message = choice.message
        text = (message.content if message is not None else None) if self.chat else choice.text
        reasoning = message.thought if self.chat and message is not None else None
        if not self.config.logprobs:
            # asked for none: the trace is its text and thinking (token metrics come from a scorer: section)
            return self._make_trace(request, text, [], [], [], choice.finish_reason, body, prompt_tokens, reasoning, [], completion_tokens)
        if logprobs is None:
            self._replies_without_logprobs += 1
            if self._logprobs_seen or self._replies_without_logprobs < MISSING_LOGPROBS_TO_STOP:
                # llama-server now and then answers one request without them (seen in the study, 1 question in 258):
                # that question fails and the run goes on; a server that never gives them is a recipe problem (below)
                raise GenerationError("the server returned no logprobs for this request")
            raise RequestRejected(
                f"the server returned no logprobs: set {self.section}.logprobs: false for a chat API that gives none "
                "(token metrics then need a scorer: section)"
            )
        self._logprobs_seen = True
        content = logprobs.content
        k = request.params.top_logprobs
        if content is not None:
            token_logprobs = [entry.logprob for entry in content]
            top = [[alt.logprob for alt in entry.top_logprobs] if entry.top_logprobs else [] for entry in content] if k else []
            ids = [entry.id for entry in content] if content and content[0].id is not None else []
            tokens = [entry.token for entry in content] if content and content[0].token is not None else []
        else:  # legacy completions: tokens, token_logprobs, top_logprobs as {token: logprob}
            token_logprobs = list(logprobs.token_logprobs or [])
            rows = logprobs.top_logprobs or []
            top = [_top_row(row, k) for row in rows] if k else []
            ids = []
            tokens = list(logprobs.tokens or [])
        return self._make_trace(request, text, token_logprobs, top, ids, choice.finish_reason, body, prompt_tokens, reasoning, tokens)

    def _make_trace(
        self, request: TraceRequest, text: str | None, token_logprobs: list, top: list, ids: list, raw_finish: str | None, body: dict, prompt_tokens: int | None,
        reasoning: str | None = None, tokens: list | None = None, completion_tokens: int | None = None,
    ) -> Trace:
        if None in token_logprobs:
            token_logprobs = [float("nan") if value is None else value for value in token_logprobs]
        usage: dict[str, Any] = {"finish_reason": raw_finish}
        if token_logprobs or self.config.logprobs:
            usage["completion_tokens"] = len(token_logprobs)
        elif completion_tokens is not None:  # without logprobs, the server's count is all there is
            usage["completion_tokens"] = completion_tokens
        if prompt_tokens is not None:
            usage["prompt_tokens"] = prompt_tokens
        if "n" in body:
            usage["n"] = body["n"]
        if tokens and (len(tokens) != len(token_logprobs) or None in tokens):
            tokens = []  # not 1:1 with the logprobs: useless for locating the answer
        span = reasoning_span(text, reasoning, tokens, markers=self.markers, stop=request.params.stop, expect_thinking=self.expect_thinking)
        return Trace(
            fingerprint=request.fingerprint,
            prompt_id=request.prompt_id,
            sample_index=request.sample_index,
            text=span.text,
            token_logprobs=token_logprobs,
            top_logprobs=top,
            finish_reason="length" if raw_finish == "length" else "stop",
            logprob_kind=self.logprob_kind if self.config.logprobs else "none",
            seed=body.get("seed"),
            token_ids=ids,
            model=self.identity,
            usage=usage,
            reasoning=span.reasoning,
            tokens=tokens or [],
            answer_start=span.answer_start,
            alignment=span.alignment,
        )

    async def _generate_stream(self, request: TraceRequest, endpoint: str, body: dict) -> Trace:
        """One trace over `stream: true`, cut once its window confidence falls below request.early_stop."""
        stop: EarlyStop = request.early_stop
        confidence = WindowConfidence(stop.window, stop.threshold)
        received = _Streamed()
        client = self._clients.get()
        try:
            async with client.stream("POST", endpoint + self.path, content=dumps(self._stream_body(body)), headers=JSON_HEADERS) as response:
                if response.status_code != 200:
                    raise request_rejected(response.status_code, await response.aread(), response.headers, self.section)
                cut = await self._read_stream(response, request.params.top_logprobs, confidence, received)
                if cut is not None:
                    # built before leaving `client.stream`, which drops the connection
                    return self._early_stopped_trace(request, body, received, *cut)
        except httpx.TransportError as exc:
            raise transport_error(exc) from None
        return self._streamed_trace(request, body, received)

    def _stream_body(self, body: dict) -> dict:
        """The non-streaming body plus `stream`, and `stream_options` where the server takes it (the usage chunk brings prompt_tokens)."""
        stream_body = {**body, "stream": True}
        if self.server in SERVERS_WITH_STREAM_USAGE:
            stream_body["stream_options"] = {"include_usage": True}
        return stream_body

    async def _read_stream(self, response: httpx.Response, k: int, confidence: WindowConfidence, received: _Streamed) -> tuple[int, str] | None:
        """Reads the SSE chunks into `received`: (tokens kept, their text) once `confidence` says cut, None when the stream ends.

        This runs once per streamed token, so the loop works on locals (the token lists are
        `received`'s own; the strings and flags are written back once, on the way out) and
        allocates nothing per chunk beyond what decoding it needs.
        """
        logprobs, top, ids, strings = received.logprobs, received.top, received.ids, received.strings
        text = ""
        thought = ""  # the thinking the server's parser streams apart from `content`
        unscored_thinking = False
        pending = False  # the window said stop at the last token so far: cut if another token comes
        try:
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue  # blank separators, `:` keep-alive comments, `event:` lines
                payload = line[5:].strip()
                if payload == "[DONE]":
                    received.done = True
                    break
                chunk = _decode_chunk(payload)
                if chunk.error is not None or chunk.object == "error":
                    raise _stream_error(chunk.error if chunk.error is not None else loads(payload))
                if chunk.usage is not None and chunk.usage.prompt_tokens is not None:
                    received.prompt_tokens = chunk.usage.prompt_tokens
                for choice in chunk.choices:
                    if choice.index != 0:
                        continue
                    delta = choice.delta
                    piece = (delta.content if delta is not None else None) if self.chat else choice.text
                    piece = piece or ""
                    if delta is not None and self.chat:
                        thinking_piece = delta.reasoning or delta.reasoning_content or delta.thinking or ""
                        thought += thinking_piece
                        if thinking_piece and choice.logprobs is None:
                            unscored_thinking = True  # SGLang before #28601: reasoning chunks carry no logprobs
                    tokens = _chunk_tokens(choice.logprobs, k)
                    if pending and tokens:
                        # the token after the one that fell below: the cut is real (the text held
                        # so far ends with that token, as far as the server's chunks tell)
                        return len(logprobs), text
                    for position, (logprob, row, token_id, token) in enumerate(tokens):
                        logprobs.append(logprob)
                        top.append(row)
                        ids.append(token_id)
                        strings.append(token)
                        if not pending and confidence.push(row):
                            if position + 1 < len(tokens):  # more tokens in this very chunk (vLLM can send several)
                                return len(logprobs), text + _text_through(tokens, position, piece)
                            pending = True
                    # llama-server sends one token per chunk; text a server held back (a possible
                    # stop sequence) arrives with a later token's chunk, so a cut trace's text can
                    # lack the last few tokens' text, never carry later tokens' text
                    text += piece
                    if choice.finish_reason is not None:
                        received.finish = choice.finish_reason
        finally:
            received.text, received.thought, received.unscored_thinking = text, thought, unscored_thinking
        return None

    def _early_stopped_trace(self, request: TraceRequest, body: dict, received: _Streamed, kept: int, kept_text: str) -> Trace:
        """The trace of a cut stream: its first `kept` tokens and `kept_text`, with finish_reason early_stop."""
        k = request.params.top_logprobs
        ids = received.ids
        trace = self._make_trace(
            request, kept_text, received.logprobs[:kept], received.top[:kept] if k else [], ids[:kept] if ids and ids[0] is not None else [], None, body, None,
            received.thought or None, received.strings[:kept],
        )
        trace.finish_reason = EARLY_STOP
        trace.usage = {"finish_reason": EARLY_STOP, "completion_tokens": kept, "early_stop": request.early_stop.to_json()}
        return trace

    def _streamed_trace(self, request: TraceRequest, body: dict, received: _Streamed) -> Trace:
        """The trace of a stream that ran to its end (a finish_reason and `[DONE]`), else RetryableError."""
        if received.finish is None or not received.done:
            missing = "finish_reason" if received.finish is None else "[DONE]"
            raise RetryableError(f"stream cut short: it ended after {len(received.logprobs)} tokens without {missing}")
        k = request.params.top_logprobs
        ids = received.ids
        trace = self._make_trace(
            request, received.text, received.logprobs, received.top if k else [], ids if ids and ids[0] is not None else [], received.finish, body,
            received.prompt_tokens, received.thought or None, received.strings,
        )
        if received.unscored_thinking:
            # the token arrays hold the answer's tokens only: say so, the thinking span has no logprobs
            trace.usage["thinking_logprobs"] = "missing"
            trace.answer_start = 0 if trace.alignment == "ok" else trace.answer_start
        return trace

    async def aclose(self) -> None:
        await self._clients.aclose()


def reasoning_fields(server: str, mode: str | None) -> dict:
    """The request fields that ask ``server`` for thinking (mode "on"/"off"/an effort), or {} for the server's default."""
    if mode is None:
        return {}
    fields: dict[str, Any] = {}
    if server in SERVERS_WITH_TEMPLATE_KWARGS:
        fields["chat_template_kwargs"] = {"enable_thinking": mode != "off"}
    if mode not in ("on", "off") and server in SERVERS_WITH_EFFORT:
        fields["reasoning_effort"] = mode
    return fields


def _get_json(client: httpx.Client, url: str) -> dict:
    """A best-effort GET for facts worth recording (server version); {} when unavailable."""
    try:
        response = client.get(url)
        data = loads(response.content) if response.status_code == 200 else {}
    except Exception:  # noqa: BLE001
        return {}
    return data if isinstance(data, dict) else {}


def _top_row(alternatives: dict[str, float] | None, k: int) -> list[float]:
    """A legacy completions top_logprobs entry ({token: logprob}) as the trace stores it: best first, k at most."""
    return sorted((alternatives or {}).values(), reverse=True)[:k]


def _decode_chunk(payload: str) -> _Chunk:
    try:
        return _CHUNK.decode(payload)
    except msgspec.ValidationError as exc:
        raise GenerationError(f"unexpected stream chunk: {exc}") from None
    except msgspec.DecodeError as exc:  # a line cut short by a dropped connection
        raise RetryableError(f"malformed stream chunk ({len(payload)} bytes): {exc}") from None


def _chunk_tokens(logprobs: _StreamLogprobs | None, k: int) -> list[tuple[float | None, list[float], int | None, str | None]]:
    """(logprob, top-k row as the non-streaming path stores it, id, token string) of each token in a chunk."""
    if logprobs is None:
        return []
    if logprobs.content is not None:
        return [(e.logprob, [alt.logprob for alt in e.top_logprobs] if k and e.top_logprobs else [], e.id, e.token) for e in logprobs.content]
    values = logprobs.token_logprobs or []
    rows = logprobs.top_logprobs or []
    strings = logprobs.tokens or []
    return [
        (value, _top_row(rows[i] if i < len(rows) else None, k) if k else [], None, strings[i] if i < len(strings) else None)
        for i, value in enumerate(values)
    ]


def _text_through(tokens: list[tuple[float | None, list[float], int | None, str | None]], position: int, piece: str) -> str:
    """The part of a chunk's text `piece` that tokens[: position + 1] make up: their strings where they start it, else all of it."""
    head = "".join(t or "" for _, _, _, t in tokens[: position + 1])
    return head if piece.startswith(head) else piece


def _stream_error(error: Any) -> GenerationError:
    """An error object inside a 200 stream, sorted like an HTTP error with the status it carries."""
    error = error if isinstance(error, dict) else {"message": str(error)}
    code, kind = error.get("code"), error.get("type")
    status = code if isinstance(code, int) and 400 <= code < 600 else STREAM_ERROR_STATUS.get(str(kind), 500)
    label = str(kind) if kind else str(code) if code is not None else "error"
    if isinstance(code, str):  # OpenAI's codes say more than its types (insufficient_quota)
        label = code
    message = error.get("message") or str(error)[:200]
    sorted_as = status_error(status, dumps({"error": {"message": message, "type": label}}), httpx.Headers())
    reason = f"error inside the stream ({label}, {status}): {message}"
    if isinstance(sorted_as, RetryableError):
        return RetryableError(reason, overload=sorted_as.overload, endpoint_fault=sorted_as.endpoint_fault)
    return GenerationError(reason)
