"""The `tgi` backend: text-generation-inference's native `POST /generate`, one request per trace.

Why the native route: it returns every token with its id and logprob (`details: true`) and up
to 5 alternatives per token (`top_n_tokens`), and takes a `seed` per request. `best_of` cannot
be combined with a seed and TGI has no `n`, so K samples are K requests with K seeds; TGI
batches concurrent requests itself, so nothing is lost by that.

What TGI's router actually does, which the request builder follows (checked against its code
and the OpenAPI spec vendored in tests/servers/tgi_spec):
- `details` defaults to false in the router whatever the spec says, so it is always sent.
- A seed alone does not make TGI sample: sampled traces send `do_sample: true`; the greedy
  reference sends no sampling setting at all (any warper, even temperature, turns sampling on).
- `seed`, `top_n_tokens` and `temperature` must be > 0 and `top_p` < 1: a value that means
  "off" is omitted instead. At most `max_stop_sequences` stop strings (4 by default).
- Logprobs are of the distribution sampled from, after temperature and top-p, so traces are
  marked `logprob_kind = "processed"`. The EOS token is in `tokens` (and its logprob in the
  trace) but not in `generated_text`; a stop sequence stays in the text.

Prompts: /generate takes text, so chat messages are rendered first. By default TGI renders
them itself with the model's own template (`POST /chat_tokenize`, once per question);
`generator.chat_template` can name `chatml`, `none` or a jinja template instead
(see curation.backends.templates).

`generator.stream: true` uses `/generate_stream`, for long traces behind proxies that cut idle
connections. TGI reports errors inside the stream as `data:{"error": ..., "error_type": ...}`
events over HTTP 200, and a stream that ends without its final event is incomplete; both are
mapped to the same retryable/permanent errors as the non-streaming route.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import OrderedDict
from typing import Any, Sequence

import httpx
import msgspec

from curation.backends.http import (
    JSON_HEADERS,
    decode_response,
    dumps,
    endpoint_setup,
    loads,
    parse_json,
    probe,
    status_error,
    sync_client,
    transport_error,
)
from curation.backends.templates import SERVER, local_renderer
from curation.deepconf import EARLY_STOP, WindowConfidence
from curation.reasoning import capture as reasoning_span
from curation.reasoning import expects_thinking, markers_from
from curation.recipe.sections import GeneratorConfig
from curation.types import GenerationError, RetryableError, Trace, TraceRequest

log = logging.getLogger(__name__)

FINISH_REASONS = {"length": "length", "eos_token": "stop", "stop_sequence": "stop"}
PROMPT_CACHE = 4096  # rendered prompts kept (a question's K+1 requests reuse one)


class _Token(msgspec.Struct):
    id: int
    logprob: float | None = None
    text: str = ""  # the token's string: where inline thinking ends and the answer starts


class _Alternative(msgspec.Struct):
    logprob: float


class _Details(msgspec.Struct):
    finish_reason: str
    tokens: list[_Token]
    top_tokens: list[list[_Alternative]] | None = None
    seed: int | None = None


class _GenerateResponse(msgspec.Struct):
    """What curate reads of TGI's GenerateResponse (token texts are not kept)."""

    generated_text: str
    details: _Details | None = None


_GENERATE = msgspec.json.Decoder(_GenerateResponse)


def _template_id(template: str) -> str:
    if template in (SERVER, "chatml", "none"):
        return template
    return "jinja:" + hashlib.sha256(template.encode()).hexdigest()[:16]



def tgi_identity(info: dict, model: str | None = None) -> str:
    """The served model as TGI's /info names it, ``model_id@model_sha``: the generator's and the scorer's
    identity alike, so that a scorer on the same server recognises the generator's token ids (and a journal
    written before the two agreed keeps its name: ``unknown-sha`` where /info gives no sha)."""
    return f"{info.get('model_id', model)}@{info.get('model_sha') or 'unknown-sha'}"

class TGIBackend:
    name = "tgi"
    logprob_kind = "processed"

    def __init__(self, config: GeneratorConfig, *, transport: Any = None):
        """`transport`: an httpx transport used for every call (tests and benchmarks use MockTransport)."""
        self.config = config
        self.endpoints, self._headers, self._clients = endpoint_setup(config, "tgi", transport)
        self.concurrency = config.concurrency
        self.markers = markers_from(getattr(config, "thinking_markers", None))
        self.expect_thinking = expects_thinking(getattr(config, "reasoning", None))
        self._transport = transport
        self.template = config.chat_template or SERVER
        self._render = None if self.template == SERVER else local_renderer(self.template)
        self._prompts: OrderedDict[str, Any] = OrderedDict()
        self._info: dict | None = None
        self._identity: str | None = None
        self._greedy_parameters, self._sampled_parameters = self._parameters(config)

    # ------------------------------------------------------------------ start-up
    def info(self) -> dict:
        """Every endpoint's /info, checked to serve the same model (fetched once)."""
        if self._info is not None:
            return self._info
        infos = []
        with sync_client(self._headers, min(self.config.timeout, 30.0), transport=self._transport) as client:
            for url in self.endpoints:
                try:
                    response = probe(client, "GET", url + "/info")
                except RetryableError as exc:
                    raise GenerationError(f"TGI endpoint {url} is not answering /info: {exc}") from None
                if response.status_code != 200:
                    raise GenerationError(f"TGI endpoint {url}: /info answered {status_error(response.status_code, response.content, response.headers)}")
                infos.append(loads(response.content))
        first = infos[0]
        for url, info in zip(self.endpoints[1:], infos[1:]):
            if (info.get("model_id"), info.get("model_sha")) != (first.get("model_id"), first.get("model_sha")):
                raise GenerationError(
                    f"endpoints serve different models: {first.get('model_id')}@{first.get('model_sha')} and "
                    f"{info.get('model_id')}@{info.get('model_sha')} ({url}); traces from both cannot be mixed"
                )
        if self.config.model not in ("embedded", first.get("model_id")):
            log.warning("generator.model is %r but the TGI endpoint serves %r; the endpoint's model is used", self.config.model, first.get("model_id"))
        if len(self.config.stop) > int(first.get("max_stop_sequences", 4)):
            raise GenerationError(f"TGI accepts at most {first.get('max_stop_sequences')} stop sequences; generator.stop has {len(self.config.stop)}")
        if self.config.max_new_tokens >= int(first.get("max_total_tokens", 1 << 30)):
            raise GenerationError(f"generator.max_new_tokens must be < the endpoint's max_total_tokens ({first.get('max_total_tokens')}), which counts the prompt too")
        limit = min(int(info.get("max_concurrent_requests", self.concurrency)) for info in infos)
        if limit < self.concurrency:
            log.info("TGI allows %d concurrent requests; using that instead of %d", limit, self.concurrency)
            self.concurrency = max(1, limit)
        self._info = first
        return first

    def model_identity(self) -> str:
        if self._identity is None:
            info = self.info()
            self._identity = tgi_identity(info)
        return self._identity

    def fingerprint_params(self, config: GeneratorConfig) -> dict:
        return {"backend": "tgi", "chat_template": _template_id(self.template)}

    def provenance(self) -> dict:
        info = self.info()
        return {
            "backend": "tgi",
            "model_id": info.get("model_id"),
            "model_sha": info.get("model_sha"),
            "server": "text-generation-inference",
            "server_version": info.get("version"),
            "server_sha": info.get("sha"),
            "docker_label": info.get("docker_label"),
            "logprob_kind": self.logprob_kind,
            "chat_template": _template_id(self.template),
            "endpoints": len(self.endpoints),
        }

    def group(self, requests: Sequence[TraceRequest]) -> list[list[TraceRequest]]:
        return [[request] for request in requests]  # no `n` in TGI; best_of cannot take a seed

    # ------------------------------------------------------------------ requests
    @staticmethod
    def _parameters(config: GeneratorConfig) -> tuple[dict, dict]:
        common: dict[str, Any] = {"details": True, "max_new_tokens": config.max_new_tokens}
        if config.top_logprobs > 0:
            common["top_n_tokens"] = config.top_logprobs
        if config.stop:
            common["stop"] = list(config.stop)
        sampled = {**common, "do_sample": True}
        if config.temperature != 1.0:
            sampled["temperature"] = config.temperature
        if config.top_p < 1.0:
            sampled["top_p"] = config.top_p
        return common, sampled

    def body(self, request: TraceRequest, prompt: str) -> dict:
        if request.params.greedy:
            return {"inputs": prompt, "parameters": self._greedy_parameters}
        return {"inputs": prompt, "parameters": {**self._sampled_parameters, "seed": _wire_seed(request)}}

    async def prompt(self, request: TraceRequest, endpoint: str) -> str:
        if self._render is not None:
            cached = self._prompts.get(request.prompt_id)
            if cached is None:
                cached = self._render(request.chat)
                self._remember(request.prompt_id, cached)
            return cached
        entry = self._prompts.get(request.prompt_id)
        if isinstance(entry, str):
            return entry
        if entry is None:  # the first request of a question asks; the others wait for its answer
            entry = asyncio.ensure_future(self._chat_tokenize(request.chat, endpoint))
            self._prompts[request.prompt_id] = entry
        try:
            text = await asyncio.shield(entry)
        except BaseException:
            if self._prompts.get(request.prompt_id) is entry and entry.done():
                del self._prompts[request.prompt_id]  # let a retry ask again
            raise
        self._remember(request.prompt_id, text)
        return text

    def _remember(self, key: str, text: str) -> None:
        self._prompts[key] = text
        self._prompts.move_to_end(key)
        while len(self._prompts) > PROMPT_CACHE:
            oldest = next(iter(self._prompts))
            if not isinstance(self._prompts[oldest], str):
                break  # still being fetched
            del self._prompts[oldest]

    async def _chat_tokenize(self, messages: list[dict[str, str]], endpoint: str) -> str:
        try:
            response = await self._clients.post_json(endpoint + "/chat_tokenize", dumps({"messages": messages}))
        except httpx.TransportError as exc:
            raise transport_error(exc) from None
        if response.status_code != 200:
            error = status_error(response.status_code, response.content, response.headers)
            if isinstance(error, RetryableError):
                raise error
            raise GenerationError(
                f"TGI could not apply its chat template (/chat_tokenize: {error}); set generator.chat_template "
                "to 'chatml', 'none' or a jinja template"
            )
        return parse_json(response)["templated_text"]

    async def generate(self, group: list[TraceRequest], endpoint: str | None = None) -> list[Trace]:
        endpoint = endpoint or self.endpoints[0]
        request = group[0]
        prompt = await self.prompt(request, endpoint)
        body = dumps(self.body(request, prompt))
        if self.config.stream or request.early_stop is not None:  # a trace can only be cut while it streams
            return [await self._generate_stream(request, endpoint, body)]
        try:
            response = await self._clients.post_json(endpoint + "/generate", body)
        except httpx.TransportError as exc:
            raise transport_error(exc) from None
        if response.status_code != 200:
            raise status_error(response.status_code, response.content, response.headers)
        data = decode_response(response, _GENERATE)
        details = data.details
        if details is None:
            raise GenerationError("TGI answered without `details` (is this really /generate of a TGI server?)")
        tokens = details.tokens
        logprobs = [t.logprob for t in tokens]
        top = [[alt.logprob for alt in row] for row in details.top_tokens] if details.top_tokens and self.config.top_logprobs else []
        prompt_tokens = response.headers.get("x-prompt-tokens")
        trace = self._trace(request, data.generated_text, logprobs, [t.id for t in tokens], top, details.finish_reason, details.seed, [t.text for t in tokens])
        if prompt_tokens is not None:
            trace.usage["prompt_tokens"] = int(prompt_tokens)
        return [trace]

    def _trace(
        self, request: TraceRequest, text: str, logprobs: list, ids: list[int], top: list, raw_finish: str | None, seed: int | None, tokens: list[str] | None = None
    ) -> Trace:
        if None in logprobs:  # TGI writes NaN as null
            logprobs = [float("nan") if value is None else value for value in logprobs]
        # TGI has no reasoning parser: a thinking model's <think>…</think> stays inline in the text
        span = reasoning_span(text, None, tokens, markers=self.markers, stop=request.params.stop, expect_thinking=self.expect_thinking)
        return Trace(
            fingerprint=request.fingerprint,
            prompt_id=request.prompt_id,
            sample_index=request.sample_index,
            text=span.text,
            token_logprobs=logprobs,
            top_logprobs=top,
            finish_reason=FINISH_REASONS.get(raw_finish, "stop"),
            logprob_kind=self.logprob_kind,
            seed=seed,
            token_ids=ids,
            model=self._identity,
            usage={"finish_reason": raw_finish, "completion_tokens": len(logprobs)},
            reasoning=span.reasoning,
            tokens=tokens or [],
            answer_start=span.answer_start,
            alignment=span.alignment,
        )

    async def _generate_stream(self, request: TraceRequest, endpoint: str, body: bytes) -> Trace:
        client = self._clients.get()
        tokens: list[dict] = []
        top_tokens: list[list[dict]] = []
        stop = request.early_stop
        confidence = WindowConfidence(stop.window, stop.threshold) if stop is not None else None

        def so_far(text: str | None, raw_finish: str | None, seed: int | None) -> Trace:
            """The trace of the tokens received so far (text: the server's, else the tokens' own)."""
            if text is None:
                text = "".join(t["text"] for t in tokens if not t.get("special"))
            top = [[alt["logprob"] for alt in row] for row in top_tokens] if self.config.top_logprobs else []
            return self._trace(request, text, [t["logprob"] for t in tokens], [t["id"] for t in tokens], top, raw_finish, seed, [t.get("text", "") for t in tokens])

        try:
            async with client.stream("POST", endpoint + "/generate_stream", content=body, headers=JSON_HEADERS) as response:
                if response.status_code != 200:
                    raise status_error(response.status_code, await response.aread(), response.headers)
                async for line in response.aiter_lines():
                    if not line.startswith("data:"):
                        continue  # blank separators, comments, keep-alives
                    try:
                        event = loads(line[5:])
                    except Exception as exc:  # noqa: BLE001 - a line cut short by a dropped connection
                        raise RetryableError(f"malformed stream event: {exc}") from None
                    if "error" in event:
                        raise _stream_error(event)
                    tokens.append(event["token"])
                    if event.get("top_tokens") is not None:
                        top_tokens.append(event["top_tokens"])
                    final = event.get("details") is not None or event.get("generated_text") is not None
                    if confidence is not None and not final and confidence.push([alt["logprob"] for alt in event.get("top_tokens") or ()]):
                        # leaving the `async with` closes the connection: TGI cancels a request whose
                        # stream is dropped, so the rest of the trace is never generated
                        trace = so_far(None, None, _wire_seed(request))
                        trace.finish_reason = trace.usage["finish_reason"] = EARLY_STOP
                        trace.usage["early_stop"] = stop.to_json()
                        return trace
                    if final:
                        details = event.get("details") or {}
                        trace = so_far(event.get("generated_text"), details.get("finish_reason"), details.get("seed"))
                        if details.get("input_length") is not None:
                            trace.usage["prompt_tokens"] = details["input_length"]
                        return trace
        except httpx.TransportError as exc:
            raise transport_error(exc) from None
        raise RetryableError(f"stream ended after {len(tokens)} tokens without its final event")

    async def aclose(self) -> None:
        await self._clients.aclose()
        # prompts being fetched belong to the loop that is ending
        for key in [k for k, v in self._prompts.items() if not isinstance(v, str)]:
            del self._prompts[key]


def _wire_seed(request: TraceRequest) -> int:
    # TGI rejects seed 0; derived seeds are < 2**31, so 2**31 cannot collide with one
    return request.seed if request.seed else 2**31


def _stream_error(event: dict) -> GenerationError:
    kind = event.get("error_type")
    message = f"stream error {kind}: {event.get('error')}"
    if kind == "validation":
        return GenerationError(message)
    return RetryableError(message, overload=kind == "overloaded")
