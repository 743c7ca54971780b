"""Generate: one reference trace plus K samples per question, through any backend, into the journal.

The unit of work is a *request*: one trace of one question with its own seed. Its fingerprint
hashes everything that determines the trace, so the journal can tell what is already paid for.
Backends may group requests (the local backend decodes a question's reference and samples in
one batch; an OpenAI server can return K samples for one ``n=K`` request). A group is generated
and committed all-or-nothing, and groups never mix questions, so what a question gets cannot
depend on what else happened to be running: a resumed run equals an uninterrupted one.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, Sequence

from tqdm.auto import tqdm

from curation.recipe import GeneratorConfig

if TYPE_CHECKING:
    from curation.journal import Journal
    from curation.source import Question

REFERENCE_INDEX = 0  # sample_index 0 is the greedy reference; samples are 1..K


@dataclass(frozen=True)
class SamplingParams:
    greedy: bool
    temperature: float
    top_p: float
    max_new_tokens: int
    stop: tuple[str, ...]
    top_logprobs: int


@dataclass(frozen=True)
class TraceRequest:
    prompt_id: str
    messages: tuple[tuple[tuple[str, str], ...], ...]  # hashable form of [{role, content}]
    sample_index: int
    seed: int | None
    params: SamplingParams
    fingerprint: str
    group_size: int = 1  # samples generated together with this one (part of the fingerprint where it matters)

    @property
    def is_reference(self) -> bool:
        return self.sample_index == REFERENCE_INDEX

    @property
    def chat(self) -> list[dict[str, str]]:
        return [dict(message) for message in self.messages]


@dataclass
class Trace:
    """One generated trace with what the metrics need. Logprobs are of the chosen tokens."""

    fingerprint: str
    prompt_id: str
    sample_index: int
    text: str
    token_logprobs: list[float]
    top_logprobs: list[list[float]]  # per token, the top-k alternatives' logprobs, best first
    finish_reason: str  # "stop" (EOS or stop sequence) or "length"
    logprob_kind: str  # "raw" (model distribution) or "processed" (after temperature/top-p, as TGI)
    seed: int | None = None
    token_ids: list[int] = field(default_factory=list)
    model: str | None = None
    usage: dict[str, Any] = field(default_factory=dict)

    @property
    def is_reference(self) -> bool:
        return self.sample_index == REFERENCE_INDEX

    def to_payload(self) -> dict:
        payload = asdict(self)
        for key in ("fingerprint", "prompt_id", "sample_index"):
            payload.pop(key)
        return payload

    @classmethod
    def from_payload(cls, fingerprint: str, prompt_id: str, sample_index: int, payload: dict) -> "Trace":
        return cls(fingerprint=fingerprint, prompt_id=prompt_id, sample_index=sample_index, **payload)


class GenerationError(Exception):
    """A request that failed for good (after the backend's own retries)."""


class Backend(Protocol):
    """What the runner needs from a backend. Implementations: local, tgi, openai."""

    name: str
    logprob_kind: str
    concurrency: int  # groups in flight at once

    def model_identity(self) -> str:
        """Stable model identity for fingerprints (model id + revision/sha)."""

    def fingerprint_params(self, config: GeneratorConfig) -> dict:
        """Backend-specific settings that change what a trace would be (mixed into the fingerprint)."""

    def group(self, requests: Sequence[TraceRequest]) -> list[list[TraceRequest]]:
        """Split one question's missing requests into groups generated together."""

    async def generate(self, group: list[TraceRequest]) -> list[Trace]:
        """Generate every trace of the group or raise."""

    def provenance(self) -> dict:
        """What to record about the model/endpoint (model id, revision, server version)."""

    async def aclose(self) -> None: ...


def derive_seed(base_seed: int, prompt_id: str, sample_index: int) -> int:
    # 31 bits: the smallest seed range among the servers we talk to (llama.cpp uses uint32, some signed).
    digest = hashlib.sha256(f"{base_seed}:{prompt_id}:{sample_index}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def plan_requests(questions: Sequence["Question"], config: GeneratorConfig, backend: Backend) -> list[TraceRequest]:
    """Every trace the recipe asks for, with its seed and fingerprint, in a stable order."""
    sampled = SamplingParams(False, config.temperature, config.top_p, config.max_new_tokens, tuple(config.stop), config.top_logprobs)
    greedy = SamplingParams(True, 1.0, 1.0, config.max_new_tokens, tuple(config.stop), config.top_logprobs)
    backend_params = backend.fingerprint_params(config)
    model = backend.model_identity()
    requests = []
    for question in questions:
        messages = tuple(tuple(sorted(m.items())) for m in question.messages)
        indices = ([REFERENCE_INDEX] if config.reference else []) + list(range(1, config.samples + 1))
        for index in indices:
            params = greedy if index == REFERENCE_INDEX else sampled
            seed = None if index == REFERENCE_INDEX else derive_seed(config.seed, question.id, index)
            key = {
                "model": model,
                "messages": question.messages,
                "params": asdict(params),
                "sample_index": index,
                "seed": seed,
                "backend": backend_params,
            }
            fingerprint = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
            requests.append(TraceRequest(question.id, messages, index, seed, params, fingerprint, config.samples))
    return requests


@dataclass
class GenerationStats:
    requested: int = 0
    cached: int = 0
    generated: int = 0
    failed: int = 0
    tokens: int = 0
    retries: int = 0
    seconds: float = 0.0
    failures: dict[str, str] = field(default_factory=dict)


async def _run_groups(groups: list[list[TraceRequest]], backend: Backend, journal: "Journal", stats: GenerationStats, progress: tqdm) -> None:
    semaphore = asyncio.Semaphore(max(1, backend.concurrency))
    start = time.monotonic()

    async def one(group: list[TraceRequest]) -> None:
        async with semaphore:
            try:
                traces = await backend.generate(group)
            except (GenerationError, Exception) as exc:  # noqa: BLE001 - a failed group must not stop the run
                reason = f"{type(exc).__name__}: {exc}"
                journal.record_failure([(r.fingerprint, r.prompt_id, r.sample_index) for r in group], reason)
                stats.failed += len(group)
                for r in group:
                    stats.failures[r.fingerprint] = reason
                progress.update(len(group))
                return
            journal.commit(traces)
            stats.generated += len(traces)
            stats.tokens += sum(len(t.token_logprobs) for t in traces)
            progress.update(len(traces))
            elapsed = max(time.monotonic() - start, 1e-9)
            progress.set_postfix(traces_s=f"{stats.generated / elapsed:.2f}", tok_s=f"{stats.tokens / elapsed:.1f}", failed=stats.failed)

    tasks = [asyncio.create_task(one(group)) for group in groups]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()


def run_generation(requests: list[TraceRequest], backend: Backend, journal: "Journal", *, show_progress: bool = True) -> GenerationStats:
    """Generate whatever the journal does not have yet; committed traces are never asked for again."""
    stats = GenerationStats(requested=len(requests))
    done = journal.done(r.fingerprint for r in requests)
    missing = [r for r in requests if r.fingerprint not in done]
    stats.cached = len(requests) - len(missing)

    by_prompt: dict[str, list[TraceRequest]] = {}
    for request in missing:
        by_prompt.setdefault(request.prompt_id, []).append(request)
    groups = [group for prompt_requests in by_prompt.values() for group in backend.group(prompt_requests)]

    started = time.monotonic()
    with tqdm(total=len(missing), desc="generate", unit="trace", disable=not show_progress or not missing) as progress:
        asyncio.run(_run_groups(groups, backend, journal, stats, progress))
    stats.seconds = time.monotonic() - started
    return stats


def make_backend(config: GeneratorConfig) -> Backend:
    """Instantiate the backend named by the recipe. Imports are lazy: torch only loads for `local`."""
    if config.backend == "local":
        from curation.backends.local import LocalBackend

        return LocalBackend(config)
    if config.backend == "tgi":
        from curation.backends.tgi import TGIBackend

        return TGIBackend(config)
    if config.backend == "openai":
        from curation.backends.openai import OpenAIBackend

        return OpenAIBackend(config)
    raise ValueError(f"unknown backend {config.backend!r}")
