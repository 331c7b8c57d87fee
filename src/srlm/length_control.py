"""Win rates from per-instruction preferences, and the length-controlled win rate (AlpacaEval 2.0).

A preference is P(the model's output beats the reference output) for one instruction, in [0, 1]
(NaN: the judge gave none; such instructions are left out and counted). From them:

- ``win_rate``: the mean preference (AlpacaEval's headline number);
- ``discrete_win_rate``: each preference snapped to a win (> 0.5), a loss (< 0.5) or a tie (= 0.5,
  counted as half), then averaged;
- ``lc_win_rate``: judges prefer longer answers, so a model can win by writing more. AlpacaEval
  2.0 (Dubois et al. 2024, "Length-Controlled AlpacaEval") fits a logistic model of the
  preference on the model's identity and the tanh of the standardised length difference,
  ``logit p_i = theta + phi * tanh(delta_i)`` with ``delta_i = (len(ref_i) - len(model_i)) /
  std(len(ref) - len(model))`` in characters, and reports the prediction at ``delta = 0``:
  ``sigmoid(theta)``. This is alpaca_eval's ``length_controlled_minimal`` form (its default adds a
  per-instruction difficulty estimated from the leaderboard's models and a regularisation toward
  two "gamed" baselines, neither of which exists for a single model of our own). The fit is a
  maximum-likelihood logistic regression on soft labels (each preference is the label's expected
  value), solved with scipy's L-BFGS;
- 95% intervals of all three by a seeded bootstrap over instructions (the LC fit redone per draw).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np


def standardized_length_difference(model_lengths: Sequence[float], reference_lengths: Sequence[float]) -> np.ndarray:
    """``(len(ref) - len(model)) / std`` (sample std, as pandas); all zeros when the lengths never differ."""
    delta = np.asarray(reference_lengths, dtype=float) - np.asarray(model_lengths, dtype=float)
    std = delta.std(ddof=1) if len(delta) > 1 else 0.0
    return delta / std if std > 0 else np.zeros_like(delta)


def fit_length_model(preferences: np.ndarray, delta: np.ndarray) -> tuple[float, float]:
    """(theta, phi) of ``logit p = theta + phi * tanh(delta)`` by maximum likelihood on soft labels."""
    from scipy.optimize import minimize
    from scipy.special import expit, log_expit

    x = np.tanh(delta)
    p = np.clip(preferences, 0.0, 1.0)

    def loss(w: np.ndarray) -> tuple[float, np.ndarray]:
        z = w[0] + w[1] * x
        value = -np.sum(p * log_expit(z) + (1 - p) * log_expit(-z))
        residual = expit(z) - p
        return float(value), np.array([residual.sum(), (residual * x).sum()])

    # A tiny ridge keeps the optimum finite when every preference is 0 or 1 (separable data).
    def ridged(w: np.ndarray) -> tuple[float, np.ndarray]:
        value, grad = loss(w)
        return value + 1e-6 * float(w @ w), grad + 2e-6 * w

    result = minimize(ridged, np.zeros(2), jac=True, method="L-BFGS-B")
    return float(result.x[0]), float(result.x[1])


def lc_win_rate(preferences: np.ndarray, delta: np.ndarray) -> float:
    """The length-controlled win rate: the fitted preference at zero length difference."""
    theta, _ = fit_length_model(preferences, delta)
    return 1.0 / (1.0 + math.exp(-theta))


def discrete(preferences: np.ndarray) -> np.ndarray:
    return np.where(preferences > 0.5, 1.0, np.where(preferences < 0.5, 0.0, 0.5))


def preference_metrics(preferences: Sequence[float], model_lengths: Sequence[float], reference_lengths: Sequence[float],
                       *, bootstrap: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Win rate, discrete win rate and LC win rate (fractions in [0, 1]) with bootstrap 95% intervals, the
    counts, the fitted length coefficient and both sides' mean lengths."""
    prefs = np.asarray(preferences, dtype=float)
    lengths = np.asarray(model_lengths, dtype=float)
    references = np.asarray(reference_lengths, dtype=float)
    valid = ~np.isnan(prefs)
    out: dict[str, Any] = {"instructions": int(len(prefs)), "judged": int(valid.sum()),
                           "judge_failures": int((~valid).sum()),
                           "mean_length": float(lengths.mean()) if len(lengths) else 0.0,
                           "mean_length_reference": float(references.mean()) if len(references) else 0.0}
    prefs, lengths, references = prefs[valid], lengths[valid], references[valid]
    if len(prefs) == 0:
        return {**out, **{k: None for k in ("win_rate", "discrete_win_rate", "lc_win_rate", "length_coefficient")}}
    delta = standardized_length_difference(lengths, references)
    theta, phi = fit_length_model(prefs, delta)
    snapped = discrete(prefs)
    out.update(win_rate=float(prefs.mean()), discrete_win_rate=float(snapped.mean()),
               lc_win_rate=1.0 / (1.0 + math.exp(-theta)), length_coefficient=phi,
               wins=int((snapped == 1).sum()), losses=int((snapped == 0).sum()), ties=int((snapped == 0.5).sum()))
    if bootstrap and len(prefs) > 1:
        rng = np.random.default_rng(seed)
        draws = np.empty((bootstrap, 3))
        for b in range(bootstrap):
            idx = rng.integers(0, len(prefs), len(prefs))
            draw_delta = standardized_length_difference(lengths[idx], references[idx])
            draws[b] = (prefs[idx].mean(), snapped[idx].mean(), lc_win_rate(prefs[idx], draw_delta))
        for j, name in enumerate(("win_rate", "discrete_win_rate", "lc_win_rate")):
            low, high = np.percentile(draws[:, j], [2.5, 97.5])
            out[f"{name}_ci"] = [float(low), float(high)]
    return out
