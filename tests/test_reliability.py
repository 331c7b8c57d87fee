"""Judge reliability measures (srlm.reliability) on worked examples and planted data."""

import math

import numpy as np
import pytest

from srlm.reliability import (
    all_tie_share,
    expected_calibration_error,
    krippendorff_alpha,
    position_consistency,
    rank_agreement,
    ranked_calibration,
    round_judge_stats,
    spearman,
)

NAN = math.nan
# Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", the example with missing values:
# 4 observers, 12 units; the paper gives alpha 0.743 nominal, 0.815 ordinal, 0.849 interval.
OBSERVERS = [[1, 2, 3, 3, 2, 1, 4, 1, 2, NAN, NAN, NAN],
             [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, NAN, 3],
             [NAN, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, NAN],
             [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, NAN]]
UNITS = list(zip(*OBSERVERS))


@pytest.mark.parametrize("level, expected", [("nominal", 0.743), ("ordinal", 0.815), ("interval", 0.849)])
def test_alpha_matches_krippendorffs_worked_example(level, expected):
    assert krippendorff_alpha(UNITS, level) == pytest.approx(expected, abs=5e-4)


def test_alpha_is_one_for_perfect_agreement_and_near_zero_for_chance():
    assert krippendorff_alpha([[3, 3, 3], [1, 1, 1], [5, 5, NAN]]) == 1.0
    rng = np.random.default_rng(0)
    chance = rng.integers(1, 6, size=(2000, 3)).astype(float)
    assert abs(krippendorff_alpha(chance)) < 0.03
    assert krippendorff_alpha([[4, 4], [4, 4]]) is None  # one value only: agreement is undefined
    assert krippendorff_alpha([[4, NAN], [3, NAN]]) is None  # nothing pairable


def test_position_ties_calibration_and_rank_agreement():
    assert position_consistency([("model", "model"), ("model", "other"), (None, "model"), ("other", "other")]) \
        == pytest.approx(2 / 3)
    assert position_consistency([(None, None)]) is None
    assert all_tie_share([[3.0, 3.0, 3.0], [2.0, 4.0], [5.0, None], [1.0, 1.0]]) == pytest.approx(2 / 3)
    rng = np.random.default_rng(1)
    p = rng.random(20000)
    assert expected_calibration_error(p, rng.random(20000) < p) < 0.02  # calibrated
    assert expected_calibration_error(np.full(1000, 0.9), np.zeros(1000)) == pytest.approx(0.9)  # overconfident
    assert rank_agreement([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert rank_agreement([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert rank_agreement([1, None, 3], [2, 5, None]) is None


def test_a_rounds_judge_stats_from_its_judgements_file():
    from scipy.stats import spearmanr

    records = [
        {"replies": [{"text": "a" * 10, "scores": [2, 2, 3], "mean": 7 / 3}, {"text": "a" * 40, "scores": [4, 4, 4], "mean": 4.0}]},
        {"replies": [{"text": "a" * 20, "scores": [3, None, 3], "mean": 3.0}, {"text": "a" * 30, "scores": [3, 3, 3], "mean": 3.0}]},
        {"replies": [{"text": "a" * 5, "scores": [None, None, None], "mean": None}, {"text": "a" * 50, "scores": [5, 4, 5], "mean": 14 / 3}]},
    ]
    stats = round_judge_stats(records)
    assert stats["all_tie_share"] == 0.5  # the second prompt; the third has one scored reply
    means, lengths = [7 / 3, 4.0, 3.0, 3.0, 14 / 3], [10, 40, 20, 30, 50]
    assert stats["score_length_spearman"] == pytest.approx(spearmanr(means, lengths).statistic)
    assert stats["score_length_spearman"] > 0.8  # longer replies scored higher: the length bias to watch
    assert 0.0 < stats["judge_alpha_ordinal"] <= 1.0
    assert sum(stats[f"score_hist_{k}"] for k in range(6)) == pytest.approx(1.0) and stats["score_hist_3"] == pytest.approx(6 / 14)
    assert spearman([1, 2, 2, 3], [1, 3, 3, 2]) == pytest.approx(spearmanr([1, 2, 2, 3], [1, 3, 3, 2]).statistic)


def test_the_rubric_judge_against_human_ranks():
    """Reply 0 (rank 0, best) vs reply 1 (rank 1): samples [4, 4] vs [2, 4] -> 2 of 4 sample pairs higher, 2 ties
    -> p = (2 + 1) / 4 = 0.75, outcome 1. Reply 0 vs reply 2 (rank 2): [4, 4] vs [5, None] -> p 0, outcome 1.
    Reply 1 vs reply 2: [2, 4] vs [5] -> p 0, outcome 1. A reply with no valid sample makes no pair."""
    rows = [{"replies": [{"scores": [4, 4], "human_rank": 0}, {"scores": [2, 4], "human_rank": 1},
                         {"scores": [5, None], "human_rank": 2}, {"scores": [None], "human_rank": 3}]}]
    stats = ranked_calibration(rows)
    assert stats["judge_calibration_pairs"] == 3
    assert stats["judge_pair_mae"] == pytest.approx((0.25 + 1 + 1) / 3)
    # bins: 0.75 -> bin 7 (1 pair, error 0.25); 0.0 -> bin 0 (2 pairs, error 1)
    assert stats["judge_ece"] == pytest.approx(0.25 / 3 + 2 / 3)
    assert stats["judge_alpha_ordinal"] is not None
