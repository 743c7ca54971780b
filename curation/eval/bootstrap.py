"""Bootstrap confidence intervals for `curate eval`: AUROC, PRR, selective (kept) accuracy, and paired differences.

With a few hundred labelled questions the differences between metrics are small, and a user must
know whether they are real. Every statistic here is recomputed on ``draws`` resamples of the pool
(rows drawn with replacement), all at once as (draws, n) numpy arrays, and the interval is the
percentile interval of the draws. One fixed seed gives every metric the *same* resamples, which
is what makes a paired comparison ("cocoa_ppl vs random: ΔPRR = … [CI]") possible: the difference
is taken resample by resample, so the question-to-question variance both metrics share cancels.

The statistics agree with `curation.eval.ranking`'s point estimates on the original sample: rows are
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
    mean and taking the running sum gives the expectation (see ranking._expected_prefix_sums).
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
    from scipy.stats import rankdata  # here, not at import: scipy is slow to import and only the intervals need it

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


RANDOM = "random"


def paired_comparisons(draws: dict[str, dict[str, np.ndarray]], report: dict, n_draws: int, pool_of: dict[str, str] | None = None) -> list[dict]:
    """ΔPRR and ΔAUROC with paired bootstrap intervals: every metric against random, and the
    selection metric against every other metric. A difference whose interval excludes 0 is one
    the pool's size can tell apart from chance.

    `random` is ranked by a constant (every order equally likely), so its PRR is exactly 0 and its
    AUROC exactly 0.5 on every resample: "m vs random" is m's own interval, said as a comparison.
    Two metrics ranked on different pools (``pool_of``; variable K) share no resamples, so that
    pair is not compared.
    """
    pool_of = pool_of or {}
    baseline = {"auroc": np.full(n_draws, 0.5), "prr": np.zeros(n_draws)}
    table = {**draws, RANDOM: baseline}
    point = {name: {"auroc": e["auroc"], "prr": e["prr"]} for name, e in report["metrics"].items()}
    point[RANDOM] = {"auroc": 0.5, "prr": 0.0}
    pairs = [(name, RANDOM) for name in draws]
    chosen = report.get("selection_metric")
    if chosen in draws:
        pairs += [(chosen, other) for other in draws if other != chosen and pool_of.get(other) == pool_of.get(chosen)]
    out = []
    for a, b in pairs:
        row = {"a": a, "b": b}
        for key in ("prr", "auroc"):
            pa, pb = point[a][key], point[b][key]
            row[f"delta_{key}"] = None if pa is None or pb is None else float(pa - pb)
            row[f"delta_{key}_ci"] = interval(table[a][key] - table[b][key])
        ci = row["delta_prr_ci"]
        row["verdict"] = "not distinguishable" if ci is None or ci[0] <= 0 <= ci[1] else (f"{a} better" if ci[0] > 0 else f"{b} better")
        out.append(row)
    return out
