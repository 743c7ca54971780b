"""Bootstrap confidence intervals for `curate eval`: AUROC, PRR, selective (kept) accuracy, and paired differences.

With a few hundred labelled questions the differences between metrics are small, and a user must
know whether they are real. Every statistic here is recomputed on ``draws`` resamples of the pool
(rows drawn with replacement), all at once as (draws, n) numpy arrays, and the interval is the
percentile interval of the draws. One fixed seed gives every metric the *same* resamples, which
is what makes a paired comparison ("cocoa_ppl vs random: ΔPRR = … [CI]") possible: the difference
is taken resample by resample, so the question-to-question variance both metrics share cancels.

The statistics agree with `curation.evaluation`'s point estimates on the original sample: rows are
ranked by the metric's dense rank (uncertainty, then its tie-break), ties are averaged (every
order inside a tie group equally likely), PRR is LM-Polygraph's, AUROC counts a tie as one half.
A resample in which a statistic is undefined (all answers right, say) is left out of its interval.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEFAULT_DRAWS = 1000
DEFAULT_SEED = 0
LEVEL = 0.95


@dataclass(frozen=True)
class Resamples:
    """Row indices of ``draws`` bootstrap resamples of an ``n``-row pool, shape (draws, n)."""

    index: np.ndarray

    @classmethod
    def draw(cls, n: int, draws: int = DEFAULT_DRAWS, seed: int = DEFAULT_SEED) -> "Resamples":
        rng = np.random.default_rng(seed)
        return cls(rng.integers(0, n, size=(draws, n)) if n else np.zeros((draws, 0), dtype=np.int64))

    @property
    def draws(self) -> int:
        return self.index.shape[0]


def interval(values: np.ndarray, level: float = LEVEL) -> list[float] | None:
    """[low, high] percentile interval of the defined draws; None when fewer than 10 are defined."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if len(values) < 10:
        return None
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(values, [tail, 100 - tail])
    return [float(low), float(high)]


def _tie_averaged_prefix(ranks: np.ndarray, quality: np.ndarray) -> np.ndarray:
    """Row-wise E[sum of quality over the m lowest-ranked entries], m = 1..n, ties in random order.

    ``ranks`` and ``quality`` are (draws, n). Replacing each entry's quality by its tie group's
    mean and taking the running sum gives the expectation (see evaluation._expected_prefix_sums).
    """
    draws, n = ranks.shape
    order = np.argsort(ranks, axis=1, kind="stable")
    r = np.take_along_axis(ranks, order, axis=1)
    q = np.take_along_axis(quality, order, axis=1).astype(np.float64)
    new_group = np.ones((draws, n), dtype=bool)
    new_group[:, 1:] = r[:, 1:] != r[:, :-1]  # column 0 starts a group in every row: groups never cross rows
    flat_new = new_group.ravel()
    starts = np.flatnonzero(flat_new)
    group = np.cumsum(flat_new) - 1
    sums = np.add.reduceat(q.ravel(), starts)
    sizes = np.diff(np.r_[starts, draws * n])
    averaged = (sums / sizes)[group].reshape(draws, n)
    return np.cumsum(averaged, axis=1)


def prr_draws(ranks: np.ndarray, quality: np.ndarray, resamples: Resamples) -> np.ndarray:
    """PRR (LM-Polygraph's, normalised between random and oracle) on every resample; NaN where undefined."""
    idx = resamples.index
    if idx.shape[1] == 0:
        return np.full(resamples.draws, np.nan)
    q = np.asarray(quality, dtype=np.float64)[idx]
    lo, hi = q.min(axis=1, keepdims=True), q.max(axis=1, keepdims=True)
    flat = np.isclose(lo, hi)
    target = (q - lo) / np.where(flat, 1.0, hi - lo)
    m = np.arange(1, idx.shape[1] + 1)
    raw = (_tie_averaged_prefix(np.asarray(ranks)[idx], target) / m).mean(axis=1)
    oracle = (np.cumsum(-np.sort(-target, axis=1), axis=1) / m).mean(axis=1)
    random = target.mean(axis=1)
    span = oracle - random
    with np.errstate(invalid="ignore", divide="ignore"):
        value = (raw - random) / span
    value[np.isclose(span, 0) | flat.ravel()] = np.nan
    return value


def auroc_draws(ranks: np.ndarray, wrong: np.ndarray, resamples: Resamples) -> np.ndarray:
    """AUROC of the ranking for detecting wrong answers on every resample (ties count 1/2); NaN without both kinds."""
    idx = resamples.index
    if idx.shape[1] == 0:
        return np.full(resamples.draws, np.nan)
    w = np.asarray(wrong, dtype=bool)[idx]
    from scipy.stats import rankdata  # here, not at import: the CLI builds its parser from evaluation's

    midranks = rankdata(np.asarray(ranks, dtype=np.float64)[idx], method="average", axis=1)
    positives = w.sum(axis=1).astype(np.float64)
    negatives = w.shape[1] - positives
    with np.errstate(invalid="ignore", divide="ignore"):
        value = ((midranks * w).sum(axis=1) - positives * (positives + 1) / 2) / (positives * negatives)
    value[(positives == 0) | (negatives == 0)] = np.nan
    return value


def selective_accuracy_draws(ranks: np.ndarray, correct: np.ndarray, resamples: Resamples, kept: np.ndarray) -> np.ndarray:
    """Expected accuracy of the ``kept[j]`` least uncertain rows of every resample, shape (draws, len(kept))."""
    idx = resamples.index
    prefix = _tie_averaged_prefix(np.asarray(ranks)[idx], np.asarray(correct, dtype=np.float64)[idx])
    kept = np.asarray(kept, dtype=np.int64)
    return prefix[:, kept - 1] / kept


def mean_draws(values: np.ndarray, draws: int = DEFAULT_DRAWS, seed: int = DEFAULT_SEED) -> np.ndarray:
    """The mean of ``values`` (e.g. 1 = right) on resamples of those rows: a kept subset's accuracy."""
    values = np.asarray(values, dtype=np.float64)
    if not len(values):
        return np.full(draws, np.nan)
    return values[Resamples.draw(len(values), draws, seed).index].mean(axis=1)


def proportion_interval(values: np.ndarray, draws: int = DEFAULT_DRAWS, seed: int = DEFAULT_SEED) -> list[float] | None:
    """95% bootstrap interval of a subset's accuracy (its rows resampled)."""
    return interval(mean_draws(values, draws, seed))
