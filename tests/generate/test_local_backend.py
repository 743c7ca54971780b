"""The local backend on the real embedded model: logprobs, seeds, stops."""

import asyncio
import math

import pytest

from curation.backends.local import LocalBackend
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
