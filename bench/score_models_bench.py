"""Benchmark: the model-backed inputs of the opt-in measures, per question (apart from score_bench.py).

    .venv/bin/python bench/score_models_bench.py                    # 64 questions, K = 8
    .venv/bin/python bench/score_models_bench.py --questions 128 --p-true 16

Timed, each after a warm-up call that loads its model (load time reported apart):
- ``embedding``: the K x K sample-to-sample matrix under embedding similarity (all-MiniLM-L6-v2,
  each distinct text embedded once), against the [n, K] reference-to-sample similarity that
  today's metrics read, on the same texts;
- ``p_true``: the scorer model (the embedded SmolLM2-135M, local) asked P(True) for each
  question's reference, one short forward pass each.

The texts are synthetic reasoning-like sentences of about 40 words, a third of them repeated
across samples (as agreeing samples are). Results go to bench/out/models.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from curation import scorer as scorer_module  # noqa: E402
from curation.recipe.sections import ScorerConfig  # noqa: E402
from curation.score import SIMILARITIES, sample_similarity_matrix  # noqa: E402

WORDS = "the gene is knocked down so expression of its target changes because the pathway loses a regulator and transcription drops".split()
LABELS = ["upregulated", "downregulated", "not differentially expressed"]


def texts(n: int, k: int, seed: int = 0) -> tuple[list[str], list[list[str]], np.ndarray]:
    rng = np.random.default_rng(seed)
    pool = [" ".join(rng.choice(WORDS, 40)) + f" <answer>{LABELS[i % 3]}</answer>" for i in range(max(4, n * k // 3))]
    samples = [[pool[int(rng.integers(len(pool)))] for _ in range(k)] for _ in range(n)]
    references = [row[0] for row in samples]
    answers = rng.integers(0, 3, (n, k))
    return references, samples, answers


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=64)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--p-true", type=int, default=16, help="questions asked P(True) (0: skip)")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "out" / "models.jsonl"))
    args = parser.parse_args()
    n, k = args.questions, args.k
    references, samples, answers = texts(n, k)
    result: dict = {"questions": n, "k": k, "cpus": os.cpu_count(), "loadavg_at_start": [round(x, 2) for x in os.getloadavg()]}

    warm = texts(2, k, seed=1)
    result["embedding_load_seconds"] = round(timed(lambda: sample_similarity_matrix("embedding", warm[1], warm[2])), 2)
    pairwise = timed(lambda: sample_similarity_matrix("embedding", samples, answers))
    reference = timed(lambda: SIMILARITIES["embedding"].fn(references, samples, answers[:, 0], answers))
    result["embedding_matrix_ms_per_question"] = round(1000 * pairwise / n, 2)
    result["embedding_reference_ms_per_question"] = round(1000 * reference / n, 2)

    if args.p_true:
        scorer = scorer_module.make_scorer(ScorerConfig(backend="local", top_logprobs=0))
        result["p_true_load_seconds"] = round(timed(lambda: scorer_module.p_true(scorer, ["warm up?"], ["<answer>up</answer>"])), 2)
        m = min(args.p_true, n)
        asked = [f"CRISPRi knockdown of GENE{i} in K562: is TARGET{i} upregulated, downregulated, or not differentially expressed?" for i in range(m)]
        seconds = timed(lambda: scorer_module.p_true(scorer, asked, references[:m]))
        result["p_true_questions"] = m
        result["p_true_ms_per_question"] = round(1000 * seconds / m, 1)
    result["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(result))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "a") as handle:
        handle.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
