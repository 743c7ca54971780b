"""Scorer throughput: teacher forcing vs generation of the same traces, same model, same machine, same run.

    OMP_NUM_THREADS=1 .venv/bin/python bench/scorer_throughput.py                 # 8 questions x (reference + 3 samples), 96 tokens
    OMP_NUM_THREADS=1 .venv/bin/python bench/scorer_throughput.py --questions 16 --max-new-tokens 128

The embedded SmolLM2-135M-Instruct generates each question's reference and K samples (the local
backend: one batch per question, per-row seeded sampling), then `curation.scorer.LocalScorer`
reads the very same traces back (one forward pass per question's batch; the generator's token ids,
so exactly the sampled tokens). Both figures are trace tokens per wall-second of the stage itself,
model loading excluded (each is loaded and warmed once before its clock starts). The ratio is what
counts: teacher forcing reads a trace in one pass where sampling takes one pass per token.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

COUNTRIES = ["Peru", "Kenya", "Norway", "Japan", "Chile", "Egypt", "Canada", "India", "Spain", "Ghana", "Nepal", "Fiji", "Cuba", "Iran", "Mali", "Laos"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--questions", type=int, default=8)
    parser.add_argument("--samples", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    args = parser.parse_args()

    import numpy as np

    from curation.backends.local import LocalBackend
    from curation.generate import plan_requests, run_generation
    from curation.journal import Journal, fingerprint_grid
    from curation.recipe.sections import GeneratorConfig, ScorerConfig
    from curation.scorer import LocalScorer, run_scorer
    from curation.types import Question

    questions = [
        Question(id=f"q{i}", messages=[{"role": "user", "content": f"Which continent is {COUNTRIES[i % len(COUNTRIES)]} in? Explain your reasoning step by step, then answer."}], columns={})
        for i in range(args.questions)
    ]
    config = GeneratorConfig(samples=args.samples, max_new_tokens=args.max_new_tokens, temperature=1.0, top_logprobs=5, seed=1)
    backend = LocalBackend(config)
    backend._ensure_loaded()
    scorer_config = ScorerConfig(top_logprobs=5)
    LocalScorer(scorer_config)  # import cost outside the clocks
    with tempfile.TemporaryDirectory() as folder:
        journal_path = Path(folder) / "journal.sqlite"
        requests = plan_requests(questions, config, backend)
        backend.generate_sync(plan_requests(questions[:1], config, backend))  # warm-up, not journaled
        with Journal(journal_path) as journal:
            generation = run_generation(requests, backend, journal, show_progress=False)
            traces = journal.load(r.fingerprint for r in requests)
        grid = fingerprint_grid(requests, [q.id for q in questions], config.samples)

        class Recipe:
            generator, scorer = config, scorer_config

        # the scorer loads its own copy of the model: warm it on one question before the clock
        import curation.scorer as module

        warm = LocalScorer(scorer_config)
        warm.force([module.ScoreRequest("w", "w", 0, module.hashable_messages(questions[0].messages), "warm up", None, True)])
        original = module.make_scorer
        module.make_scorer = lambda c, transport=None: warm
        try:
            outcome = run_scorer(Recipe, questions, grid, journal_path, show_progress=False)
        finally:
            module.make_scorer = original
        with Journal(journal_path) as journal:
            forced = journal.scorer_view(outcome.key).load(traces)
    worst = max(float(np.max(np.abs(np.array(forced[fp].token_logprobs) - np.array(t.token_logprobs)))) for fp, t in traces.items())
    result = {
        "traces": len(traces),
        "tokens": generation.tokens,
        "generate_seconds": round(generation.seconds, 2),
        "generate_tokens_per_s": round(generation.tokens / generation.seconds, 1),
        "score_seconds": round(outcome.stats["seconds"], 2),
        "score_tokens_per_s": round(outcome.stats["tokens"] / outcome.stats["seconds"], 1),
        "ratio": round((outcome.stats["tokens"] / outcome.stats["seconds"]) / (generation.tokens / generation.seconds), 1),
        "max_abs_logprob_difference": worst,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
