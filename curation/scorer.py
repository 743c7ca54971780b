"""Scorer: teacher-forced token logprobs of a trace under an open model, for teachers that give none.

A hosted teacher (o4-mini, Gemini) returns text without logprobs, yet msp, perplexity, entropy and
CoCoA read token logprobs. The scorer reads each trace back through an open model: the question's
messages rendered in the *scorer's own* chat template, then the trace's tokens, in one forward pass,
and takes each trace token's logprob (and the top-k) from the logits at the position before it.
That is also cross-model perplexity when the teacher did give logprobs: the card says which model
scored.

Routes (``scorer.backend``):
- ``local``: a transformers forward pass in-process (the embedded SmolLM2 by default). The prompt is
  read once and its keys and values are reused by every trace of the question; traces of similar
  length share right-padded batches (padding after a sequence cannot change a causal model's logits
  before it, and batches are grouped by length so little compute goes to padding).
- ``openai``: a vLLM server. ``POST /tokenize`` renders the chat template (``messages`` +
  ``add_generation_prompt``) and tokenizes the trace, then ``POST /v1/completions`` with the token
  ids as the prompt, ``max_tokens: 1`` and ``prompt_logprobs: k``: vLLM returns, per prompt
  position, ``{token_id: {logprob, rank, decoded_token}}`` holding the prompt token and the top k
  (``None`` for the first position).
- ``tgi``: ``POST /chat_tokenize`` renders the template, ``POST /tokenize`` gives the token offsets,
  then ``POST /generate`` with ``max_new_tokens: 1`` and ``decoder_input_details: true``: TGI's
  ``details.prefill`` lists every input token with its logprob (no top-k: TGI's prefill has none).

What is scored is the trace as the teacher wrote it: ``<think>reasoning</think>`` before the text
when the teacher's API returned the reasoning apart, then the text, then the scorer's end-of-turn
token when the trace ended by itself (``finish_reason: stop``; its logprob is part of the sequence,
as LM-Polygraph scores the final EOS). A trace cut at max_new_tokens, or by a stop sequence (one the
text still ends with, or one the generator reported: vLLM's ``stop_reason``, the local backend's
``stop_sequence``), has no end token. When the generator's own tokens are known and the generator
is the scorer's model, those tokens are read as they are: teacher forcing then reproduces the
generator's own raw logprobs (the correctness test), where re-tokenizing the text could split it
differently (the model wrote ``Up|regulated``; the text tokenizes as ``U|pre|g|ulated``). Known
means the trace's token ids (a generated trace, or an imported one with its ``token_ids`` column,
which a curate run's traces config publishes), or, on the local route, token strings that each
re-encode to one token that decodes to that string. Every other trace is re-tokenized from its
text and counted as ``retokenized`` (stats.json's provenance and the card), so a user knows how
many of the logprobs are of a split the generator may never have sampled.

The work runs through the generation runner (``generate.run_generation``: limits, retries,
backpressure, progress, Ctrl-C) and is journaled in ``scorer_tokens`` keyed by (trace fingerprint,
scorer key), so it resumes, is never paid twice, and a changed scorer re-scores without regenerating.
``score_text`` is the entry point for traces that come from elsewhere (imported traces).
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import json
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from curation.reasoning import capture as reasoning_span
from curation.types import REFERENCE_INDEX, GenerationError, Question, StageStats, Trace

log = logging.getLogger(__name__)

PROVENANCE_KEY = "scorer_provenance"
QUESTIONS_PER_PASS = 256  # questions whose traces are read from the journal and scored per runner pass


@dataclass(frozen=True)
class ScoreRequest:
    """One trace to read back: its prompt messages, what it says, and how it ended."""

    fingerprint: str  # the generated (or imported) trace's own fingerprint
    prompt_id: str
    sample_index: int
    messages: tuple[tuple[tuple[str, str], ...], ...]
    text: str
    reasoning: str | None = None
    ends_with_eos: bool = True
    token_ids: tuple[int, ...] | None = None  # the generator's own ids, when it is the scorer's model
    group_size: int = 1
    early_stop: Any = None  # the runner's TraceRequest interface; never set here

    @property
    def is_reference(self) -> bool:
        return self.sample_index == REFERENCE_INDEX

    @property
    def chat(self) -> list[dict[str, str]]:
        return [dict(message) for message in self.messages]

    @property
    def completion(self) -> str:
        return completion_text(self.text, self.reasoning)


@dataclass
class ForcedTokens:
    """A trace's tokens under the scorer: one entry per token, in order."""

    token_logprobs: list[float]
    top_logprobs: list[list[float]]  # best first; empty rows where the route gives no top-k
    tokens: list[str]
    token_ids: list[int]
    prompt_tokens: int = 0


def completion_text(text: str, reasoning: str | None) -> str:
    """The assistant turn as the teacher wrote it: its separate reasoning, in <think> tags, before the text."""
    return f"<think>\n{reasoning}\n</think>\n\n{text}" if reasoning else text


def hashable_messages(messages: Sequence[dict]) -> tuple:
    return tuple(tuple(sorted(m.items())) for m in messages)


def scorer_key(identity: str, route: dict) -> str:
    """What a scorer's numbers depend on (model identity, route, top-k), as the journal's second key."""
    text = json.dumps({"model": identity, **route}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _trace_of(request: ScoreRequest, forced: ForcedTokens, identity: str) -> Trace:
    # the scorer's own tokens of "<think>R</think>T": where its answer tokens start is found in them
    # (reasoning.capture), since the teacher's answer_start counts the teacher's tokens, not these
    span = reasoning_span(request.text, request.reasoning, forced.tokens) if request.reasoning else None
    return Trace(
        fingerprint=request.fingerprint,
        prompt_id=request.prompt_id,
        sample_index=request.sample_index,
        text="",
        token_logprobs=forced.token_logprobs,
        top_logprobs=forced.top_logprobs,
        finish_reason="stop",
        logprob_kind="teacher_forced",
        token_ids=forced.token_ids,
        model=identity,
        usage={"prompt_tokens": forced.prompt_tokens, "completion_tokens": len(forced.token_logprobs)},
        reasoning=request.reasoning,
        answer_start=span.answer_start if span is not None else 0,
        alignment=span.alignment if span is not None else "ok",
    )


# --------------------------------------------------------------------------- local
class LocalScorer:
    """A transformers forward pass in-process."""

    name = "local"
    concurrency = 1  # the model uses every core already
    endpoints = ["local"]

    def __init__(self, config):
        from curation.backends.local import EMBEDDED_MODEL_ID, resolve_model

        self.config = config
        self._model = None
        self._tokenizer = None
        self._eos: int | None = None
        self._cache_name = "past_key_values"
        self._last_logits_only: dict = {}
        self._lock = threading.Lock()
        _, gguf = resolve_model(config.model, config.gguf_file)
        self._identity = EMBEDDED_MODEL_ID if config.model == "embedded" else f"{config.model}{'/' + gguf if gguf else ''}@{config.revision or 'default'}"

    def model_identity(self) -> str:
        return self._identity

    def route(self) -> dict:
        return {"backend": "local", "top_logprobs": self.config.top_logprobs}

    def provenance(self) -> dict:
        return {"backend": "local", "model_id": self._identity, "top_logprobs": self.config.top_logprobs}

    def group(self, requests: Sequence[ScoreRequest]) -> list[list[ScoreRequest]]:
        return [list(requests)]  # one question: one prompt, its traces batched

    def own_tokens(self, trace: Trace, identity: str) -> tuple[int, ...] | None:
        """The generator's own token ids, when this scorer can force them as they are (see the module docstring).

        A trace that names no model (an import without a model column) is trusted only when its ids
        decode to its text under this tokenizer; token strings, only when each re-encodes to itself.
        """
        if trace.model is not None and trace.model != identity:
            return None
        _, tokenizer = self._ensure_loaded()
        if trace.token_ids:
            ids = tuple(int(i) for i in trace.token_ids)
            if trace.model == identity or trace.text.strip() in tokenizer.decode(list(ids), skip_special_tokens=True):
                return ids
            return None
        if not trace.tokens:
            return None
        encoded = tokenizer(list(trace.tokens), add_special_tokens=False)["input_ids"]
        if any(len(ids) != 1 for ids in encoded):
            return None
        ids = tuple(ids[0] for ids in encoded)
        decoded = tokenizer.batch_decode([[i] for i in ids])
        return ids if decoded == list(trace.tokens) else None

    def _ensure_loaded(self):
        with self._lock:
            if self._model is None:
                from curation.backends.local import load_model_and_tokenizer

                self._model, self._tokenizer = load_model_and_tokenizer(self.config.model, self.config.gguf_file, self.config.revision, self.config.device)
                import inspect

                # transformers 5 names the KV cache `cache` (`past_key_values` before); the prompt's logits are
                # needed at its last position only
                accepted = inspect.signature(self._model.forward).parameters
                self._cache_name = "cache" if "cache" in accepted else "past_key_values"
                self._last_logits_only = {"logits_to_keep": 1} if "logits_to_keep" in accepted else {}
                eos = self._model.generation_config.eos_token_id
                eos = eos[0] if isinstance(eos, list) else eos
                self._eos = eos if eos is not None else self._tokenizer.eos_token_id
        return self._model, self._tokenizer

    async def generate(self, group: list[ScoreRequest], endpoint: str | None = None) -> list[Trace]:
        forced = await asyncio.to_thread(self.force, group)
        return [_trace_of(request, tokens, self._identity) for request, tokens in zip(group, forced)]

    def completion_ids(self, request: ScoreRequest) -> list[int]:
        _, tokenizer = self._ensure_loaded()
        if request.token_ids is not None:
            return list(request.token_ids)
        ids = tokenizer(request.completion, add_special_tokens=False)["input_ids"]
        return ids + ([self._eos] if request.ends_with_eos and self._eos is not None else [])

    def force(self, group: Sequence[ScoreRequest]) -> list[ForcedTokens]:
        """Every request's tokens under the model; requests sharing their messages share batches."""
        import torch

        model, tokenizer = self._ensure_loaded()
        results: list[ForcedTokens | None] = [None] * len(group)
        by_prompt: dict[tuple, list[int]] = {}
        for position, request in enumerate(group):
            by_prompt.setdefault(request.messages, []).append(position)
        k = self.config.top_logprobs
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (self._eos or 0)
        for messages, positions in by_prompt.items():
            encoded = tokenizer.apply_chat_template([dict(m) for m in messages], add_generation_prompt=True, return_dict=True)
            prompt = list(encoded["input_ids"])
            completions = [self.completion_ids(group[p]) for p in positions]
            # The prompt is read once; its keys and values are reused by every trace of the question.
            with torch.no_grad():
                prompt_out = model(input_ids=torch.tensor([prompt], device=model.device), use_cache=True, **self._last_logits_only)
            prompt_cache = getattr(prompt_out, self._cache_name)
            first_row = torch.log_softmax(prompt_out.logits[0, -1].float(), dim=-1)  # predicts each trace's first token
            # batches of traces of similar length (longest first), so padding stays under a quarter of a batch
            order = sorted(range(len(positions)), key=lambda i: -len(completions[i]))
            batches: list[list[int]] = []
            for i in order:
                n = len(completions[i])
                if batches:
                    head = len(completions[batches[-1][0]])
                    if (len(batches[-1]) + 1) * head <= max(self.config.batch_tokens, head) and n >= 0.75 * head:
                        batches[-1].append(i)
                        continue
                batches.append([i])
            for batch in batches:
                width = max(len(completions[i]) for i in batch) - 1  # the last token is predicted, never read
                rows_logprobs = None
                if width > 0:
                    ids = torch.full((len(batch), width), pad, dtype=torch.long)
                    mask = torch.ones((len(batch), len(prompt) + width), dtype=torch.long)
                    for row, i in enumerate(batch):
                        n = len(completions[i]) - 1
                        if n > 0:
                            ids[row, :n] = torch.tensor(completions[i][:n], dtype=torch.long)
                        mask[row, len(prompt) + max(n, 0) :] = 0
                    cache = copy.deepcopy(prompt_cache)
                    if len(batch) > 1:
                        cache.batch_repeat_interleave(len(batch))
                    positions_ids = torch.arange(len(prompt), len(prompt) + width, device=model.device).unsqueeze(0).expand(len(batch), -1)
                    with torch.no_grad():
                        logits = model(
                            input_ids=ids.to(model.device), attention_mask=mask.to(model.device), position_ids=positions_ids,
                            use_cache=True, **{self._cache_name: cache},
                        ).logits
                    rows_logprobs = torch.log_softmax(logits.float(), dim=-1)
                for row, i in enumerate(batch):
                    n = len(completions[i])
                    if n == 0:
                        results[positions[i]] = ForcedTokens([], [], [], [], len(prompt))
                        continue
                    steps = first_row.unsqueeze(0) if n == 1 else torch.cat([first_row.unsqueeze(0), rows_logprobs[row, : n - 1]], dim=0)
                    targets = torch.tensor(completions[i], dtype=torch.long, device=steps.device)
                    chosen = steps.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
                    top = torch.topk(steps, k, dim=-1).values.tolist() if k > 0 else []
                    results[positions[i]] = ForcedTokens(
                        chosen.tolist(), top, [tokenizer.decode([token_id]) for token_id in completions[i]], list(completions[i]), len(prompt)
                    )
        return results  # type: ignore[return-value]

    async def aclose(self) -> None:
        return None


# --------------------------------------------------------------------------- HTTP routes
class _HTTPScorer:
    """What the vLLM and TGI routes share: endpoints, clients, the served model's identity."""

    def __init__(self, config, kind: str, transport: Any = None):
        from curation.backends.http import endpoint_setup

        self.config = config
        self.kind = kind
        self.endpoints, self._headers, self._clients = endpoint_setup(config, kind, transport)
        self.concurrency = config.concurrency
        self._transport = transport
        self._identity: str | None = None
        self.model_name = config.model
        self.server_version: str | None = None

    def model_identity(self) -> str:
        if self._identity is None:
            self._identity = self._probe()
        return self._identity

    def route(self) -> dict:
        return {"backend": self.kind, "top_logprobs": self.config.top_logprobs if self.kind != "tgi" else 0}

    def provenance(self) -> dict:
        return {"backend": self.kind, "model_id": self.model_identity(), "server_version": self.server_version, "top_logprobs": self.route()["top_logprobs"]}

    def group(self, requests: Sequence[ScoreRequest]) -> list[list[ScoreRequest]]:
        return [[request] for request in requests]

    def own_tokens(self, trace: Trace, identity: str) -> tuple[int, ...] | None:
        """The generator's token ids, when it is the served model (token strings are not re-encoded over HTTP)."""
        return tuple(trace.token_ids) if trace.token_ids and trace.model == identity else None

    async def _post(self, endpoint: str, path: str, body: dict) -> Any:
        import httpx

        from curation.backends.http import dumps, parse_json, request_rejected, transport_error

        try:
            response = await self._clients.post_json(endpoint + path, dumps(body))
        except httpx.TransportError as exc:
            raise transport_error(exc) from None
        if response.status_code != 200:
            raise request_rejected(response.status_code, response.content, response.headers, "scorer")
        return parse_json(response)

    async def generate(self, group: list[ScoreRequest], endpoint: str | None = None) -> list[Trace]:
        endpoint = endpoint or self.endpoints[0]
        identity = self.model_identity()
        return [_trace_of(request, await self.force_one(request, endpoint), identity) for request in group]

    async def aclose(self) -> None:
        await self._clients.aclose()


class VLLMScorer(_HTTPScorer):
    """vLLM's prompt logprobs: /tokenize renders and tokenizes, /v1/completions scores the token ids."""

    name = "openai"

    def __init__(self, config, transport: Any = None):
        super().__init__(config, "openai", transport)

    def _probe(self) -> str:
        from curation.backends.http import loads, probe, sync_client

        with sync_client(self._headers, min(self.config.timeout, 30.0), transport=self._transport) as client:
            response = probe(client, "GET", self.endpoints[0] + "/v1/models")
            models = [m for m in loads(response.content).get("data", []) if isinstance(m, dict)] if response.status_code == 200 else []
            ids = [m.get("id") for m in models]
            if self.config.model == "embedded":
                if len(ids) != 1:
                    raise GenerationError(f"{self.endpoints[0]} serves {len(ids)} models; set scorer.model")
                self.model_name = ids[0]
            try:
                version = client.get(self.endpoints[0] + "/version")
                self.server_version = loads(version.content).get("version") if version.status_code == 200 else None
            except Exception:  # noqa: BLE001 - a version is nice to record, not needed
                self.server_version = None
        served = next((m for m in models if m.get("id") == self.model_name), {})
        return str(served.get("root") or self.model_name)

    async def force_one(self, request: ScoreRequest, endpoint: str) -> ForcedTokens:
        model = self.model_name
        prompt = (await self._post(endpoint, "/tokenize", {"model": model, "messages": request.chat, "add_generation_prompt": True}))["tokens"]
        if request.token_ids is not None:
            completion = list(request.token_ids)
        else:
            completion = (await self._post(endpoint, "/tokenize", {"model": model, "prompt": request.completion, "add_special_tokens": False}))["tokens"]
            if request.ends_with_eos:
                # the template's own end of the assistant turn: the first token after the text in the whole conversation
                turn = request.chat + [{"role": "assistant", "content": request.completion}]
                whole = (await self._post(endpoint, "/tokenize", {"model": model, "messages": turn, "add_generation_prompt": False}))["tokens"]
                end = len(prompt) + len(completion)
                if whole[: end] == prompt + completion and len(whole) > end:
                    completion = completion + [whole[end]]
        k = self.config.top_logprobs
        body = {"model": model, "prompt": prompt + completion, "max_tokens": 1, "temperature": 0.0, "prompt_logprobs": max(k, 0)}
        data = await self._post(endpoint, "/v1/completions", body)
        rows = data["choices"][0].get("prompt_logprobs")
        if rows is None or len(rows) != len(prompt) + len(completion):
            raise GenerationError(f"the server returned {len(rows or [])} prompt logprobs for {len(prompt) + len(completion)} tokens (is it vLLM?)")
        logprobs, top, tokens = [], [], []
        for token_id, row in zip(completion, rows[len(prompt) :]):
            entry = row[str(token_id)]
            logprobs.append(float(entry["logprob"]))
            tokens.append(entry.get("decoded_token") or "")
            top.append(sorted((float(e["logprob"]) for e in row.values()), reverse=True)[:k] if k else [])
        return ForcedTokens(logprobs, top if k else [], tokens, completion, len(prompt))


class TGIScorer(_HTTPScorer):
    """TGI's decoder_input_details: the prefill tokens of prompt + trace, with their logprobs."""

    name = "tgi"

    def __init__(self, config, transport: Any = None):
        super().__init__(config, "tgi", transport)
        self._eos_text: str | None = None

    def _probe(self) -> str:
        from curation.backends.http import loads, probe, sync_client

        with sync_client(self._headers, min(self.config.timeout, 30.0), transport=self._transport) as client:
            response = probe(client, "GET", self.endpoints[0] + "/info")
            info = loads(response.content) if response.status_code == 200 else {}
        self.server_version = info.get("version")
        from curation.backends.tgi import tgi_identity

        return tgi_identity(info, self.config.model)  # the generator's own spelling, so that its token ids are recognised

    async def force_one(self, request: ScoreRequest, endpoint: str) -> ForcedTokens:
        rendered = await self._post(endpoint, "/chat_tokenize", {"messages": request.chat})
        prompt_text = rendered["templated_text"]
        completion = request.completion
        if request.ends_with_eos:
            # the template's end of the assistant turn: what follows the text when the turn is rendered whole
            turn = await self._post(endpoint, "/chat_tokenize", {"messages": request.chat + [{"role": "assistant", "content": completion}]})
            whole = turn["templated_text"]
            head = prompt_text + completion
            tail_tokens = await self._post(endpoint, "/tokenize", {"inputs": whole})
            end_token = next((t for t in tail_tokens if t["start"] >= len(head)), None) if whole.startswith(head) else None
            if end_token is not None:
                completion = completion + whole[end_token["start"] : end_token["stop"]]
        inputs = prompt_text + completion
        tokens = await self._post(endpoint, "/tokenize", {"inputs": inputs})
        first = next((i for i, t in enumerate(tokens) if t["start"] >= len(prompt_text)), len(tokens))
        body = {"inputs": inputs, "parameters": {"max_new_tokens": 1, "details": True, "decoder_input_details": True}}
        data = await self._post(endpoint, "/generate", body)
        prefill = data["details"]["prefill"]
        if len(prefill) != len(tokens):
            raise GenerationError(f"TGI returned {len(prefill)} prefill tokens for {len(tokens)} input tokens")
        scored = prefill[first:]
        logprobs = [float("nan") if t.get("logprob") is None else float(t["logprob"]) for t in scored]
        return ForcedTokens(logprobs, [], [t["text"] for t in scored], [t["id"] for t in scored], first)


def make_scorer(config, *, transport: Any = None):
    """The scorer backend the recipe names. Imports are lazy: torch loads only for `local`."""
    if config.backend == "local":
        return LocalScorer(config)
    if config.backend == "openai":
        return VLLMScorer(config, transport=transport)
    if config.backend == "tgi":
        return TGIScorer(config, transport=transport)
    raise ValueError(f"unknown scorer backend {config.backend!r}")


def score_text(scorer, messages: Sequence[dict], text: str, reasoning: str | None = None, *, ends_with_eos: bool = True) -> ForcedTokens:
    """One trace's teacher-forced tokens, outside a run: (prompt messages, trace text, optional reasoning) ->
    token logprobs, top-k and tokens. For traces that come from elsewhere (imported files)."""
    request = ScoreRequest("", "", REFERENCE_INDEX, hashable_messages(messages), text, reasoning, ends_with_eos)
    if isinstance(scorer, LocalScorer):
        return scorer.force([request])[0]

    async def once() -> ForcedTokens:
        try:
            return await scorer.force_one(request, scorer.endpoints[0])
        finally:
            await scorer.aclose()

    scorer.model_identity()
    return asyncio.run(once())


# --------------------------------------------------------------------------- the stage
@dataclass
class ScorerOutcome:
    key: str | None  # the scorer's journal key; None without a scorer
    stats: dict = field(default_factory=dict)

    def stage(self) -> StageStats:
        """The scorer stage's section of stats.json: traces to teacher-force, those in the journal, and failures."""
        stage = StageStats(rows_in=self.stats["requested"], rows_out=self.stats["cached"] + self.stats["scored"], seconds=self.stats["seconds"])
        stage.drop("failed", self.stats["failed"])
        return stage


def ends_with_eos(trace: Trace, stops: Sequence[str]) -> bool:
    """Whether the trace ended by itself (its end-of-turn token is scored), not at max_new_tokens or a stop sequence."""
    usage = trace.usage if isinstance(trace.usage, dict) else {}
    if trace.finish_reason != "stop" or isinstance(usage.get("stop_sequence"), str):
        return False
    # a stop sequence the text still holds (local backend, older journals) ended the trace, not an EOS
    return not any(stop and trace.text.endswith(stop) for stop in stops)


def _score_requests(journal, questions: Sequence[Question], grid, scorer, identity: str, stops: Sequence[str], which: str) -> list[ScoreRequest]:
    fingerprints = [fp for row in grid for j, fp in enumerate(row) if fp is not None and (which == "all" or j == REFERENCE_INDEX)]
    traces = journal.load(fingerprints)
    messages_of = {q.id: hashable_messages(q.teacher_messages or q.messages) for q in questions}
    requests = []
    for fp in fingerprints:
        trace = traces.get(fp)
        if trace is None:
            continue  # failed or never generated: nothing to read
        ends = ends_with_eos(trace, stops)
        own_ids = scorer.own_tokens(trace, identity)
        reasoning = getattr(trace, "reasoning", None)  # reasoning teachers (a separate field on Trace, where it exists)
        requests.append(ScoreRequest(fp, trace.prompt_id, trace.sample_index, messages_of[trace.prompt_id], trace.text, reasoning, ends, own_ids))
    return requests


def run_scorer(recipe, questions: Sequence[Question], grid, journal_path: Path, *, generate: bool = True, show_progress: bool = True, transport: Any = None) -> ScorerOutcome:
    """Score every planned trace the journal holds that this scorer has not read yet; with ``generate=False``
    only find the scorer the journal recorded (``curate score`` calls no backend)."""
    from curation.journal import Journal

    config = recipe.scorer
    if config is None:
        return ScorerOutcome(None)
    with Journal(journal_path) as journal:
        if not generate:
            recorded = journal.get_meta(PROVENANCE_KEY)
            if recorded is None:
                log.warning("the journal holds no scorer logprobs; token metrics stay empty (run `curate run` to score)")
                return ScorerOutcome(None, {"missing": True})
            return ScorerOutcome(recorded["key"], {"recorded": True})
        from curation.generate import RetryPolicy, run_generation

        scorer = make_scorer(config, transport=transport)
        identity = scorer.model_identity()
        key = scorer_key(identity, scorer.route())
        view = journal.scorer_view(key)
        stats = {"requested": 0, "cached": 0, "scored": 0, "failed": 0, "tokens": 0, "seconds": 0.0, "retokenized": 0}
        policy = RetryPolicy(max_retries=config.max_retries, backoff=config.retry_backoff)
        try:
            for start in range(0, len(grid), QUESTIONS_PER_PASS):
                requests = _score_requests(journal, questions[start : start + QUESTIONS_PER_PASS], grid[start : start + QUESTIONS_PER_PASS], scorer, identity, recipe.generator.stop, config.traces)
                stats["retokenized"] += sum(request.token_ids is None for request in requests)
                run = run_generation(requests, scorer, view, show_progress=show_progress, policy=policy, desc="scorer")
                stats["requested"] += run.requested
                stats["cached"] += run.cached
                stats["scored"] += run.generated
                stats["failed"] += run.failed
                stats["tokens"] += run.tokens
                stats["seconds"] += run.seconds
        finally:
            asyncio.run(scorer.aclose())
        counts = {"traces": stats["requested"], "retokenized": stats["retokenized"]}
        journal.set_meta(PROVENANCE_KEY, {**scorer.provenance(), "identity": identity, "key": key, "route": scorer.route(), **counts})
    return ScorerOutcome(key, stats)


# --------------------------------------------------------------------------- P(True)
# LM-Polygraph 0.7.0's PromptCalculator prompt (stat_calculators/prompt.py), sent as the user turn in
# the scorer's own chat template; the assistant turn is forced to "True"
P_TRUE_PROMPT = "Question: {q}\n Possible answer:{a}\n Is the possible answer:\n (A) True\n (B) False\n The possible answer is:"
AFFIRMATIVE = "True"


def p_true(scorer, questions: Sequence[str], answers: Sequence[str | None]) -> list[float]:
    """log P(True) per question: the scorer model's logprob of the affirmative token after the P(True) prompt.

    The first token of the forced reply "True" is read (LM-Polygraph reads the one token of "True"
    after the prompt; here the prompt sits in a chat turn). NaN where there is no answer text.
    Not journaled: a rescore asks the scorer again (one short forward pass per question).
    """
    out = []
    for question, answer in zip(questions, answers):
        if not answer:
            out.append(float("nan"))
            continue
        messages = [{"role": "user", "content": P_TRUE_PROMPT.format(q=question, a=answer)}]
        forced = score_text(scorer, messages, AFFIRMATIVE, ends_with_eos=False)
        out.append(float(forced.token_logprobs[0]) if forced.token_logprobs else float("nan"))
    return out
