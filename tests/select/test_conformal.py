"""Conformal selection (curation.conformal, select.strategy conformal): the FDR guarantee on exchangeable draws.

Each draw makes calibration and pool questions from one distribution with known right/wrong
answers, selects with BH on conformal p-values, and measures the realized share of wrong answers
among the kept (FDP; 0 when nothing is kept). The guarantee is on the mean FDP, so the tests check
mean FDP <= level + 3 standard errors over at least 2,000 draws.
"""

from __future__ import annotations

import numpy as np
import pytest

from curation import conformal
from curation.recipe.sections import CalibrateConfig, SelectConfig
from curation.select import (
    CALIBRATION, FITTING, NOT_DISCOVERED, TOO_FEW_LABELS, UNPARSED, quality_statement, select,
)

DRAWS = 2000


def draw_task(rng, n: int, classes: int, wrong_rate: float, separation: float, ties: bool = False):
    """Questions with a predicted class, a right/wrong answer and an uncertainty that is higher, on average, when wrong."""
    predicted = rng.integers(0, classes, n)
    rate = np.atleast_1d(wrong_rate)[predicted % len(np.atleast_1d(wrong_rate))]
    wrong = rng.random(n) < rate
    u = rng.normal(0, 1, n) + separation * wrong
    if ties:
        u = np.round(u)  # a handful of values: many ties, counted against the pool question
    return predicted.astype(str).astype(object), wrong, u


def realized_fdp(kept: np.ndarray, wrong: np.ndarray) -> float:
    return float(wrong[kept].mean()) if kept.any() else 0.0


def run_draws(n_cal: int, n_pool: int, classes: int, level: float, scope: str, wrong_rate, separation: float, ties=False, seed=0):
    rng = np.random.default_rng(seed)
    fdps, fdps_by_class, kept_counts = [], [], []
    for _ in range(DRAWS):
        predicted, wrong, u = draw_task(rng, n_cal + n_pool, classes, wrong_rate, separation, ties)
        calibration = np.zeros(n_cal + n_pool, dtype=bool)
        calibration[:n_cal] = True
        kept, _, statements = conformal.select_by_class(u, predicted, ~calibration, calibration, wrong, level, scope)
        fdps.append(realized_fdp(kept, wrong))
        kept_counts.append(kept.sum())
        fdps_by_class.append([realized_fdp(kept & (predicted == str(c)), wrong) for c in range(classes)])
    return np.array(fdps), np.array(fdps_by_class), np.array(kept_counts)


def assert_bounded(fdps: np.ndarray, level: float) -> None:
    mean, se = fdps.mean(), fdps.std(ddof=1) / np.sqrt(len(fdps))
    assert mean <= level + 3 * se, f"mean FDP {mean:.4f} > level {level} + 3 SE ({se:.4f})"


@pytest.mark.parametrize("level", [0.1, 0.2])
def test_overall_scope_bounds_the_whole_splits_rate(level):
    fdps, _, kept = run_draws(n_cal=300, n_pool=300, classes=3, level=level, scope="overall", wrong_rate=[0.3, 0.5, 0.7], separation=3.0)
    assert_bounded(fdps, level)
    assert kept.mean() > 5  # the test has power: the selection keeps something


def test_per_class_scope_bounds_each_class():
    level = 0.1
    fdps, by_class, kept = run_draws(n_cal=150, n_pool=200, classes=3, level=level, scope="per_class", wrong_rate=[0.3, 0.5, 0.7], separation=2.5)
    for c in range(3):
        assert_bounded(by_class[:, c], level)
    assert kept.mean() > 5


def test_ties_stay_valid():
    fdps, _, kept = run_draws(n_cal=60, n_pool=100, classes=1, level=0.2, scope="per_class", wrong_rate=0.5, separation=1.0, ties=True)
    assert_bounded(fdps, 0.2)
    assert kept.mean() > 1


def test_at_chance_score_still_bounded_and_keeps_little():
    # a score that does not separate: the guarantee still holds, by keeping (almost) nothing
    fdps, _, kept = run_draws(n_cal=50, n_pool=100, classes=2, level=0.1, scope="per_class", wrong_rate=0.6, separation=0.0)
    assert_bounded(fdps, 0.1)
    assert kept.mean() < 10


def test_all_right_keeps_everything_all_wrong_keeps_nothing():
    u = np.linspace(0, 1, 60)
    predicted = np.full(60, "a", dtype=object)
    calibration = np.arange(60) < 20
    kept, _, _ = conformal.select_by_class(u, predicted, ~calibration, calibration, np.zeros(60, dtype=bool), 0.1, "per_class")
    assert kept[~calibration].all()  # no wrong calibration answer: every p-value is 1/21
    kept, _, statements = conformal.select_by_class(u, predicted, ~calibration, calibration, np.ones(60, dtype=bool), 0.1, "per_class")
    assert not kept.any()
    assert statements[0].kept == 0 and statements[0].calibration_wrong == 20


def test_pvalue_formula_and_bh():
    cal_u = np.array([0.1, 0.2, 0.3, 0.4])
    cal_wrong = np.array([False, True, False, True])
    p = conformal.conformal_pvalues(cal_u, cal_wrong, np.array([0.05, 0.2, 0.35, 0.9]))
    # (1 + #{wrong with u_i <= u_j}) / (n + 1); the tie at 0.2 counts against the pool question
    np.testing.assert_allclose(p, [1 / 5, 2 / 5, 2 / 5, 3 / 5])
    np.testing.assert_array_equal(conformal.benjamini_hochberg(np.array([0.01, 0.04, 0.03, 0.5]), 0.1), [True, True, True, False])
    assert not conformal.benjamini_hochberg(np.array([0.2, 0.3]), 0.1).any()
    assert conformal.min_calibration(0.1) == 9 and conformal.min_calibration(0.2) == 4 and conformal.min_calibration(0.3) == 3


def _config(**kwargs) -> SelectConfig:
    return SelectConfig(strategy="conformal", fdr=kwargs.pop("fdr", 0.1), **kwargs)


def test_select_marks_calibration_and_too_few_labels():
    rng = np.random.default_rng(1)
    n = 200
    ids = np.array([f"q{i:03d}" for i in range(n)], dtype=object)
    answers = np.array(["a"] * 150 + ["b"] * 50, dtype=object)
    answers[7] = None  # an unparsed calibration question: the pre-filter applies to it like to the pool
    calibration = np.zeros(n, dtype=bool)
    calibration[:60] = True  # 60 "a" calibration questions, no "b" one
    wrong = rng.random(n) < 0.3
    u = rng.normal(0, 1, n) + 2 * wrong
    selection = select(ids, answers, u, None, _config(), calibration=calibration, wrong=wrong)
    assert selection.drop_reason[7] == UNPARSED
    assert set(selection.drop_reason[:60]) - {UNPARSED} == {CALIBRATION}
    assert not selection.kept[:60].any()
    assert set(selection.drop_reason[150:]) == {TOO_FEW_LABELS}  # class b has no calibration question
    assert selection.statement["per_class"]["b"]["too_few_labels"]
    assert selection.statement["per_class"]["a"]["calibration"] == 59
    assert set(selection.drop_reason[60:150]) <= {None, NOT_DISCOVERED}
    assert selection.kept[60:150].any()
    quality = quality_statement(selection, conformal.order_scores(u, None), np.array(["x"] * n, dtype=object), answers)
    assert quality["measured"] and quality["guarantee"]["fdr"] == 0.1


def test_calibration_of_one_class_only_keeps_only_that_class():
    n = 120
    ids = np.array([f"q{i:03d}" for i in range(n)], dtype=object)
    answers = np.array(["a"] * 60 + ["b"] * 60, dtype=object)
    calibration = np.zeros(n, dtype=bool)
    calibration[:30] = True
    wrong = np.zeros(n, dtype=bool)
    selection = select(ids, answers, np.arange(n, dtype=float), None, _config(), calibration=calibration, wrong=wrong)
    assert selection.kept[30:60].all() and not selection.kept[60:].any()


def test_learned_score_is_fit_on_its_part_and_used_when_it_ranks_better():
    rng = np.random.default_rng(2)
    n = 600
    ids = np.array([f"q{i:03d}" for i in range(n)], dtype=object)
    answers = np.full(n, "a", dtype=object)
    wrong = rng.random(n) < 0.4
    useless = rng.normal(0, 1, n)  # the recipe's metric: at chance
    informative = rng.normal(0, 1, n) + 2 * wrong
    informative[rng.random(n) < 0.1] = np.nan  # missing values are imputed, with an indicator
    calibration = np.zeros(n, dtype=bool)
    calibration[:300] = True
    calibrate = CalibrateConfig(size=300, learn=True)
    selection = select(
        ids, answers, useless, None, _config(), calibration=calibration, wrong=wrong, calibrate=calibrate,
        features={"useless": useless, "informative": informative},
    )
    learned = selection.statement["learned"]
    assert learned["used"] and learned["fitting_cv_auroc"] > 0.8
    assert set(learned["fit"]["inputs"]) == {"useless", "informative", "informative:missing"}
    assert (selection.drop_reason[:300] == FITTING).sum() == 150 and (selection.drop_reason[:300] == CALIBRATION).sum() == 150
    assert selection.statement["labels"] == {"calibration": 150, "fitting": 150}
    assert selection.kept.sum() > 50
    assert wrong[selection.kept].mean() < 0.15


def test_conformal_refuses_budgets_and_needs_a_level():
    with pytest.raises(ValueError, match="void the guarantee"):
        SelectConfig(strategy="conformal", fdr=0.1, fraction=0.25)
    with pytest.raises(ValueError, match="needs `fdr`"):
        SelectConfig(strategy="conformal")
    with pytest.raises(ValueError, match="applies to strategy: conformal"):
        SelectConfig(strategy="per_class", fraction=0.25, fdr=0.1)
