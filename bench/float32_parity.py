"""Measure: would storing the journal's logprobs as float32 keep metric parity with LM-Polygraph (1e-6 relative)?

    .venv/bin/python bench/float32_parity.py          # needs lm-polygraph==0.7.0 (as tests/score/test_score_polygraph.py)

Logprobs arrive from servers as decimal text with about 7 significant digits and are parsed to
float64; that float64 value is what LM-Polygraph would see. For traces of 1,000 and 4,000 tokens
with top-5 rows (Qwen3-class thinking traces), LM-Polygraph's estimators run on those float64
values, and curate's on the same values stored as float64 (today's journal) and as float32. The
script prints the largest relative and absolute difference per metric and stores, in
bench/out/float32_parity.json, what it found.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lm_polygraph import estimators  # noqa: E402
from lm_polygraph.stat_calculators.entropy import EntropyCalculator  # noqa: E402

from curation.score import ScoringInputs, TokenArrays, compute_scores  # noqa: E402

PAIRS = {
    "msp": estimators.MaximumSequenceProbability(),
    "perplexity": estimators.Perplexity(),
    "mean_token_entropy": estimators.MeanTokenEntropy(),
    "cocoa_msp": estimators.CocoaMSP(),
    "cocoa_ppl": estimators.CocoaPPL(),
    "cocoa_mte": estimators.CocoaMTE(),
}


def decimal7(values: np.ndarray) -> np.ndarray:
    """What a server's JSON carries: about 7 significant digits, parsed back to float64."""
    return np.array([float(f"{v:.7g}") for v in values.ravel()]).reshape(values.shape)


def traces(n: int, tokens: int, seed: int):
    rng = np.random.default_rng(seed)
    # mostly confident tokens (as in long reasoning traces), some uncertain ones
    logprobs = decimal7(-np.where(rng.random((n, tokens)) < 0.9, rng.exponential(0.05, (n, tokens)), rng.exponential(1.5, (n, tokens))))
    gaps = np.cumsum(rng.exponential(1.2, (n, tokens, 4)), axis=2)
    top = np.concatenate([logprobs[:, :, None], decimal7(logprobs[:, :, None] - gaps)], axis=2)
    return logprobs, top


def scores(logprobs: np.ndarray, top: np.ndarray, similarity: np.ndarray, answers: np.ndarray) -> dict:
    n, tokens = logprobs.shape
    offsets = np.arange(0, (n + 1) * tokens, tokens)
    arrays = TokenArrays.from_dense(offsets, logprobs.reshape(-1), top.reshape(-1, top.shape[2]))
    return compute_scores(ScoringInputs(arrays, answers[:, 0], answers, similarity=similarity), list(PAIRS)).values


def main() -> None:
    results = {}
    for tokens in (1000, 4000):
        n = 200 if tokens == 1000 else 50
        logprobs, top = traces(n, tokens, seed=tokens)
        rng = np.random.default_rng(1)
        similarity = rng.uniform(0, 1, (n, 8))
        answers = rng.integers(0, 3, (n, 8))
        stats = {"greedy_log_likelihoods": [list(row) for row in logprobs], "greedy_log_probs": list(top), "greedy_sentence_similarity": similarity}
        stats.update(EntropyCalculator()(stats))
        theirs = {name: np.asarray(estimator(stats), dtype=np.float64) for name, estimator in PAIRS.items()}
        for dtype in (np.float64, np.float32):
            ours = scores(logprobs.astype(dtype), top.astype(dtype), similarity, answers)
            for name in PAIRS:
                diff = np.abs(ours[name] - theirs[name])
                rel = diff / np.maximum(np.abs(theirs[name]), 1e-300)
                key = f"{tokens} tokens, {np.dtype(dtype).name}"
                results.setdefault(key, {})[name] = {"max_rel": float(rel.max()), "max_abs": float(diff.max())}
    for key, metrics in results.items():
        print(key)
        for name, r in metrics.items():
            print(f"  {name:20s} max rel {r['max_rel']:.2e}  max abs {r['max_abs']:.2e}")
    out = ROOT / "bench" / "out" / "float32_parity.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
