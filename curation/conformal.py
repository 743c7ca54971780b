"""Conformal selection: keep a set of questions whose expected share of wrong answers is at most a level.

A few labelled *calibration* questions, exchangeable with the pool (drawn from the same
distribution, scored the same way), turn any uncertainty score u into conformal p-values
(Jin & Candès, "Selection by prediction with conformal p-values", JMLR 2023, arXiv:2210.01408).
The null hypothesis of a pool question j is "its kept trace is wrong", and

    p_j = (1 + #{calibration questions i that are wrong with u_i <= u_j}) / (n + 1)

over the n calibration questions (right and wrong). Benjamini-Hochberg at level alpha on the pool's
p-values then selects a set whose false discovery rate, E[share of wrong answers among the kept],
is at most alpha, in finite samples and whatever the score. It is an expectation over the draw of
the calibration and pool questions, not a bound on any one run's share.

Ties are counted against the pool question (``<=``), which keeps the p-values valid (conservative).
Scores are compared as (uncertainty, tie-break) pairs, the order every other strategy ranks by.

Scopes (``select.scope``):
- ``per_class`` (Mondrian): each predicted class is calibrated on its own questions and run at alpha.
  The guarantee holds within each class; the whole split's share can reach 1 - (1 - alpha)^G.
- ``overall``: each of the G classes with candidates runs at alpha / G. The whole split's FDP is at
  most the sum of the classes' FDPs, so its expectation is at most alpha.

A class with fewer than ceil(1/level) - 1 calibration questions can keep nothing: its smallest
p-value, 1/(n+1), is above the level. Its rows say so (``too_few_calibration_labels``).

The learned score (``calibrate.learn``, after Gui, Jin & Candès, "Conformal Alignment", NeurIPS
2024): the labelled questions are split once, at random, into a fitting part and a calibration
part. A logistic regression over every computed metric and the trace length is fit on the fitting
part, and it replaces the recipe's metric only if its cross-validated AUROC on the fitting part is
higher than the metric's there. The calibration part is used for nothing but the p-values, so the
guarantee holds conditional on the fitting part.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from curation.eval.bootstrap import Resamples, auroc_draws, interval

LEARNED = "learned"  # the name of the learned score, where a metric's name would be


def min_calibration(level: float) -> int:
    """The fewest calibration questions with which a class can keep anything at ``level``."""
    return max(0, math.ceil(1 / level - 1e-9) - 1)


def conformal_pvalues(calibration_scores: np.ndarray, calibration_wrong: np.ndarray, pool_scores: np.ndarray) -> np.ndarray:
    """p_j = (1 + #{i wrong, u_i <= u_j}) / (n + 1); scores are ranks or floats (lower = more certain)."""
    n = len(calibration_scores)
    wrong_scores = np.sort(np.asarray(calibration_scores, dtype=np.float64)[np.asarray(calibration_wrong, dtype=bool)])
    at_or_below = np.searchsorted(wrong_scores, np.asarray(pool_scores, dtype=np.float64), side="right")
    return (1.0 + at_or_below) / (n + 1.0)


def benjamini_hochberg(p_values: np.ndarray, level: float) -> np.ndarray:
    """The rejected hypotheses (here: the kept questions) of BH at ``level``, as a bool mask."""
    m = len(p_values)
    kept = np.zeros(m, dtype=bool)
    if not m:
        return kept
    order = np.argsort(p_values, kind="stable")
    passing = np.flatnonzero(p_values[order] <= level * np.arange(1, m + 1) / m)
    if len(passing):
        kept[order[: passing[-1] + 1]] = True
    return kept


def order_scores(uncertainty: np.ndarray, tiebreak: np.ndarray | None) -> np.ndarray:
    """Dense ranks of (uncertainty, tie-break): the comparison every strategy ranks by, as one number."""
    u = np.asarray(uncertainty, dtype=np.float64)
    t = np.zeros(len(u)) if tiebreak is None else np.where(np.isfinite(tiebreak), tiebreak, np.inf)
    if not len(u):
        return u
    order = np.lexsort((t, u))
    new = np.ones(len(u), dtype=bool)
    new[1:] = (u[order][1:] != u[order][:-1]) | (t[order][1:] != t[order][:-1])
    ranks = np.empty(len(u))
    ranks[order] = np.cumsum(new)
    return ranks


def auroc(scores: np.ndarray, wrong: np.ndarray) -> float | None:
    """AUROC of the score for finding wrong answers (ties count 1/2); None without both right and wrong."""
    wrong = np.asarray(wrong, dtype=bool)
    value = auroc_draws(scores, wrong, Resamples(np.arange(len(wrong))[None, :]))[0] if len(wrong) else np.nan
    return None if not np.isfinite(value) else float(value)


def auroc_with_interval(scores: np.ndarray, wrong: np.ndarray, seed: int = 0) -> dict:
    """AUROC of the score for finding wrong answers (0.5 = chance), with a 95% bootstrap interval."""
    wrong = np.asarray(wrong, dtype=bool)
    point = auroc_draws(scores, wrong, Resamples(np.arange(len(wrong))[None, :]))[0] if len(wrong) else np.nan
    draws = auroc_draws(scores, wrong, Resamples.draw(len(wrong), seed=seed))
    return {"auroc": None if not np.isfinite(point) else round(float(point), 4), "interval": interval(draws), "n": int(len(wrong)), "wrong": int(wrong.sum())}


def at_chance(auroc: dict) -> bool:
    """True when the AUROC interval contains 0.5 (or there is none): the score does not separate right from wrong."""
    low_high = auroc.get("interval")
    return low_high is None or low_high[0] <= 0.5 <= low_high[1]


@dataclass
class ClassStatement:
    """What one predicted class's conformal selection can state."""

    label: str
    level: float
    calibration: int
    calibration_wrong: int
    candidates: int
    kept: int = 0
    threshold: float | None = None  # the largest kept score (an order-score rank), None when nothing is kept
    too_few_labels: bool = False
    calibration_auroc: dict = field(default_factory=dict)
    kept_calibration_accuracy: float | None = None  # calibration rows at or below the threshold, right share
    kept_calibration_rows: int = 0

    def to_json(self) -> dict:
        return {
            "level": round(self.level, 6), "calibration": self.calibration, "calibration_wrong": self.calibration_wrong,
            "candidates": self.candidates, "kept": self.kept, "too_few_labels": self.too_few_labels,
            "calibration_auroc": self.calibration_auroc, "kept_calibration_rows": self.kept_calibration_rows,
            "kept_calibration_accuracy": self.kept_calibration_accuracy,
        }


def select_by_class(
    scores: np.ndarray, predicted: np.ndarray, pool: np.ndarray, calibration: np.ndarray, wrong: np.ndarray, level: float, scope: str
) -> tuple[np.ndarray, np.ndarray, list[ClassStatement]]:
    """BH per predicted class over pool rows (``pool`` mask) against calibration rows (``calibration`` mask).

    Returns (kept mask, too-few-labels mask over the pool rows of classes that could keep nothing, statements).
    The statements' calibration AUROC is left to ``describe`` (a bootstrap: the study's thousands of splits skip it).
    """
    n = len(scores)
    kept, starved = np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
    classes = sorted({predicted[i] for i in np.flatnonzero(pool)})
    class_level = level / len(classes) if scope == "overall" and classes else level
    statements = []
    for label in classes:
        in_class = np.array([a == label for a in predicted], dtype=bool)
        pool_rows, cal_rows = np.flatnonzero(pool & in_class), np.flatnonzero(calibration & in_class)
        statement = ClassStatement(str(label), class_level, len(cal_rows), int(wrong[cal_rows].sum()), len(pool_rows))
        if len(cal_rows) < min_calibration(class_level):
            statement.too_few_labels = True
            starved[pool_rows] = True
        else:
            chosen = benjamini_hochberg(conformal_pvalues(scores[cal_rows], wrong[cal_rows], scores[pool_rows]), class_level)
            kept[pool_rows[chosen]] = True
            statement.kept = int(chosen.sum())
            if statement.kept:
                statement.threshold = float(scores[pool_rows[chosen]].max())
                below = cal_rows[scores[cal_rows] <= statement.threshold]
                statement.kept_calibration_rows = len(below)
                if len(below):
                    statement.kept_calibration_accuracy = round(float(1 - wrong[below].mean()), 4)
        statements.append(statement)
    return kept, starved, statements


def describe(statements: list[ClassStatement], scores: np.ndarray, predicted: np.ndarray, calibration: np.ndarray, wrong: np.ndarray) -> None:
    """Each class's calibration AUROC, with its bootstrap interval."""
    for statement in statements:
        rows = np.flatnonzero(calibration & np.array([str(a) == statement.label for a in predicted], dtype=bool))
        statement.calibration_auroc = auroc_with_interval(scores[rows], wrong[rows])


# --------------------------------------------------------------------------- the learned score
@dataclass
class LearnedScore:
    """A logistic regression of "wrong" on the run's metrics; the card lists its inputs and weights."""

    inputs: list[str]  # feature names, "<metric>" or "<metric>:missing"
    weights: list[float]  # on standardised inputs
    intercept: float
    medians: list[float]  # NaN imputation, from the fitting part
    means: list[float]
    scales: list[float]
    columns: list[str]  # the metric columns read, in order

    def features(self, values: dict[str, np.ndarray]) -> np.ndarray:
        raw = np.column_stack([np.asarray(values[c], dtype=np.float64) for c in self.columns])
        return _design(raw, self.columns, self.inputs, self.medians, self.means, self.scales)

    def predict(self, values: dict[str, np.ndarray]) -> np.ndarray:
        """P(wrong) for every row: the learned uncertainty."""
        z = self.features(values) @ np.asarray(self.weights) + self.intercept
        return 1.0 / (1.0 + np.exp(-z))

    def to_json(self) -> dict:
        return {"inputs": dict(zip(self.inputs, (round(w, 6) for w in self.weights))), "intercept": round(self.intercept, 6), "imputation": "median of the fitting part, plus a missing-value indicator per input that has NaN there"}


def _design(raw: np.ndarray, columns: list[str], inputs: list[str], medians, means, scales) -> np.ndarray:
    parts = []
    for j, name in enumerate(columns):
        column = raw[:, j]
        parts.append(np.where(np.isfinite(column), column, medians[j]))
        if f"{name}:missing" in inputs:
            parts.append((~np.isfinite(column)).astype(np.float64))
    x = np.column_stack(parts) if parts else np.zeros((len(raw), 0))
    return (x - np.asarray(means)) / np.asarray(scales)


def fit_learned(values: dict[str, np.ndarray], wrong: np.ndarray, seed: int = 0) -> LearnedScore | None:
    """Fit on the given (fitting-part) rows; None when there is nothing to learn from (one class only, or no finite input)."""
    from sklearn.linear_model import LogisticRegression

    wrong = np.asarray(wrong, dtype=bool)
    columns = [name for name, v in values.items() if np.isfinite(np.asarray(v, dtype=np.float64)).any()]
    if not columns or wrong.all() or not wrong.any():
        return None
    raw = np.column_stack([np.asarray(values[c], dtype=np.float64) for c in columns])
    medians = [float(np.nanmedian(raw[:, j])) for j in range(len(columns))]
    inputs = []
    for j, name in enumerate(columns):
        inputs.append(name)
        if not np.isfinite(raw[:, j]).all():
            inputs.append(f"{name}:missing")
    unscaled = _design(raw, columns, inputs, medians, np.zeros(len(inputs)), np.ones(len(inputs)))
    means, scales = unscaled.mean(axis=0), unscaled.std(axis=0)
    scales = np.where(scales > 0, scales, 1.0)
    model = LogisticRegression(max_iter=1000, random_state=seed).fit((unscaled - means) / scales, wrong)
    return LearnedScore(inputs, [float(w) for w in model.coef_[0]], float(model.intercept_[0]), medians, list(means), list(scales), columns)


def cross_validated_auroc(values: dict[str, np.ndarray], wrong: np.ndarray, seed: int = 0) -> float | None:
    """The learned score's out-of-fold AUROC on the fitting part (stratified k-fold, k <= 5); None when too few of a kind."""
    from sklearn.model_selection import StratifiedKFold

    wrong = np.asarray(wrong, dtype=bool)
    folds = min(5, int(wrong.sum()), int((~wrong).sum()))
    if folds < 2:
        return None
    out_of_fold = np.full(len(wrong), np.nan)
    for train, test in StratifiedKFold(folds, shuffle=True, random_state=seed).split(np.zeros(len(wrong)), wrong):
        model = fit_learned({k: np.asarray(v)[train] for k, v in values.items()}, wrong[train], seed)
        if model is None:
            return None
        out_of_fold[test] = model.predict({k: np.asarray(v)[test] for k, v in values.items()})
    return auroc(out_of_fold, wrong)


def fit_split(ids: np.ndarray, labelled: np.ndarray, fit_fraction: float, seed: int) -> np.ndarray:
    """The fitting part of the labelled rows (a bool mask): a seeded draw over their sorted ids, so every way to a run folder agrees."""
    rows = np.flatnonzero(labelled)
    order = rows[np.argsort(ids[rows].astype(str), kind="stable")]
    drawn = np.random.default_rng(seed).permutation(order)
    fit = np.zeros(len(ids), dtype=bool)
    fit[drawn[: int(round(fit_fraction * len(drawn)))]] = True
    return fit
