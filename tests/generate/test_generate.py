"""The runner on an in-memory backend: planning, retries, failures, endpoints, batching, stopping."""

import asyncio
import hashlib
import json
import os
import signal
from collections import Counter
from dataclasses import asdict

import pytest

from curation.generate import RetryPolicy, plan_requests, run_generation
from curation.journal import Journal, pack_arrays, unpack_arrays
from curation.recipe.sections import GeneratorConfig
from curation.types import REFERENCE_INDEX, GenerationError, Question, RetryableError, Trace, derive_seed

QUESTIONS = [Question(id=f"q{i}", messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": f"question {i} é"}], columns={}) for i in range(6)]
FAST = RetryPolicy(max_retries=3, backoff=0.001)


class MemoryBackend:
    """A backend whose traces are a pure function of the request; scripted failures per request."""

    name = "memory"
    logprob_kind = "raw"

    def __init__(self, endpoints=("a",), concurrency=2, script=None, latency=0.0, sampled_params=None):
        self.endpoints = list(endpoints)
        self.concurrency = concurrency
        self.script = {key: list(errors) for key, errors in (script or {}).items()}  # (prompt, index) -> [exc, ...]
        self.latency = latency
        self.in_flight = Counter()
        self.max_in_flight = Counter()
        self.calls = Counter()
        self.sampled_params = sampled_params
        self.closed = 0

    def model_identity(self):
        return "memory-model"

    def fingerprint_params(self, config):
        params = {"backend": "memory"}
        if self.sampled_params:
            params["sampled"] = self.sampled_params
        return params

    def group(self, requests):
        return [[r] for r in requests]

    def provenance(self):
        return {"backend": "memory"}

    async def generate(self, group, endpoint=None):
        request = group[0]
        key = (request.prompt_id, request.sample_index)
        self.calls[endpoint] += 1
        self.in_flight[endpoint] += 1
        self.max_in_flight[endpoint] = max(self.max_in_flight[endpoint], self.in_flight[endpoint])
        try:
            await asyncio.sleep(self.latency)
            errors = self.script.get(key)
            if errors:
                raise errors.pop(0)
            return [make_trace(request)]
        finally:
            self.in_flight[endpoint] -= 1

    async def aclose(self):
        self.closed += 1


def make_trace(request):
    n = 3 + request.sample_index
    return Trace(
        request.fingerprint, request.prompt_id, request.sample_index, f"{request.prompt_id}/{request.sample_index}",
        [-0.1 * (i + 1) for i in range(n)], [[-0.1 * (i + 1), -2.0] for i in range(n)], "stop", "raw", request.seed, list(range(n)),
    )


def reference_fingerprint(question, config, backend, request):
    """plan_requests' fingerprint, computed the plain way."""
    params = {k: v for k, v in backend.fingerprint_params(config).items() if not (k == "sampled" and request.is_reference)}
    key = {"model": backend.model_identity(), "messages": question.messages, "params": asdict(request.params), "sample_index": request.sample_index, "seed": request.seed, "backend": params}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


@pytest.mark.parametrize("sampled", [None, {"n": 4}])
def test_fingerprints_are_json_of_the_key(sampled):
    config = GeneratorConfig(samples=4, stop=["</answer>"], temperature=0.7)
    backend = MemoryBackend(sampled_params=sampled)
    requests = plan_requests(QUESTIONS, config, backend)
    by_id = {q.id: q for q in QUESTIONS}
    assert len(requests) == 6 * 5
    for request in requests:
        assert request.fingerprint == reference_fingerprint(by_id[request.prompt_id], config, backend, request)
        assert request.seed == (None if request.is_reference else derive_seed(0, request.prompt_id, request.sample_index))


def test_sampled_only_settings_leave_the_reference_alone():
    config = GeneratorConfig(samples=4)
    plain = plan_requests(QUESTIONS, config, MemoryBackend())
    batched = plan_requests(QUESTIONS, config, MemoryBackend(sampled_params={"n": 4}))
    for a, b in zip(plain, batched):
        assert (a.fingerprint == b.fingerprint) == a.is_reference


def run(backend, tmp_path, config=None, policy=FAST, **kwargs):
    config = config or GeneratorConfig(samples=3)
    requests = plan_requests(QUESTIONS, config, backend)
    with Journal(tmp_path / "journal.sqlite") as journal:
        stats = run_generation(requests, backend, journal, show_progress=False, policy=policy, **kwargs)
        traces = journal.load(r.fingerprint for r in requests)
        failures = journal.failures()
    return requests, stats, traces, failures


def test_everything_generated_and_committed(tmp_path):
    backend = MemoryBackend(concurrency=3, latency=0.001)
    requests, stats, traces, failures = run(backend, tmp_path)
    assert stats.generated == len(requests) == len(traces) == 24 and stats.failed == 0 and not failures
    assert stats.tokens == sum(len(t.token_logprobs) for t in traces.values())
    t = traces[requests[2].fingerprint]
    assert t == make_trace(requests[2])  # arrays and fields survive the journal exactly
    assert backend.max_in_flight["a"] == 3 and backend.closed == 1
    # a rerun asks for nothing
    again = MemoryBackend()
    _, stats2, _, _ = run(again, tmp_path)
    assert stats2.cached == 24 and stats2.generated == 0 and sum(again.calls.values()) == 0


def test_the_progress_line_in_a_log_has_no_empty_field(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CURATE_PROGRESS_SECONDS", "0")  # a line per refresh
    requests = plan_requests(QUESTIONS, GeneratorConfig(samples=3), MemoryBackend())
    with Journal(tmp_path / "journal.sqlite") as journal:
        run_generation(requests, MemoryBackend(latency=0.001), journal, show_progress=True, policy=FAST)
    log = capsys.readouterr().err  # not a terminal: plain lines
    lines = [line for line in log.splitlines() if line.startswith("generate: ")]
    assert lines and "\r" not in log
    for line in lines:
        assert all(field.strip() for field in line.split(",")), line  # was "02:01 left, , 0.25 traces/s"
    assert lines[-1].startswith("generate: 24/24 traces (100%)") and " left, " in lines[-1] and "traces/s, " in lines[-1]


def test_transient_errors_are_retried_and_permanent_ones_recorded(tmp_path):
    script = {
        ("q0", 1): [RetryableError("HTTP 429 overloaded: busy", overload=True), RetryableError("timeout (ReadTimeout)", endpoint_fault=True)],
        ("q1", REFERENCE_INDEX): [GenerationError("HTTP 422 validation: too long")],
        ("q2", 2): [RetryableError("HTTP 503 unavailable: down")] * 10,  # more than the budget
    }
    backend = MemoryBackend(script=script)
    requests, stats, traces, failures = run(backend, tmp_path)
    assert stats.retries == 2 + 3 and stats.failed == 2 and stats.generated == 22
    assert stats.failure_reasons == Counter({"HTTP 422 validation: too long": 1, "HTTP 503 unavailable: down": 1})
    assert stats.retry_reasons == Counter({"HTTP 503 unavailable": 3, "HTTP 429 overloaded": 1, "timeout": 1})
    by_key = {(r.prompt_id, r.sample_index): r.fingerprint for r in requests}
    assert failures == {by_key[("q1", 0)]: "HTTP 422 validation: too long", by_key[("q2", 2)]: "HTTP 503 unavailable: down"}
    assert by_key[("q0", 1)] in traces
    # the rerun retries only the failures, and they are then ok
    healed = MemoryBackend()
    _, stats2, traces2, failures2 = run(healed, tmp_path)
    assert stats2.cached == 22 and stats2.generated == 2 and not failures2 and len(traces2) == 24


def test_retry_after_is_honoured(tmp_path):
    backend = MemoryBackend(script={("q0", 1): [RetryableError("HTTP 429: slow down", retry_after=0.3, overload=True)]})
    config = GeneratorConfig(samples=1, reference=False)
    requests = plan_requests(QUESTIONS[:1], config, backend)
    with Journal(tmp_path / "j.sqlite") as journal:
        stats = run_generation(requests, backend, journal, show_progress=False, policy=FAST)
    assert stats.generated == 1 and stats.seconds >= 0.3


def test_unexpected_exceptions_fail_the_group_not_the_run(tmp_path):
    backend = MemoryBackend(script={("q3", 2): [KeyError("choices")]})
    requests, stats, traces, failures = run(backend, tmp_path)
    assert stats.failed == 1 and stats.generated == 23
    assert list(failures.values()) == ["KeyError: 'choices'"]


def test_load_is_spread_over_endpoints_within_their_limits(tmp_path):
    backend = MemoryBackend(endpoints=("a", "b"), concurrency=2, latency=0.002)
    requests, stats, traces, _ = run(backend, tmp_path)
    assert stats.generated == 24
    assert backend.calls["a"] >= 8 and backend.calls["b"] >= 8
    assert backend.max_in_flight["a"] <= 2 and backend.max_in_flight["b"] <= 2


def test_a_dead_endpoint_is_avoided(tmp_path):
    class HalfDead(MemoryBackend):
        async def generate(self, group, endpoint=None):
            if endpoint == "dead":
                self.calls[endpoint] += 1
                raise RetryableError("connection error (ConnectError: refused)", endpoint_fault=True)
            return await super().generate(group, endpoint)

    backend = HalfDead(endpoints=("dead", "alive"), concurrency=2, latency=0.002)
    requests, stats, traces, failures = run(backend, tmp_path, policy=RetryPolicy(max_retries=4, backoff=0.001))
    assert stats.generated == 24 and not failures
    assert backend.calls["dead"] <= 6  # it rests after 3 faults in a row instead of eating retries


def test_overload_lowers_the_endpoint_limit(tmp_path):
    class Limited(MemoryBackend):
        async def generate(self, group, endpoint=None):
            if self.in_flight[endpoint] >= 2:  # the server takes 2 at a time and answers 429 beyond
                raise RetryableError("HTTP 429 overloaded: Model is overloaded", overload=True)
            return await super().generate(group, endpoint)

    backend = Limited(concurrency=8, latency=0.003)
    requests, stats, traces, failures = run(backend, tmp_path, policy=RetryPolicy(max_retries=20, backoff=0.001))
    assert stats.generated == 24 and not failures
    assert stats.retries < 24  # it adapts instead of hammering


def test_groups_are_committed_in_batches(tmp_path):
    commits = []

    class CountingJournal(Journal):
        def commit(self, traces):
            traces = list(traces)
            commits.append(len(traces))
            super().commit(traces)

    backend = MemoryBackend(concurrency=8)
    config = GeneratorConfig(samples=3)
    requests = plan_requests(QUESTIONS, config, backend)
    with CountingJournal(tmp_path / "j.sqlite") as journal:
        stats = run_generation(requests, backend, journal, show_progress=False, commit_interval=10.0)
        assert journal.count() == 24
    assert stats.generated == 24 and commits == [24]  # the final flush commits what finished


def test_ctrl_c_keeps_what_finished_and_resumes_to_the_same_result(tmp_path):
    class Interrupted(MemoryBackend):
        async def generate(self, group, endpoint=None):
            trace = await super().generate(group, endpoint)
            if sum(self.calls.values()) == 5:
                os.kill(os.getpid(), signal.SIGINT)  # the runner's handler: stop dispatching, drain
            return trace

    backend = Interrupted(concurrency=2, latency=0.01)
    config = GeneratorConfig(samples=3)
    requests = plan_requests(QUESTIONS, config, backend)
    with Journal(tmp_path / "journal.sqlite") as journal:
        with pytest.raises(KeyboardInterrupt):
            run_generation(requests, backend, journal, show_progress=False)
        done = journal.count()
    assert 5 <= done <= 6  # the 5th and the one in flight beside it, nothing after
    assert sum(backend.calls.values()) == done
    # resuming finishes the rest, and the result equals an uninterrupted run
    _, stats, traces, _ = run(MemoryBackend(), tmp_path, config=config)
    assert stats.cached == done and stats.generated == 24 - done and len(traces) == 24
    assert all(traces[r.fingerprint] == make_trace(r) for r in requests)


def test_second_ctrl_c_abandons_requests_in_flight(tmp_path):
    class Stuck(MemoryBackend):
        async def generate(self, group, endpoint=None):
            if sum(self.calls.values()) >= 3:
                self.calls[endpoint] += 1
                if self.calls[endpoint] == 4:
                    os.kill(os.getpid(), signal.SIGINT)
                    await asyncio.sleep(0.05)
                    os.kill(os.getpid(), signal.SIGINT)
                await asyncio.sleep(3600)  # a request that would never finish
            return await super().generate(group, endpoint)

    backend = Stuck(concurrency=2)
    requests = plan_requests(QUESTIONS, GeneratorConfig(samples=3), backend)
    with Journal(tmp_path / "journal.sqlite") as journal:
        with pytest.raises(KeyboardInterrupt):
            run_generation(requests, backend, journal, show_progress=False)
        assert journal.count() == 3 and backend.closed == 1


def test_arrays_round_trip_exactly():
    trace = Trace("f", "p", 1, "t", [-0.1, -1e-30, float("-inf"), -3.25], [[-0.1, -2.0, -3.0], [], [-1.0]], "stop", "raw", 5, [1, 2**40, 3, 0])
    logprobs, top, ids = unpack_arrays(pack_arrays(trace))
    assert logprobs == trace.token_logprobs and top == trace.top_logprobs and ids == trace.token_ids


def test_old_json_payload_journals_still_load(tmp_path):
    import sqlite3

    db = sqlite3.connect(tmp_path / "old.sqlite")
    db.executescript(
        "CREATE TABLE traces (fingerprint TEXT PRIMARY KEY, prompt_id TEXT NOT NULL, sample_index INTEGER NOT NULL, status TEXT NOT NULL, "
        "error TEXT, attempts INTEGER NOT NULL DEFAULT 1, payload TEXT, created_at REAL NOT NULL);"
    )
    trace = Trace("fp", "q0", 1, "old", [-0.5], [[-0.5, -1.0]], "length", "raw", 3, [7], "m", {"completion_tokens": 1})
    db.execute("INSERT INTO traces VALUES ('fp', 'q0', 1, 'ok', NULL, 1, ?, 0)", (json.dumps(trace.to_payload()),))
    db.commit()
    db.close()
    with Journal(tmp_path / "old.sqlite") as journal:
        assert journal.load(["fp"])["fp"] == trace
