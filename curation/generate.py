"""Generate: one reference trace plus K samples per question, through any backend, into the journal.

The unit of work is a *request*: one trace of one question with its own seed. Its fingerprint
hashes everything that determines the trace, so the journal can tell what is already paid for.
Backends may group requests (the local backend decodes a question's reference and samples in
one batch; an OpenAI server can return K samples for one ``n=K`` request). A group is generated
and committed all-or-nothing, and groups never mix questions, so what a question gets cannot
depend on what else happened to be running: a resumed run equals an uninterrupted one.

The runner keeps every endpoint busy with a fixed pool of workers (as many as the endpoints'
concurrency allows), each taking the next group, sending it to the least loaded healthy
endpoint, and retrying transient failures with jittered exponential backoff. It is built to
cost little CPU per trace, because on a small machine the client shares cores with the server:
no task per group, journal commits batched by time (one transaction every `commit_interval`),
and the progress bar redrawn by a ticker instead of per trace.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import json
import logging
import signal
import sys
import threading
import time
from collections import Counter, deque
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

from tqdm.auto import tqdm

from curation.progress import progress_bar
from curation.recipe.sections import GeneratorConfig
from curation.types import (
    REFERENCE_INDEX,
    Backend,
    GenerationError,
    Question,
    RequestRejected,
    RetryableError,
    SamplingParams,
    StageStats,
    Trace,
    TraceRequest,
    derive_seed,
)

if TYPE_CHECKING:
    from curation.journal import Journal

log = logging.getLogger(__name__)

def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


class RecordedIdentity:
    """Stands in for the backend where only fingerprints are needed (`curate score`, `merge`, the dry
    run): the identity and fingerprint settings the journal recorded, no endpoint call."""

    def __init__(self, provenance: dict):
        self._provenance = provenance

    def model_identity(self) -> str:
        return self._provenance.get("identity") or self._provenance.get("model_id")

    def fingerprint_params(self, config) -> dict:
        return self._provenance.get("fingerprint_params") or {}


def plan_requests(questions: Sequence["Question"], config: GeneratorConfig, backend: Backend) -> list[TraceRequest]:
    """Every trace the recipe asks for, with its seed and fingerprint, in a stable order.

    A fingerprint is sha256 of ``json.dumps({"backend", "messages", "model", "params",
    "sample_index", "seed"}, sort_keys=True)``. The text is assembled from per-question and
    per-run pieces (byte for byte what json.dumps writes) so that planning a large run stays cheap.
    """
    sampled = SamplingParams(False, config.temperature, config.top_p, config.max_new_tokens, tuple(config.stop), config.top_logprobs)
    greedy = SamplingParams(True, 1.0, 1.0, config.max_new_tokens, tuple(config.stop), config.top_logprobs)
    backend_params = dict(backend.fingerprint_params(config))
    reference_params = {k: v for k, v in backend_params.items() if k != "sampled"}
    model = _dumps(backend.model_identity())
    kinds = {
        True: ('{"backend": ' + _dumps(reference_params), ', "model": ' + model + ', "params": ' + _dumps(asdict(greedy)) + ', "sample_index": ', greedy),
        False: ('{"backend": ' + _dumps(backend_params), ', "model": ' + model + ', "params": ' + _dumps(asdict(sampled)) + ', "sample_index": ', sampled),
    }
    indices = ([REFERENCE_INDEX] if config.reference else []) + list(range(1, config.samples + 1))
    requests = []
    for question in questions:
        # the teacher's messages: with a prompt.teacher_hint they differ from the dataset's prompt
        teacher = question.teacher_messages or question.messages
        messages = tuple(tuple(sorted(m.items())) for m in teacher)
        messages_json = ', "messages": ' + _dumps(teacher)
        for index in indices:
            is_reference = index == REFERENCE_INDEX
            head, middle, params = kinds[is_reference]
            seed = None if is_reference else derive_seed(config.seed, question.id, index)
            key = f'{head}{messages_json}{middle}{index}, "seed": {"null" if seed is None else seed}}}'
            fingerprint = hashlib.sha256(key.encode()).hexdigest()
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
    attempts: int = 0  # requests sent, retries included
    abandoned: int = 0  # not finished because the run was interrupted (not failures: a rerun asks again)
    seconds: float = 0.0
    interrupted: bool = False
    failures: dict[str, str] = field(default_factory=dict)  # fingerprint -> reason
    failure_reasons: Counter = field(default_factory=Counter)  # reason -> traces
    retry_reasons: Counter = field(default_factory=Counter)  # reason (first words) -> retries

    @property
    def traces_per_second(self) -> float:
        return self.generated / self.seconds if self.seconds else 0.0

    def stage(self) -> StageStats:
        """The generate stage's section of stats.json: traces planned, traces in the journal, and why not."""
        stage = StageStats(rows_in=self.requested, rows_out=self.cached + self.generated, seconds=self.seconds)
        stage.drop("failed", self.failed)
        stage.drop("abandoned", self.abandoned)
        return stage

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


@dataclass(frozen=True)
class RetryPolicy:
    """Retries per group after its first attempt; waits are full-jitter exponential (AWS style)."""

    max_retries: int = 6
    backoff: float = 1.0  # the first retry waits up to this long; doubling per retry
    max_wait: float = 60.0

    @classmethod
    def from_config(cls, config: GeneratorConfig | None) -> "RetryPolicy":
        if config is None:
            return cls()
        return cls(max_retries=config.max_retries, backoff=config.retry_backoff)


class _Abandoned(Exception):
    """A group left unfinished because the run is stopping."""


class _Endpoint:
    __slots__ = ("url", "limit", "max_limit", "in_flight", "failures", "resting_until")

    def __init__(self, url: str, limit: int):
        self.url = url
        self.limit = float(limit)  # shrinks on 429/503, grows back by 1/limit per success (AIMD)
        self.max_limit = float(limit)
        self.in_flight = 0
        self.failures = 0  # consecutive endpoint faults
        self.resting_until = 0.0


class _Endpoints:
    """Per-endpoint concurrency limits, least-loaded choice, and a rest for failing endpoints."""

    FAULTS_BEFORE_REST = 3
    MAX_REST = 30.0

    def __init__(self, urls: Sequence[str], concurrency: int):
        self.items = [_Endpoint(url, concurrency) for url in urls]
        self._waiters: deque[asyncio.Future] = deque()
        self._single = self.items[0] if len(self.items) == 1 else None
        self._turn = 0

    @property
    def capacity(self) -> int:
        return int(sum(e.max_limit for e in self.items))

    def try_acquire(self) -> _Endpoint | None:
        single = self._single
        if single is not None and single.in_flight < single.limit and not single.resting_until:
            single.in_flight += 1
            return single
        now = time.monotonic()
        best, best_load = None, float("inf")
        items = self.items
        self._turn = (self._turn + 1) % len(items)  # ties go round-robin
        for i in range(len(items)):
            e = items[(self._turn + i) % len(items)]
            if e.in_flight >= e.limit or e.resting_until > now:
                continue
            load = e.in_flight / e.limit + (1.0 if e.failures else 0.0)  # healthy endpoints first
            if load < best_load:
                best, best_load = e, load
        if best is not None:
            best.in_flight += 1
        return best

    async def acquire(self) -> _Endpoint:
        loop = asyncio.get_running_loop()
        while True:
            endpoint = self.try_acquire()
            if endpoint is not None:
                return endpoint
            waiter = loop.create_future()
            self._waiters.append(waiter)
            now = time.monotonic()
            resting = [e.resting_until - now for e in self.items if e.resting_until > now]
            timer = loop.call_later(min(resting), _wake, waiter) if resting else None
            try:
                await waiter
            finally:
                if timer is not None:
                    timer.cancel()
                if not waiter.done():
                    waiter.cancel()
                try:
                    self._waiters.remove(waiter)
                except ValueError:
                    pass

    def release(self, endpoint: _Endpoint, error: BaseException | None, *, neutral: bool = False) -> None:
        endpoint.in_flight -= 1
        if neutral or isinstance(error, (asyncio.CancelledError, _Abandoned)):
            pass
        elif error is None or not isinstance(error, RetryableError):  # a 422 is a healthy endpoint
            endpoint.failures = 0
            endpoint.resting_until = 0.0
            if endpoint.limit < endpoint.max_limit:
                endpoint.limit = min(endpoint.max_limit, endpoint.limit + 1.0 / endpoint.limit)
        elif isinstance(error, RetryableError):
            if error.overload:
                # the server said "too many": allow one fewer than were in flight when it said so
                endpoint.limit = max(1.0, min(endpoint.limit - 1.0, float(endpoint.in_flight)))
            if error.endpoint_fault:
                endpoint.failures += 1
                if endpoint.failures >= self.FAULTS_BEFORE_REST:
                    rest = min(self.MAX_REST, 0.5 * 2 ** (endpoint.failures - self.FAULTS_BEFORE_REST))
                    endpoint.resting_until = time.monotonic() + rest
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                break


def _wake(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _short_reason(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text.split(":", 1)[0] if text.startswith("HTTP ") else text.split(" (", 1)[0][:80]


class _StopWhen:
    """A tenacity stop condition: stop retrying once the run is stopping."""

    def __init__(self, runner: "_Runner"):
        self.runner = runner

    def __call__(self, retry_state) -> bool:
        return self.runner.stopping


class _Runner:
    def __init__(self, groups, backend: Backend, journal: "Journal", stats: GenerationStats, progress: tqdm | None, policy: RetryPolicy, commit_interval: float):
        self.queue: deque[list[TraceRequest]] = deque(groups)
        self.backend = backend
        self.journal = journal
        self.stats = stats
        self.progress = progress
        self.policy = policy
        self.commit_interval = commit_interval
        urls = list(getattr(backend, "endpoints", None) or ["default"])
        self.endpoints = _Endpoints(urls, max(1, int(getattr(backend, "concurrency", 1))))
        self.pending: list[Trace] = []
        self.in_flight = 0
        self.stopping = False
        self.interrupted = False
        self.sigint_seen = False  # set by the signal handler itself, even when the loop never saw it
        self.commit_error: BaseException | None = None
        self.rejected: RequestRejected | None = None
        self._stop_event: asyncio.Event | None = None
        self._dirty: asyncio.Event | None = None
        self._main: asyncio.Task | None = None
        self._started = time.monotonic()
        self._retrying = None

    # ---------------------------------------------------------------- one group
    async def _attempt(self, group: list[TraceRequest]) -> list[Trace]:
        endpoint = self.endpoints.try_acquire() or await self.endpoints.acquire()
        if self.stopping:  # Ctrl-C came while this group waited for a free slot
            self.endpoints.release(endpoint, None, neutral=True)
            raise _Abandoned()
        self.in_flight += 1
        self.stats.attempts += 1
        error: BaseException | None = None
        try:
            return await self.backend.generate(group, endpoint.url)
        except BaseException as exc:
            error = exc
            raise
        finally:
            self.in_flight -= 1
            self.endpoints.release(endpoint, error)

    async def _retry(self, group: list[TraceRequest], first: RetryableError) -> list[Trace]:
        from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_random_exponential

        policy = self.policy
        if policy.max_retries <= 0 or self.stopping:
            raise first
        jitter = wait_random_exponential(multiplier=policy.backoff, max=policy.max_wait)

        def wait(retry_state) -> float:
            exc = retry_state.outcome.exception()
            seconds = jitter(retry_state)
            asked = getattr(exc, "retry_after", None)
            return max(seconds, asked) if asked else seconds

        def before_sleep(retry_state) -> None:
            self.stats.retries += 1
            self.stats.retry_reasons[_short_reason(retry_state.outcome.exception())] += 1

        pending_first = [first]

        async def attempt() -> list[Trace]:
            if pending_first:  # the first attempt already happened; let tenacity count and wait for it
                raise pending_first.pop()
            return await self._attempt(group)

        retrying = AsyncRetrying(
            stop=stop_after_attempt(policy.max_retries + 1) | _StopWhen(self),
            wait=wait,
            retry=retry_if_exception_type(RetryableError),
            before_sleep=before_sleep,
            sleep=self._sleep,
            reraise=True,
        )
        try:
            return await retrying(attempt)
        except RetryableError:
            if self.stopping:
                raise _Abandoned() from None
            raise

    async def _sleep(self, seconds: float) -> None:
        """Backoff that ends early when the run is stopping (a waiting retry costs nothing to drop)."""
        if self.stopping:
            return
        try:
            await asyncio.wait_for(self._stop_event.wait(), seconds)
        except asyncio.TimeoutError:
            pass

    async def _worker(self) -> None:
        queue = self.queue
        stats = self.stats
        while queue and not self.stopping:
            group = queue.popleft()
            try:
                try:
                    traces = await self._attempt(group)
                except RetryableError as exc:
                    if self.stopping:
                        raise _Abandoned() from None
                    traces = await self._retry(group, exc)
            except _Abandoned:
                stats.abandoned += len(group)
                continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - one failed group must not stop the run
                self._fail(group, exc)
                if isinstance(exc, RequestRejected) and self.rejected is None:
                    # every request would be refused alike: stop, and say what to change
                    self.rejected = exc
                    self._stop()
                continue
            if len(traces) != len(group):
                self._fail(group, GenerationError(f"backend returned {len(traces)} traces for {len(group)} requests"))
                continue
            self.pending.extend(traces)
            stats.generated += len(traces)
            for trace in traces:
                stats.tokens += len(trace.token_logprobs)
            self._dirty.set()

    def _fail(self, group: list[TraceRequest], exc: BaseException) -> None:
        reason = str(exc) if isinstance(exc, GenerationError) and str(exc) else f"{type(exc).__name__}: {exc}"
        if not isinstance(exc, GenerationError):
            log.warning("unexpected error generating %s: %s", group[0].prompt_id, reason, exc_info=log.isEnabledFor(logging.DEBUG))
        self.journal.record_failure([(r.fingerprint, r.prompt_id, r.sample_index) for r in group], reason)
        self.stats.failed += len(group)
        self.stats.failure_reasons[reason] += len(group)
        for request in group:
            self.stats.failures[request.fingerprint] = reason

    # ---------------------------------------------------------------- journal, progress, signals
    def _flush(self) -> None:
        if self.pending:
            batch, self.pending = self.pending, []
            self.journal.commit(batch)

    async def _flusher(self) -> None:
        """Group commit: one transaction per `commit_interval` for whatever finished meanwhile."""
        while True:
            await self._dirty.wait()
            await asyncio.sleep(self.commit_interval)
            self._dirty.clear()
            try:
                self._flush()
            except Exception as exc:  # noqa: BLE001 - e.g. disk full: stop cleanly, report after
                self.commit_error = exc
                self._stop()
                return

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            self._show()

    def _show(self) -> None:
        progress, stats = self.progress, self.stats
        if progress is None:
            return
        elapsed = max(time.monotonic() - self._started, 1e-9)
        progress.n = stats.generated + stats.failed
        progress.set_postfix_str(
            f"{stats.generated / elapsed:.2f} traces/s, {stats.tokens / elapsed:.0f} tok/s, "
            f"{self.in_flight} in flight, {stats.retries} retries, {stats.failed} failed",
            refresh=True,
        )

    def _stop(self) -> None:
        self.stopping = True
        if self._stop_event is not None:
            self._stop_event.set()

    def _on_sigint(self) -> None:
        if not self.stopping:
            self.interrupted = True
            self._stop()
            message = f"stopping: letting {self.in_flight} requests in flight finish (they are paid for); press Ctrl-C again to abandon them"
            (tqdm.write if self.progress is not None else print)(message, file=sys.stderr)
        elif self._main is not None:
            self._main.cancel()

    def _install_sigint(self, loop: asyncio.AbstractEventLoop):
        """A Python-level SIGINT handler for the run; returns the handler it replaced (None: not installed).

        Not ``loop.add_signal_handler``: a signal that arrives after the last loop iteration but before
        that handler is removed sits unread in the loop's self-pipe and is lost, so a Ctrl-C between
        two adaptive rounds was ignored. A Python handler always runs; it marks the run interrupted
        and lets the loop, if it still runs, stop the workers.
        """
        if threading.current_thread() is not threading.main_thread():
            return None

        def on_signal(signum, frame) -> None:
            self.sigint_seen = True
            try:
                loop.call_soon_threadsafe(self._on_sigint)
            except RuntimeError:  # the loop is closed: run_generation reads sigint_seen
                pass

        try:
            return signal.signal(signal.SIGINT, on_signal)
        except (ValueError, OSError):
            return None

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        self._dirty = asyncio.Event()
        self._main = asyncio.current_task()
        previous_sigint = self._install_sigint(loop)
        helpers = [asyncio.create_task(self._flusher())]
        if self.progress is not None:
            helpers.append(asyncio.create_task(self._ticker()))
        workers = [asyncio.create_task(self._worker()) for _ in range(min(self.endpoints.capacity, len(self.queue)))]
        try:
            await asyncio.gather(*workers)
        finally:
            for task in workers + helpers:
                task.cancel()
            await asyncio.gather(*workers, *helpers, return_exceptions=True)
            if previous_sigint is not None:
                signal.signal(signal.SIGINT, previous_sigint)
            self._flush()  # whatever finished, even when cancelled
            self._show()
            try:
                await self.backend.aclose()
            except Exception:  # noqa: BLE001 - closing connections must not hide the real outcome
                log.debug("closing the backend failed", exc_info=True)
        self.stats.abandoned += sum(len(group) for group in self.queue)
        if self.commit_error is not None:
            raise self.commit_error


def run_generation(
    requests: list[TraceRequest],
    backend: Backend,
    journal: "Journal",
    *,
    show_progress: bool = True,
    policy: RetryPolicy | None = None,
    commit_interval: float = 0.1,
    desc: str = "generate",
) -> GenerationStats:
    """Generate whatever the journal does not have yet; committed traces are never asked for again.

    Ctrl-C stops dispatching and lets requests in flight finish (a second Ctrl-C abandons them);
    everything finished is committed, then KeyboardInterrupt is raised. Groups that still fail
    after their retries are recorded in the journal with the reason and counted in the stats;
    the run goes on, and a rerun asks for them again.
    """
    stats = GenerationStats(requested=len(requests))
    done = journal.done(r.fingerprint for r in requests)
    missing = [r for r in requests if r.fingerprint not in done]
    stats.cached = len(requests) - len(missing)
    if policy is None:
        policy = RetryPolicy.from_config(getattr(backend, "config", None))

    by_prompt: dict[str, list[TraceRequest]] = {}
    for request in missing:
        by_prompt.setdefault(request.prompt_id, []).append(request)
    groups = [group for prompt_requests in by_prompt.values() for group in backend.group(prompt_requests)]

    started = time.monotonic()
    progress = (
        progress_bar(total=len(missing), desc=desc, unit="trace", mininterval=0.5, bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}{postfix}]")
        if show_progress and missing
        else None
    )
    runner = _Runner(groups, backend, journal, stats, progress, policy, commit_interval)
    # Parsing a logprob-heavy response allocates thousands of short-lived containers, which
    # makes the cyclic GC scan the whole (large, long-lived) heap over and over. Freezing what
    # exists and collecting young objects less often halves the client's CPU per trace; the
    # parsed objects have no cycles and are freed by reference counting anyway.
    thresholds = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(max(thresholds[0], 50_000), *thresholds[1:])
    try:
        if groups:
            asyncio.run(runner.run())
    except asyncio.CancelledError:  # a second Ctrl-C cancelled the run
        stats.interrupted = True
        raise KeyboardInterrupt from None
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()
        stats.seconds = time.monotonic() - started
        if progress is not None:
            progress.close()
    if runner.interrupted or runner.sigint_seen:
        stats.interrupted = True
        raise KeyboardInterrupt
    if runner.rejected is not None:
        raise runner.rejected
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
