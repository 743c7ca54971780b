"""The local backend on the real embedded model: logprobs, seeds, stops."""

import asyncio
import math

import pytest

from curation.backends.local import LocalBackend, usable_cores
from curation.generate import plan_requests
from curation.recipe.sections import GeneratorConfig
from curation.types import Question

pytestmark = pytest.mark.slow

QUESTION = Question(
    id="q",
    messages=[{"role": "system", "content": "Answer in one word."}, {"role": "user", "content": "Is the sky blue? Answer yes or no."}],
    columns={},
)


@pytest.fixture(scope="module")
def backend():
    return LocalBackend(GeneratorConfig(samples=3, max_new_tokens=12, top_logprobs=5, seed=3))


def generate(backend, config, question=QUESTION):
    requests = plan_requests([question], config, backend)
    return asyncio.run(backend.generate(backend.group(requests)[0]))


def test_reference_is_greedy_and_logprobs_are_consistent(backend):
    traces = generate(backend, backend.config)
    assert [t.sample_index for t in traces] == [0, 1, 2, 3]
    ref = traces[0]
    assert ref.is_reference and ref.seed is None and ref.logprob_kind == "raw"
    for trace in traces:
        assert len(trace.token_logprobs) == len(trace.top_logprobs) == len(trace.token_ids) > 0
        for lp, top in zip(trace.token_logprobs, trace.top_logprobs):
            assert lp <= 0 and top == sorted(top, reverse=True) and len(top) == 5
            assert lp <= top[0] + 1e-5
    # greedy: every chosen token is the most likely one
    assert all(math.isclose(lp, top[0], abs_tol=1e-5) for lp, top in zip(ref.token_logprobs, ref.top_logprobs))
    # a 5-way truncated distribution never sums past 1
    assert all(sum(math.exp(x) for x in top) <= 1 + 1e-5 for t in traces for top in t.top_logprobs)


def test_same_seed_same_traces_and_seeds_differ(backend):
    first = generate(backend, backend.config)
    second = generate(backend, backend.config)
    assert [(t.text, t.token_logprobs) for t in first] == [(t.text, t.token_logprobs) for t in second]
    other = generate(backend, backend.config.model_copy(update={"seed": 4}))
    assert first[0].text == other[0].text  # greedy reference does not depend on the seed
    assert [t.token_ids for t in first[1:]] != [t.token_ids for t in other[1:]]


def test_stop_sequence_and_length(backend):
    config = backend.config.model_copy(update={"stop": ["."], "max_new_tokens": 40, "samples": 1})
    for trace in generate(backend, config):
        if trace.finish_reason == "stop":
            assert trace.text.count(".") <= 1
        else:
            assert trace.finish_reason == "length" and len(trace.token_ids) == 40
    short = generate(backend, backend.config.model_copy(update={"max_new_tokens": 2, "samples": 1}))
    assert all(t.finish_reason in ("length", "stop") and len(t.token_ids) <= 2 for t in short)


def test_questions_decoded_at_once_give_the_traces_one_at_a_time_gives(backend, tmp_path):
    """One worker thread per core, one question each: a question's batch, and so its traces, bit for bit, and its fingerprints."""
    import torch

    from curation.generate import run_generation
    from curation.journal import Journal

    questions = [Question(id=f"q{i}", messages=[{"role": "user", "content": f"Name a colour that starts with {c}."}], columns={}) for i, c in enumerate("BGRY")]
    config = backend.config.model_copy(update={"max_new_tokens": 8})
    assert 1 <= backend.concurrency <= (1 if torch.cuda.is_available() else usable_cores())
    requests = plan_requests(questions, config, backend)
    by_id = {q.id: q for q in questions}
    assert all(r.fingerprint == reference_fingerprint(by_id[r.prompt_id], r, config, backend) for r in requests)  # what an older journal holds
    runs = {}
    for workers in (1, 3):
        backend.concurrency = workers
        with Journal(tmp_path / f"{workers}.sqlite") as journal:
            stats = run_generation(requests, backend, journal, show_progress=False)
            runs[workers] = journal.load(r.fingerprint for r in requests)
        assert stats.generated == len(requests) == 16 and stats.failed == 0
    one, three = runs[1], runs[3]
    assert [(t.token_ids, t.token_logprobs, t.top_logprobs) for t in one.values()] == [(three[k].token_ids, three[k].token_logprobs, three[k].top_logprobs) for k in one]


def reference_fingerprint(question, request, config, backend):
    """The fingerprint the plain way: the local backend's params are {batch, backend}, as before the workers."""
    import hashlib
    import json
    from dataclasses import asdict

    key = {"model": backend.model_identity(), "messages": question.messages, "params": asdict(request.params), "sample_index": request.sample_index,
           "seed": request.seed, "backend": {"batch": config.samples + 1, "backend": "local"}}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
