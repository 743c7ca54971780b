"""Parity with LM-Polygraph 0.7.0's own estimators and PRR on identical constructed `stats` (slow: imports it).

LM-Polygraph is not a dependency of curate; CI installs it (`pip install -c constraints lm-polygraph==0.7.0`)
and this module is skipped where it is missing.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest

pytestmark = pytest.mark.slow

estimators = pytest.importorskip("lm_polygraph.estimators", reason="lm-polygraph 0.7.0 not installed")

from lm_polygraph.stat_calculators.entropy import EntropyCalculator  # noqa: E402
from lm_polygraph.ue_metrics.pred_rej_area import PredictionRejectionArea  # noqa: E402
from lm_polygraph.ue_metrics.ue_metric import get_random_scores, normalize_metric  # noqa: E402

from curation.eval import ranking  # noqa: E402
from curation.score import ScoringInputs, TokenArrays, compute_scores  # noqa: E402

TOL = 1e-6


def constructed(seed=0, n=200, k=8, top_k=5):
    """Random traces (1..60 tokens, the last one standing for EOS), ragged top-k rows, answers and a similarity."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 60, n)
    logprobs = [-rng.exponential(0.8, size=m) for m in lengths]
    tops = []
    for lp in logprobs:
        rows = []
        for chosen in lp:
            width = int(rng.integers(1, top_k + 1))  # some rows shorter than k
            rest = chosen - rng.exponential(1.0, size=width - 1)
            rows.append(np.sort(np.r_[chosen, rest])[::-1])
        tops.append(rows)
    similarity = rng.uniform(0, 1, size=(n, k))
    similarity[rng.random((n, k)) < 0.3] = 1.0
    answers = rng.integers(0, 3, size=(n, k))
    return logprobs, tops, similarity, answers


def polygraph_stats(logprobs, tops, similarity, top_k=5):
    # LM-Polygraph's entropy calculator takes each token's full log-distribution and masks -inf:
    # the top-k rows padded with -inf are exactly what it sees from a truncated server response.
    padded = [np.array([np.r_[row, [-np.inf] * (top_k - len(row))] for row in rows]) for rows in tops]
    stats = {"greedy_log_likelihoods": [list(lp) for lp in logprobs], "greedy_log_probs": padded, "greedy_sentence_similarity": similarity}
    stats.update(EntropyCalculator()(stats))
    return stats


@pytest.mark.parametrize("seed", [0, 1])
def test_estimators_match_lm_polygraph(seed):
    logprobs, tops, similarity, answers = constructed(seed)
    stats = polygraph_stats(logprobs, tops, similarity)
    arrays = TokenArrays.from_lists([list(x) for x in logprobs], [[list(r) for r in rows] for rows in tops])
    assert arrays.top_row_offsets is not None  # the ragged path is the one compared
    ours = compute_scores(ScoringInputs(arrays, answers[:, 0], answers, similarity=similarity)).values
    pairs = {
        "msp": estimators.MaximumSequenceProbability(),
        "perplexity": estimators.Perplexity(),
        "mean_token_entropy": estimators.MeanTokenEntropy(),
        "cocoa_msp": estimators.CocoaMSP(),
        "cocoa_ppl": estimators.CocoaPPL(),
        "cocoa_mte": estimators.CocoaMTE(),
    }
    for name, estimator in pairs.items():
        theirs = np.asarray(estimator(stats), dtype=np.float64)
        assert np.allclose(ours[name], theirs, rtol=0, atol=TOL), name


def test_estimators_match_lm_polygraph_from_float32_parquet_columns():
    import pyarrow as pa

    logprobs, tops, similarity, answers = constructed(2)
    # the traces parquet stores float32: parity holds for the float32 values themselves
    logprobs32 = [lp.astype(np.float32).astype(np.float64) for lp in logprobs]
    tops32 = [[r.astype(np.float32).astype(np.float64) for r in rows] for rows in tops]
    stats = polygraph_stats(logprobs32, tops32, similarity)
    arrays = TokenArrays.from_arrow(
        pa.array([lp.astype(np.float32) for lp in logprobs], pa.list_(pa.float32())),
        pa.array([[r.astype(np.float32) for r in rows] for rows in tops], pa.list_(pa.list_(pa.float32()))),
    )
    ours = compute_scores(ScoringInputs(arrays, answers[:, 0], answers, similarity=similarity)).values
    for name, estimator in (("msp", estimators.MaximumSequenceProbability()), ("mean_token_entropy", estimators.MeanTokenEntropy()), ("cocoa_ppl", estimators.CocoaPPL())):
        assert np.allclose(ours[name], estimator(stats), rtol=0, atol=TOL), name


def test_prr_matches_lm_polygraph():
    rng = np.random.default_rng(3)
    for n in (7, 50, 400):
        uncertainty = rng.normal(size=n)  # continuous: no ties, where LM-Polygraph's argsort order is defined
        correct = (rng.random(n) < 1 / (1 + np.exp(2 * uncertainty))).astype(float)
        ue_metric = PredictionRejectionArea()
        raw = ue_metric(uncertainty, correct)
        oracle = ue_metric(-correct, correct)
        random = get_random_scores(ue_metric, correct)  # 1,000 shuffles; ours is the exact expectation
        ours = ranking.prr(uncertainty, correct)
        assert ours["raw"] == pytest.approx(raw, abs=1e-12)
        assert ours["oracle"] == pytest.approx(oracle, abs=1e-12)
        assert ours["random"] == pytest.approx(random, abs=0.02)
        assert ours["prr"] == pytest.approx(normalize_metric(raw, oracle, ours["random"]), abs=1e-12)
        assert ours["prr"] == pytest.approx(normalize_metric(raw, oracle, random), abs=0.1)
