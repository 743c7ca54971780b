"""A labelled run folder made from constructed traces (no model): what the eval, critic, score and study tests read."""

import numpy as np

from curation import pipeline, run_folder
from curation.generate import plan_requests
from curation.journal import Journal
from curation.recipe.dump import resolved_recipe_yaml
from curation.recipe.sections import Recipe
from curation.types import Question, Trace

LABELS = ["upregulated", "downregulated", "not differentially expressed"]


class FakeIdentity:
    def model_identity(self):
        return "fake-teacher"

    def fingerprint_params(self, config):
        return {"backend": "fake"}


def build_recipe(**overrides) -> Recipe:
    data = {
        "name": "synthetic-eval",
        "license": "cc-by-4.0",
        "source": {"path": "x.csv", "label_column": "label"},
        "prompt": {"user": "{{ gene }}?"},
        "generator": {"samples": 4},
        "answer": {"labels": LABELS},
        "score": {"metric": "cocoa_ppl"},
        "select": {"strategy": "per_class", "fraction": 0.5},
    }
    for key, value in overrides.items():
        data[key] = value
    return Recipe.model_validate(data)


def build_run(run_dir, recipe=None, n=30, seed=0):
    """A run folder whose uncertainty is informative: confident questions are mostly right.

    The traces are committed to the run's journal with the provenance `curate score` needs, so the
    folder can be rescored exactly like a real one.
    """
    recipe = recipe or build_recipe()
    rng = np.random.default_rng(seed)
    questions, truth = [], []
    for i in range(n):
        label = LABELS[i % 3]
        questions.append(Question(id=f"q{i:03d}", messages=[{"role": "user", "content": f"gene{i}?"}], columns={"gene": f"G{i}"}, label=label))
        truth.append(label)
    requests = plan_requests(questions, recipe.generator, FakeIdentity())
    confident = rng.random(n) < 0.5
    traces = {}
    for r in requests:
        i = int(r.prompt_id[1:])
        right = rng.random() < (0.9 if confident[i] else 0.3)
        answer = truth[i] if right else LABELS[(LABELS.index(truth[i]) + 1) % 3]
        scale = 0.2 if confident[i] else 1.5
        logprobs = list(-rng.exponential(scale, size=5 + i % 4))
        tops = [[lp, lp - 1.0, lp - 2.5] for lp in logprobs]
        text = f"<think>gene {i} step {r.sample_index}</think><answer>{answer}</answer>"
        traces[r.fingerprint] = Trace(r.fingerprint, r.prompt_id, r.sample_index, text, logprobs, tops, "stop", "raw", r.seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    provenance = {"backend": "fake", "model_id": "fake-teacher", "identity": "fake-teacher", "fingerprint_params": {"backend": "fake"}}
    with Journal(run_dir / run_folder.JOURNAL_FILE) as journal:
        journal.commit(traces.values())
        journal.set_meta("provenance", provenance)
    pipeline.curate(recipe, questions, requests, traces, {}, provenance, run_dir, recipe_yaml=resolved_recipe_yaml(recipe), show_progress=False)
    return run_dir
