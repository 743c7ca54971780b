"""The quickstart's sampling settings reach the model: the local backend samples at the recipe's temperature and top-p."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from curation.generate import plan_requests
from curation.recipe.load import load_recipe
from curation.types import Question
from tests.conftest import REPO


class _Recorded(Exception):
    pass


def test_local_backend_samples_with_the_samples_params_not_the_references(monkeypatch):
    """A question's batch starts with the greedy reference (params: temperature 1.0); the samples must not inherit them."""
    import torch

    from curation.backends import local

    seen = {}

    def recording_sampler(greedy_rows, generators, temperature, top_p):
        seen.update(greedy=greedy_rows, temperature=temperature, top_p=top_p)
        raise _Recorded

    config = load_recipe(str(REPO / "recipes" / "quickstart.yaml")).recipe.generator.model_copy(update={"top_p": 0.9})
    backend = local.LocalBackend(config)
    tokenizer = SimpleNamespace(apply_chat_template=lambda *a, **k: {"input_ids": torch.tensor([[1, 2, 3]])})
    model = SimpleNamespace(device="cpu", generation_config=SimpleNamespace(eos_token_id=0))
    monkeypatch.setattr(backend, "_ensure_loaded", lambda: (model, tokenizer))
    monkeypatch.setattr(backend, "_thread_tokenizer", lambda: tokenizer)  # each worker thread's copy of the tokenizer
    monkeypatch.setattr(local, "_SeededRowSampler", recording_sampler)
    question = Question(id="q", messages=[{"role": "user", "content": "?"}], columns={})
    with pytest.raises(_Recorded):
        backend.generate_sync(plan_requests([question], config, backend))
    assert seen == {"greedy": [True] + [False] * config.samples, "temperature": config.temperature, "top_p": 0.9}
    assert config.temperature != 1.0  # the quickstart samples below 1.0, so the bug this guards against would show


def test_quickstart_stays_small_and_offline():
    recipe = load_recipe(str(REPO / "recipes" / "quickstart.yaml")).recipe
    assert recipe.generator.backend == "local" and recipe.generator.model == "embedded"
    assert recipe.source.path and recipe.source.limit <= 12
    assert recipe.generator.max_new_tokens <= 64 and recipe.generator.stop  # short traces: ~3 min on 2 cores
    assert recipe.train is not None and recipe.train.max_steps <= 5 and recipe.source.label_column
