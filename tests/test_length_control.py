"""The win rates and the length-controlled fit (srlm.length_control) on synthetic data with planted effects."""

import math

import numpy as np
import pytest

from srlm.length_control import fit_length_model, preference_metrics, standardized_length_difference


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def planted(theta, phi, n=805, seed=0, model_mean=1900.0, soft=False):
    """Reference lengths ~ 1,500 +- 400 characters, the model's ~ ``model_mean`` +- 600; preferences from
    ``logit p = theta + phi * tanh(delta)`` (drawn as wins and losses unless ``soft``)."""
    rng = np.random.default_rng(seed)
    reference = rng.normal(1500, 400, n).clip(50)
    model = rng.normal(model_mean, 600, n).clip(50)
    p = sigmoid(theta + phi * np.tanh(standardized_length_difference(model, reference)))
    return (p if soft else (rng.random(n) < p).astype(float)), model, reference


def test_the_fit_recovers_exact_soft_preferences():
    prefs, model, reference = planted(0.4, -1.5, soft=True)
    theta, phi = fit_length_model(prefs, standardized_length_difference(model, reference))
    assert theta == pytest.approx(0.4, abs=1e-3) and phi == pytest.approx(-1.5, abs=1e-3)


@pytest.mark.parametrize("seed", range(5))
def test_the_fit_recovers_a_planted_effect_from_wins_and_losses(seed):
    """805 Bernoulli draws: theta's standard error is about 0.08, so 0.25 is three of them; the LC win rate is
    within 0.06 of sigmoid(theta) = 0.599, while the raw win rate is inflated by the model's longer answers."""
    prefs, model, reference = planted(0.4, -1.5, seed=seed)
    metrics = preference_metrics(prefs, model, reference, bootstrap=200, seed=seed)
    assert abs(metrics["lc_win_rate"] - sigmoid(0.4)) < 0.06
    assert metrics["length_coefficient"] == pytest.approx(-1.5, abs=0.4)
    assert metrics["win_rate"] > metrics["lc_win_rate"] + 0.05  # the length bias the LC rate removes
    low, high = metrics["lc_win_rate_ci"]
    assert low < metrics["lc_win_rate"] < high and 0.03 < high - low < 0.15


def test_the_lc_interval_covers_the_planted_rate_about_95_percent_of_the_time():
    """A 95% interval misses the truth 1 time in 20: over 40 seeded data sets it covers it at least 34 times
    (the binomial 1st percentile for 40 draws at 0.95 is 35)."""
    covered = 0
    for seed in range(40):
        prefs, model, reference = planted(0.4, -1.5, seed=100 + seed)
        low, high = preference_metrics(prefs, model, reference, bootstrap=200, seed=seed)["lc_win_rate_ci"]
        covered += low < sigmoid(0.4) < high
    assert covered >= 34, covered


def test_a_judge_that_only_rewards_length_gives_an_even_lc_win_rate():
    prefs, model, reference = planted(0.0, -2.0, seed=11, model_mean=2600)
    metrics = preference_metrics(prefs, model, reference, bootstrap=0)
    assert metrics["win_rate"] > 0.7 and abs(metrics["lc_win_rate"] - 0.5) < 0.06


def test_counts_ties_and_failures():
    prefs = [1.0, 0.9, 0.5, 0.2, float("nan"), 0.0]
    metrics = preference_metrics(prefs, [10, 20, 30, 40, 50, 60], [30, 30, 30, 30, 30, 30], bootstrap=50)
    assert (metrics["instructions"], metrics["judged"], metrics["judge_failures"]) == (6, 5, 1)
    assert (metrics["wins"], metrics["ties"], metrics["losses"]) == (2, 1, 2)
    assert metrics["win_rate"] == pytest.approx(2.6 / 5)
    assert metrics["discrete_win_rate"] == pytest.approx(2.5 / 5)
    assert metrics["mean_length"] == 35 and metrics["mean_length_reference"] == 30
    for name in ("win_rate", "discrete_win_rate", "lc_win_rate"):
        low, high = metrics[f"{name}_ci"]
        assert 0.0 <= low <= high <= 1.0


def test_no_judged_instruction_gives_no_rates_not_a_crash():
    metrics = preference_metrics([math.nan, math.nan], [1, 2], [3, 4])
    assert metrics["judged"] == 0 and metrics["win_rate"] is None and metrics["lc_win_rate"] is None


def test_all_wins_stay_finite():
    metrics = preference_metrics([1.0] * 20, list(range(20)), [10] * 20, bootstrap=20)
    assert metrics["win_rate"] == 1.0 and 0.99 < metrics["lc_win_rate"] <= 1.0
