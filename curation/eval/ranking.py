"""How well an uncertainty ranking separates right answers from wrong ones: AUROC, PRR, selective accuracy.

Every statistic ranks rows as selection does (``ranking``: the metric's uncertainty, then its
tie-break) and treats the order inside a tie group as random, so a metric with many ties (the
consistency metrics) is judged fairly. ``curation.eval.bootstrap`` recomputes the same statistics
on resamples, vectorised.
"""

from __future__ import annotations

import numpy as np


def ranking(uncertainty: np.ndarray, tiebreak: np.ndarray | None = None) -> np.ndarray:
    """Dense ranks of rows by (uncertainty, tie-break), as selection orders them; equal keys share a rank.

    Undefined values rank last (selection never keeps them). Higher rank = more uncertain.
    """
    u = np.where(np.isfinite(uncertainty), uncertainty, np.inf)
    t = np.zeros(len(u)) if tiebreak is None else np.where(np.isfinite(tiebreak), tiebreak, np.inf)
    order = np.lexsort((t, u))
    su, st = u[order], t[order]
    new_group = np.ones(len(u), dtype=bool)
    new_group[1:] = (su[1:] != su[:-1]) | (st[1:] != st[:-1])
    ranks = np.empty(len(u), dtype=np.int64)
    ranks[order] = np.cumsum(new_group) - 1
    return ranks


def _expected_prefix_sums(ranks: np.ndarray, quality: np.ndarray) -> np.ndarray:
    """E[sum of quality over the m lowest-ranked rows], m = 1..n, with ties in random order.

    Inside a tie group every order is equally likely, so the expected prefix grows by the group's
    mean quality per row. This makes PRR and selective accuracy deterministic and fair to metrics
    with many ties (self-consistency, CoCoA with answer similarity).
    """
    order = np.argsort(ranks, kind="stable")
    r, q = ranks[order], quality[order].astype(np.float64)
    n = len(r)
    starts = np.flatnonzero(np.r_[True, r[1:] != r[:-1]])
    sizes = np.diff(np.r_[starts, n])
    group_sums = np.add.reduceat(q, starts) if n else np.zeros(0)
    before = np.r_[0.0, np.cumsum(group_sums)[:-1]]
    group = np.repeat(np.arange(len(starts)), sizes)
    within = np.arange(n) - starts[group] + 1
    return before[group] + within * (group_sums / sizes)[group]


def prr(uncertainty: np.ndarray, quality: np.ndarray, tiebreak: np.ndarray | None = None) -> dict:
    """Prediction-rejection ratio as LM-Polygraph computes it, normalised between random and oracle.

    ``quality`` is higher-is-better (1 = correct). As LM-Polygraph's PredictionRejectionArea with
    max_rejection = 1: the quality is min-max normalised, rows are sorted by uncertainty, and the
    score is the mean over m = 1..n of the mean quality of the m least uncertain rows. The oracle
    sorts by quality; the random baseline is its exact expectation, mean(quality) (LM-Polygraph
    averages 1,000 shuffles). Ties are averaged (see ``_expected_prefix_sums``).
    Returns {"prr", "raw", "oracle", "random"}; prr is None when oracle == random (all rows alike).
    """
    quality = np.asarray(quality, dtype=np.float64)
    n = len(quality)
    if n == 0:
        return {"prr": None, "raw": None, "oracle": None, "random": None}
    lo, hi = quality.min(), quality.max()
    if np.isclose(lo, hi):
        lo, hi = lo - 1, hi + 1
    target = (quality - lo) / (hi - lo)
    m = np.arange(1, n + 1)
    raw = float(np.mean(_expected_prefix_sums(ranking(uncertainty, tiebreak), target) / m))
    oracle = float(np.mean(np.cumsum(np.sort(target)[::-1]) / m))
    random = float(target.mean())
    value = None if np.isclose(oracle, random) else (raw - random) / (oracle - random)
    return {"prr": value, "raw": raw, "oracle": oracle, "random": random}


def auroc(uncertainty: np.ndarray, wrong: np.ndarray, tiebreak: np.ndarray | None = None) -> float | None:
    """AUROC of the uncertainty ranking for detecting wrong answers (through `evaluate`'s roc_auc); None without both kinds."""
    from curation.eval.classification import load_metric

    wrong = np.asarray(wrong, dtype=bool)
    if wrong.all() or not wrong.any():
        return None
    ranks = ranking(uncertainty, tiebreak).astype(np.float64)
    return float(load_metric("roc_auc").compute(references=wrong.astype(np.int32), prediction_scores=ranks)["roc_auc"])


def selective_accuracy(uncertainty: np.ndarray, correct: np.ndarray, tiebreak: np.ndarray | None = None) -> np.ndarray:
    """Expected accuracy of the m least uncertain rows, m = 1..n."""
    n = len(correct)
    return _expected_prefix_sums(ranking(uncertainty, tiebreak), np.asarray(correct, dtype=np.float64)) / np.arange(1, n + 1)
