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
"""

from __future__ import annotations

import logging
import os
from typing import Any, Sequence

import httpx
import msgspec

from curation.backends.http import (
    decode_response,
    dumps,
    endpoint_setup,
    loads,
    probe,
    status_error,
    sync_client,
    transport_error,
)
from curation.backends.templates import local_renderer
from curation.types import GenerationError, RetryableError, Trace, TraceRequest, derive_seed
from curation.recipe import GeneratorConfig

log = logging.getLogger(__name__)

SERVERS_WITH_N = {"llama.cpp", "vllm", "sglang", "openai"}
# request fields that switch off each server's own sampling truncations, so that the recipe's
# temperature and top_p are the whole sampling procedure
NEUTRAL_SAMPLING = {
    "llama.cpp": {"top_k": 0, "min_p": 0.0},
    "vllm": {"top_k": -1, "min_p": 0.0, "repetition_penalty": 1.0},
    "sglang": {"top_k": -1, "min_p": 0.0, "repetition_penalty": 1.0},
}
OWNERS = {"llamacpp": "llama.cpp", "vllm": "vllm", "sglang": "sglang", "openai": "openai", "system": "openai", "openai-internal": "openai"}


class _Alternative(msgspec.Struct):
    logprob: float


class _Entry(msgspec.Struct):
    logprob: float | None = None
    id: int | None = None  # llama-server adds the token id; vLLM and OpenAI do not
    top_logprobs: list[_Alternative] | None = None


class _Logprobs(msgspec.Struct):
    content: list[_Entry] | None = None  # chat format (and llama-server's /v1/completions)
    token_logprobs: list[float | None] | None = None  # legacy completions format
    top_logprobs: list[dict[str, float] | None] | None = None


class _Message(msgspec.Struct):
    content: str | None = None


class _Choice(msgspec.Struct):
    index: int = 0
    message: _Message | None = None
    text: str | None = None
    logprobs: _Logprobs | None = None
    finish_reason: str | None = None


class _Usage(msgspec.Struct):
    prompt_tokens: int | None = None


class _Response(msgspec.Struct):
    """What curate reads of a (chat) completion; token strings and byte lists are skipped."""

    choices: list[_Choice] = []
    usage: _Usage | None = None


_RESPONSE = msgspec.json.Decoder(_Response)


class OpenAIBackend:
    name = "openai"
    logprob_kind = "raw"

    def __init__(self, config: GeneratorConfig, *, transport: Any = None):
        """`transport`: an httpx transport used for every call (tests and benchmarks use MockTransport)."""
        self.config = config
        self.endpoints, self._headers, self._clients = endpoint_setup(config, "openai", transport)
        self.concurrency = config.concurrency
        self._transport = transport
        self.chat = config.api == "chat"
        self.path = "/v1/chat/completions" if self.chat else "/v1/completions"
        self._render = None if self.chat else local_renderer(config.chat_template or "none")
        self._probed = False
        self._slots: list[int] = []  # llama-server's parallel slots per endpoint
        self.server = "unknown"
        self.server_version: str | None = None
        self.served_model: str | None = None
        self.model_name = config.model
        self.identity: str | None = None
        self.use_n = False
        self.extra: dict = {}

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
        self.extra = {**NEUTRAL_SAMPLING.get(self.server, {}), **self.config.extra_body}
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
            "logprob_kind": self.logprob_kind,
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
        body: dict[str, Any] = {"model": self.model_name}
        if self.chat:
            body["messages"] = first.chat
        else:
            body["prompt"] = self._render(first.chat)
        body["max_tokens"] = params.max_new_tokens
        if self.chat:
            body["logprobs"] = True
            if params.top_logprobs > 0:
                body["top_logprobs"] = params.top_logprobs
        else:  # legacy completions: logprobs is the number of alternatives
            body["logprobs"] = max(params.top_logprobs, 1)
        if params.stop:
            body["stop"] = list(params.stop)
        body.update(self.extra)
        if params.greedy:
            body["temperature"] = 0.0
            return body, [0]
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
        try:
            response = await self._clients.post_json(endpoint + self.path, dumps(body))
        except httpx.TransportError as exc:
            raise transport_error(exc) from None
        if response.status_code != 200:
            raise status_error(response.status_code, response.content, response.headers)
        data = decode_response(response, _RESPONSE)
        choices = data.choices
        if not choices:
            raise RetryableError("response without choices")
        wanted = body.get("n", 1)
        if len(choices) < wanted:
            raise GenerationError(f"asked for n={wanted} samples, the server returned {len(choices)}: set generator.use_n: false")
        by_index = {choice.index: choice for choice in choices} if wanted > 1 else {0: choices[0]}
        prompt_tokens = data.usage.prompt_tokens if data.usage is not None else None
        return [self._trace(request, by_index[index], body, prompt_tokens) for request, index in zip(group, choice_of)]

    def _trace(self, request: TraceRequest, choice: _Choice, body: dict, prompt_tokens: int | None) -> Trace:
        logprobs = choice.logprobs
        if logprobs is None:
            raise GenerationError("the server returned no logprobs (does it support `logprobs`?)")
        content = logprobs.content
        k = request.params.top_logprobs
        if content is not None:
            token_logprobs = [entry.logprob for entry in content]
            top = [[alt.logprob for alt in entry.top_logprobs] if entry.top_logprobs else [] for entry in content] if k else []
            ids = [entry.id for entry in content] if content and content[0].id is not None else []
        else:  # legacy completions: tokens, token_logprobs, top_logprobs as {token: logprob}
            token_logprobs = list(logprobs.token_logprobs or [])
            rows = logprobs.top_logprobs or []
            top = [sorted((row or {}).values(), reverse=True)[:k] for row in rows] if k else []
            ids = []
        if None in token_logprobs:
            token_logprobs = [float("nan") if value is None else value for value in token_logprobs]
        text = (choice.message.content if choice.message is not None else None) if self.chat else choice.text
        raw_finish = choice.finish_reason
        usage: dict[str, Any] = {"finish_reason": raw_finish, "completion_tokens": len(token_logprobs)}
        if prompt_tokens is not None:
            usage["prompt_tokens"] = prompt_tokens
        if "n" in body:
            usage["n"] = body["n"]
        return Trace(
            fingerprint=request.fingerprint,
            prompt_id=request.prompt_id,
            sample_index=request.sample_index,
            text=text or "",
            token_logprobs=token_logprobs,
            top_logprobs=top,
            finish_reason="length" if raw_finish == "length" else "stop",
            logprob_kind=self.logprob_kind,
            seed=body.get("seed"),
            token_ids=ids,
            model=self.identity,
            usage=usage,
        )

    async def aclose(self) -> None:
        await self._clients.aclose()


def _get_json(client: httpx.Client, url: str) -> dict:
    """A best-effort GET for facts worth recording (server version); {} when unavailable."""
    try:
        response = client.get(url)
        data = loads(response.content) if response.status_code == 200 else {}
    except Exception:  # noqa: BLE001
        return {}
    return data if isinstance(data, dict) else {}
