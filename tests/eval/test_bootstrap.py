"""Bootstrap intervals and paired comparisons for `curate eval` (curation.eval.bootstrap)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest

from curation.eval import bootstrap, ranking
from curation.eval.bootstrap import Resamples


def noisy_metric(correct, signal, rng):
    """Uncertainty that tracks wrongness with strength `signal` (0: pure noise)."""
    return signal * (~correct) + rng.normal(size=len(correct))


def test_resampled_statistics_equal_the_point_estimates_on_the_identity_resample():
    rng = np.random.default_rng(1)
    correct = rng.random(80) < 0.6
    u = np.round(noisy_metric(correct, 1.0, rng), 1)  # rounded: many ties, which both sides must average
    ranks = ranking.ranking(u)
    identity = Resamples(np.arange(80)[None, :])
    assert bootstrap.prr_draws(ranks, correct, identity)[0] == pytest.approx(ranking.prr(u, correct)["prr"])
    assert bootstrap.auroc_draws(ranks, ~correct, identity)[0] == pytest.approx(ranking.auroc(u, ~correct))
    points = np.array([1, 10, 40, 80])
    assert bootstrap.selective_accuracy_draws(ranks, correct, identity, points)[0] == pytest.approx(ranking.selective_accuracy(u, correct)[points - 1])


def test_a_perfect_metric_has_an_interval_excluding_chance_and_noise_one_including_it():
    rng = np.random.default_rng(2)
    correct = rng.random(200) < 0.5
    resamples = Resamples.draw(200, 500, seed=0)
    perfect = ranking.ranking((~correct).astype(float))
    low, high = bootstrap.interval(bootstrap.auroc_draws(perfect, ~correct, resamples))
    assert low > 0.9 and high == pytest.approx(1.0)
    assert bootstrap.interval(bootstrap.prr_draws(perfect, correct, resamples))[0] > 0.9
    noise = ranking.ranking(rng.normal(size=200))
    low, high = bootstrap.interval(bootstrap.auroc_draws(noise, ~correct, resamples))
    assert low < 0.5 < high
    low, high = bootstrap.interval(bootstrap.prr_draws(noise, correct, resamples))
    assert low < 0 < high


def test_the_interval_narrows_with_more_questions():
    rng = np.random.default_rng(3)
    widths = []
    for n in (50, 800):
        correct = rng.random(n) < 0.5
        ranks = ranking.ranking(noisy_metric(correct, 1.0, rng))
        low, high = bootstrap.interval(bootstrap.prr_draws(ranks, correct, Resamples.draw(n, 400)))
        widths.append(high - low)
    assert widths[1] < widths[0] / 2.5  # ~ 1/sqrt(16) = 1/4


def test_degenerate_resamples_are_left_out_not_counted_as_zero():
    correct = np.array([True] * 9 + [False])
    ranks = ranking.ranking(np.arange(10.0))
    draws = bootstrap.auroc_draws(ranks, ~correct, Resamples.draw(10, 300))
    assert np.isnan(draws).any() and not np.isnan(draws).all()  # (9/10)^10 of resamples have no wrong answer
    assert bootstrap.interval(np.full(5, np.nan)) is None


def test_tie_averaging_makes_a_constant_metric_exactly_random():
    rng = np.random.default_rng(4)
    correct = rng.random(60) < 0.4
    resamples = Resamples.draw(60, 200)
    constant = np.zeros(60, dtype=np.int64)
    prr = bootstrap.prr_draws(constant, correct, resamples)
    assert np.nanmax(np.abs(prr)) < 1e-12
    assert np.nanmax(np.abs(bootstrap.auroc_draws(constant, ~correct, resamples) - 0.5)) < 1e-12


def test_same_seed_same_interval_other_seed_other_interval():
    rng = np.random.default_rng(5)
    correct = rng.random(100) < 0.5
    ranks = ranking.ranking(noisy_metric(correct, 0.8, rng))
    a = bootstrap.interval(bootstrap.prr_draws(ranks, correct, Resamples.draw(100, 300, seed=7)))
    b = bootstrap.interval(bootstrap.prr_draws(ranks, correct, Resamples.draw(100, 300, seed=7)))
    c = bootstrap.interval(bootstrap.prr_draws(ranks, correct, Resamples.draw(100, 300, seed=8)))
    assert a == b and a != c


def _report_with(draws, prr_points, selection="good"):
    metrics = {name: {"auroc": 0.5, "prr": prr_points[name]} for name in draws}
    return {"metrics": metrics, "selection_metric": selection}


def test_paired_comparison_identical_metrics_contain_zero_a_better_one_excludes_it():
    rng = np.random.default_rng(6)
    n = 300
    correct = rng.random(n) < 0.5
    resamples = Resamples.draw(n, 500)
    good = ranking.ranking(noisy_metric(correct, 2.0, rng))
    weak = ranking.ranking(noisy_metric(correct, 0.3, rng))
    draws = {}
    for name, ranks in (("good", good), ("same", good), ("weak", weak)):
        draws[name] = {"prr": bootstrap.prr_draws(ranks, correct, resamples), "auroc": bootstrap.auroc_draws(ranks, ~correct, resamples)}
    points = {name: float(ranking.prr(r.astype(float), correct)["prr"]) for name, r in (("good", good), ("same", good), ("weak", weak))}
    rows = {(r["a"], r["b"]): r for r in bootstrap.paired_comparisons(draws, _report_with(draws, points), resamples.draws)}
    same = rows[("good", "same")]
    assert same["delta_prr"] == 0 and same["delta_prr_ci"] == [0.0, 0.0] and same["verdict"] == "not distinguishable"
    better = rows[("good", "weak")]
    assert better["delta_prr_ci"][0] > 0 and better["verdict"] == "good better"
    assert rows[("good", "random")]["delta_prr_ci"] == pytest.approx(bootstrap.interval(draws["good"]["prr"]))
    # paired is tighter than the two unpaired intervals side by side would suggest
    unpaired = np.diff(bootstrap.interval(draws["good"]["prr"]))[0] + np.diff(bootstrap.interval(draws["weak"]["prr"]))[0]
    assert np.diff(better["delta_prr_ci"])[0] < unpaired

