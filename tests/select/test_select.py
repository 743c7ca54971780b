import numpy as np
import pytest

from curation.recipe.sections import SelectConfig
from curation.select import GENERATION_FAILED, NOT_SAMPLED, OVER_BUDGET, TRUNCATED, UNPARSED, select


def run(answers, uncertainty, tiebreak=None, **config):
    n = len(answers)
    return select(
        np.array([f"q{i}" for i in range(n)], dtype=object),
        np.array(answers, dtype=object),
        np.array(uncertainty, dtype=float),
        None if tiebreak is None else np.array(tiebreak, dtype=float),
        SelectConfig(**config),
    )


def test_per_class_fraction_keeps_least_uncertain_in_each_class():
    answers = ["a", "a", "a", "a", "b", "b"]
    s = run(answers, [0.4, 0.1, 0.3, 0.2, 5.0, 9.0], strategy="per_class", fraction=0.5)
    # class a: 2 of 4 (q1, q3); class b (much higher scale): ceil(0.5*2)=1 (q4) - a global cut would keep no b
    assert s.kept.tolist() == [False, True, False, True, True, False]
    assert s.budget == {"a": 2, "b": 1}
    assert s.drop_reason[0] == OVER_BUDGET


def test_global_threshold_ignores_classes():
    s = run(["a", "a", "b", "b"], [0.1, 0.2, 5.0, 9.0], strategy="global", fraction=0.5)
    assert s.kept.tolist() == [True, True, False, False]


def test_per_class_counts_and_missing_class_budget():
    s = run(["a", "a", "b", "c"], [1, 2, 3, 4], strategy="per_class", per_class={"a": 1, "b": 5})
    assert s.kept.tolist() == [True, False, True, False]
    assert s.budget == {"a": 1, "b": 1, "c": 0}


def test_ties_broken_by_confidence_then_id():
    # CoCoA with answer similarity is 0 whenever all samples agree: the tie-break metric decides.
    s = run(["a"] * 4, [0, 0, 0, 0.5], tiebreak=[3.0, 1.0, 2.0, 0.0], strategy="per_class", count=2)
    assert s.kept.tolist() == [False, True, True, False]


def test_random_is_seeded_and_budgeted():
    a = run(["a"] * 10, list(range(10)), strategy="random", count=3, seed=1)
    b = run(["a"] * 10, list(range(10)), strategy="random", count=3, seed=1)
    c = run(["a"] * 10, list(range(10)), strategy="random", count=3, seed=2)
    assert a.kept.sum() == 3 and (a.kept == b.kept).all() and not (a.kept == c.kept).all()
    assert set(a.drop_reason[~a.kept]) == {NOT_SAMPLED}


def test_every_dropped_row_has_a_reason():
    ids = np.array(["q0", "q1", "q2", "q3"], dtype=object)
    s = select(
        ids,
        np.array(["a", None, "a", "a"], dtype=object),
        np.array([0.1, 0.2, np.nan, 0.3]),
        None,
        SelectConfig(strategy="per_class", fraction=1.0),
        truncated=np.array([False, False, False, True]),
        failed=np.array([True, False, False, False]),
    )
    assert s.kept.tolist() == [False, False, False, False]
    assert s.drop_reason.tolist() == [GENERATION_FAILED, UNPARSED, "uncertainty_undefined", TRUNCATED]


@pytest.mark.parametrize("fraction, n, expected", [(0.1, 10, 1), (0.1, 11, 2), (0.1, 1, 1), (1.0, 7, 7)])
def test_fraction_rounds_up(fraction, n, expected):
    s = run(["a"] * n, list(range(n)), strategy="per_class", fraction=fraction)
    assert s.kept.sum() == expected
