"""How far a judge can be trusted: agreement, position bias, ties, calibration and drift (pure functions).

- ``krippendorff_alpha``: agreement between repeated judgements of the same items (the 3 rubric samples
  of a reply), ordinal by default (Krippendorff 2011, "Computing Krippendorff's Alpha-Reliability": the
  coincidence matrix, observed over expected disagreement). Written here because the PyPI package is
  GPL-3.0; checked against the worked example of that paper.
- ``position_consistency``: the share of pairs whose verdicts in both orders name the same output.
- ``all_tie_share``: prompts whose candidates all get the same mean score (they make no pair).
- ``expected_calibration_error``: predicted probabilities against outcomes, in equal-width bins.
- ``rank_agreement``: Kendall's tau between two judges' scores of the same items (M(t) vs M(t-1), or the
  self-judge vs an external judge).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np


def krippendorff_alpha(data: Sequence[Sequence[float]], level: Literal["nominal", "ordinal", "interval"] = "ordinal"
                       ) -> float | None:
    """Alpha of ``data`` (one row per unit: its values from each coder or sample, NaN where missing); None when
    fewer than two pairable values exist or every value is the same (no disagreement is possible)."""
    units = [[float(v) for v in row if v is not None and not math.isnan(float(v))] for row in data]
    units = [u for u in units if len(u) >= 2]
    values = sorted({v for u in units for v in u})
    if len(values) < 2:
        return None
    index = {v: i for i, v in enumerate(values)}
    coincidence = np.zeros((len(values), len(values)))
    for unit in units:
        counts = np.zeros(len(values))
        for v in unit:
            counts[index[v]] += 1
        coincidence += (np.outer(counts, counts) - np.diag(counts)) / (len(unit) - 1)
    totals = coincidence.sum(axis=1)
    n = totals.sum()
    delta = _distances(np.array(values), totals, level)
    observed = (coincidence * delta).sum() / n
    expected = (np.outer(totals, totals) * delta).sum() / (n * (n - 1))
    return float(1.0 - observed / expected)


def _distances(values: np.ndarray, totals: np.ndarray, level: str) -> np.ndarray:
    """The squared difference function delta^2(c, k) of each level of measurement."""
    if level == "nominal":
        return 1.0 - np.eye(len(values))
    if level == "interval":
        return np.subtract.outer(values, values) ** 2
    if level == "ordinal":
        cumulative = np.concatenate([[0.0], np.cumsum(totals)])
        index = np.arange(len(values))
        low, high = np.minimum.outer(index, index), np.maximum.outer(index, index)
        between = cumulative[high + 1] - cumulative[low]  # sum of n_g for g from c to k
        return (between - (totals[low] + totals[high]) / 2) ** 2
    raise ValueError(f"unknown level of measurement {level!r}")


def position_consistency(verdict_pairs: Sequence[tuple[str | None, str | None]]) -> float | None:
    """Pairs judged in both orders, each verdict naming the output it prefers ("model"/"other", not the slot):
    the share of pairs with both verdicts valid that name the same output."""
    both = [(a, b) for a, b in verdict_pairs if a is not None and b is not None]
    return sum(a == b for a, b in both) / len(both) if both else None


def all_tie_share(candidate_means: Sequence[Sequence[float | None]]) -> float | None:
    """Prompts whose scored candidates all have the same mean (at least two scored): no pair can be built."""
    scored = [[m for m in means if m is not None] for means in candidate_means]
    scored = [m for m in scored if len(m) >= 2]
    return sum(len(set(m)) == 1 for m in scored) / len(scored) if scored else None


def expected_calibration_error(probabilities: Sequence[float], outcomes: Sequence[float], bins: int = 10) -> float | None:
    """Sum over equal-width probability bins of (share of items in the bin) x |mean outcome - mean probability|."""
    p, y = np.asarray(probabilities, dtype=float), np.asarray(outcomes, dtype=float)
    if len(p) == 0:
        return None
    which = np.minimum((p * bins).astype(int), bins - 1)
    return float(sum(abs(y[which == b].mean() - p[which == b].mean()) * (which == b).mean()
                     for b in range(bins) if (which == b).any()))


def rank_agreement(scores_a: Sequence[float | None], scores_b: Sequence[float | None]) -> float | None:
    """Kendall's tau-b between two judges' scores of the same items (items either judge left unscored dropped)."""
    from scipy.stats import kendalltau

    pairs = [(a, b) for a, b in zip(scores_a, scores_b) if a is not None and b is not None]
    if len(pairs) < 2:
        return None
    tau = kendalltau([a for a, _ in pairs], [b for _, b in pairs]).statistic
    return None if math.isnan(tau) else float(tau)


def round_judge_stats(records: Sequence[dict]) -> dict[str, float | None]:
    """A round's self-judging as the judgements file holds it (per prompt its replies, each with its sampled
    ``scores`` and their ``mean``): agreement between the samples (ordinal alpha), the all-tie share, the
    Spearman correlation between a reply's mean score and its length in characters, and the histogram of
    valid sample scores rounded to whole points (``score_hist_<k>``, shares)."""
    replies = [r for record in records for r in record["replies"]]
    samples = [[s if s is not None else math.nan for s in r["scores"]] for r in replies]
    scored = [(r["mean"], len(r["text"])) for r in replies if r["mean"] is not None]
    correlation = None
    if len(scored) >= 3 and len({m for m, _ in scored}) > 1 and len({n for _, n in scored}) > 1:
        correlation = spearman([m for m, _ in scored], [n for _, n in scored])
    valid = [round(s) for row in samples for s in row if not math.isnan(s)]
    stats: dict[str, float | None] = {
        "judge_alpha_ordinal": krippendorff_alpha(samples),
        "all_tie_share": all_tie_share([[r["mean"] for r in record["replies"]] for record in records]),
        "score_length_spearman": correlation,
    }
    stats.update({f"score_hist_{k}": (valid.count(k) / len(valid) if valid else 0.0) for k in range(6)})
    return stats


def _ranks(values: Sequence[float]) -> np.ndarray:
    """Ranks 1..n, ties given their average rank."""
    values = np.asarray(values, dtype=float)
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(1, len(values) + 1)
    for v in np.unique(values):
        ranks[values == v] = ranks[values == v].mean()
    return ranks


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rank correlation (numpy only: the pairs stage runs in the light image, without scipy)."""
    return float(np.corrcoef(_ranks(a), _ranks(b))[0, 1])


def ranked_calibration(rows: Sequence[dict]) -> dict[str, float | None]:
    """The rubric judge against human ranks (the EFT eval rows: per prompt its replies, each with the judge's
    sampled ``scores`` and its ``human_rank``, 0 = best). For every two replies of a prompt with different ranks
    the judge's probability that the first is better is the share of their sample pairs it scores higher (ties
    half); the outcome is whether people ranked it better. Returns the expected calibration error of those
    probabilities (10 bins), their mean absolute error, and the ordinal alpha between the samples."""
    probabilities, outcomes, samples = [], [], []
    for row in rows:
        replies = row["replies"]
        samples += [[s if s is not None else math.nan for s in r["scores"]] for r in replies]
        for i in range(len(replies)):
            for j in range(i + 1, len(replies)):
                a, b = replies[i], replies[j]
                if a["human_rank"] == b["human_rank"]:
                    continue
                sa, sb = [s for s in a["scores"] if s is not None], [s for s in b["scores"] if s is not None]
                if not sa or not sb:
                    continue
                wins = sum((x > y) + 0.5 * (x == y) for x in sa for y in sb)
                probabilities.append(wins / (len(sa) * len(sb)))
                outcomes.append(float(a["human_rank"] < b["human_rank"]))
    error = float(np.mean(np.abs(np.subtract(probabilities, outcomes)))) if probabilities else None
    return {"judge_ece": expected_calibration_error(probabilities, outcomes), "judge_pair_mae": error,
            "judge_calibration_pairs": len(probabilities), "judge_alpha_ordinal": krippendorff_alpha(samples)}
