"""src/stats.py's study statistics on known numbers: binomial SEs, the interval of a
difference of test accuracies, permutation p-values, Kendall's tau-b with ties, the
row bootstrap. (The t quantiles, Welch and plain rank correlations: test_selection.py.)"""
import math

import numpy as np
import pytest

from src import stats


def test_binomial_se():
    assert stats.binomial_se(0.98, 1000) == pytest.approx(math.sqrt(0.98 * 0.02 / 1000))
    assert stats.binomial_se(1.0, 50) == 0.0
    with pytest.raises(ValueError):
        stats.binomial_se(0.5, 0)


def test_difference_interval_on_hand_computed_numbers():
    # Winner seeds 0.80, 0.82: s^2 = 0.0002 > binomial 0.81 * 0.19 / 1000 = 0.0001539.
    # Random arcs 0.70 .75 .72 .78 .75: mean 0.74, s^2 = 0.0038 / 4 = 0.00095 > 0.0001924.
    # se^2 = 0.0002/2 + 0.00095/5 = 0.0001 + 0.00019 = 0.00029;
    # df = 0.00029^2 / (0.0001^2 / 1 + 0.00019^2 / 4) = 4.420499; t(0.975, 4.4205) = 2.675324.
    result = stats.difference_interval([0.80, 0.82], [0.70, 0.75, 0.72, 0.78, 0.75], 1000)
    assert result["difference"] == pytest.approx(0.07)
    assert result["se"] == pytest.approx(math.sqrt(0.00029))
    assert result["df"] == pytest.approx(4.420499, abs=1e-5)
    half = 2.675324 * math.sqrt(0.00029)
    assert result["ci"] == pytest.approx([0.07 - half, 0.07 + half], abs=1e-5)
    assert not result["a_variance"]["floored"] and not result["b_variance"]["floored"]


def test_difference_interval_floors_at_the_binomial_variance():
    # Two identical winner runs (s^2 = 0) on 100 images: 0.9 * 0.1 / 100 = 0.0009, / 2.
    # Random 0.80 .84 .82 .86 .78: s^2 = 0.001 < 0.82 * 0.18 / 100 = 0.001476, / 5.
    # se^2 = 0.00045 + 0.0002952; df = se^4 / (0.00045^2 / 1 + 0.0002952^2 / 4) = 2.475962;
    # t(0.975, 2.475962) = 3.599607.
    result = stats.difference_interval([0.9, 0.9], [0.80, 0.84, 0.82, 0.86, 0.78], 100)
    assert result["a_variance"]["floored"] and result["b_variance"]["floored"]
    se = math.sqrt(0.00045 + 0.0002952)
    assert result["se"] == pytest.approx(se)
    assert result["df"] == pytest.approx(2.475962, abs=1e-5)
    assert result["ci"] == pytest.approx([0.08 - 3.599607 * se, 0.08 + 3.599607 * se], abs=1e-5)
    with pytest.raises(ValueError):
        stats.difference_interval([0.9], [0.8, 0.7], 100)


def test_mean_and_se_of_seeds():
    summary = stats.mean_and_se([0.80, 0.82], 1000)
    assert summary["mean"] == pytest.approx(0.81)
    assert summary["se"] == pytest.approx(math.sqrt(0.0002 / 2))
    # One run: the binomial SE alone.
    assert stats.mean_and_se([0.9], 100)["se"] == pytest.approx(0.03)


def test_exhaustive_permutation_p_value_of_a_perfect_ordering():
    x = np.arange(6)
    # Only the identity of the 720 orderings reaches tau = 1 (and rho = 1).
    for statistic in (stats.kendall_tau, stats.spearman_rho):
        result = stats.permutation_p_value(x, x * 2.0, statistic)
        assert result["method"] == "exhaustive" and result["permutations"] == 720
        assert result["p_value"] == pytest.approx(1 / 720)
    # Two-sided: the reversal reaches |tau| = 1 too.
    assert stats.permutation_p_value(x, x, stats.kendall_tau, alternative="two-sided")[
        "p_value"] == pytest.approx(2 / 720)
    # One-sided against a reversed ordering: every ordering scores at least -1.
    assert stats.permutation_p_value(x, -x, stats.kendall_tau)["p_value"] == 1.0
    assert np.isnan(stats.permutation_p_value(x, np.ones(6), stats.kendall_tau)["p_value"])


def test_monte_carlo_permutation_p_value_is_seeded_and_bounded():
    x = np.arange(10)
    # 10! orderings: 2,000 random ones essentially never hit the identity: p = 1 / 2001.
    result = stats.permutation_p_value(x, x, stats.kendall_tau, num_permutations=2000, seed=3)
    assert result["method"] == "monte carlo" and result["p_value"] == pytest.approx(1 / 2001)
    # A strong but imperfect ordering: 37 concordant, 8 discordant of 45 pairs, tau = 29/45;
    # the exact one-sided p is 0.004574 (Kendall's exact null distribution at n = 10).
    # The same seed gives the same p, within 4 Monte Carlo SEs of the exact value.
    y = np.array([2, 0, 1, 5, 3, 4, 9, 6, 8, 7])
    assert stats.kendall_tau(x, y) == pytest.approx(29 / 45)
    first = stats.permutation_p_value(x, y, stats.kendall_tau, num_permutations=4000, seed=1)
    again = stats.permutation_p_value(x, y, stats.kendall_tau, num_permutations=4000, seed=1)
    assert first["p_value"] == again["p_value"]
    assert abs(first["p_value"] - 0.004574) < 4 * math.sqrt(0.004574 / 4000) + 1 / 4000


def test_kendall_tau_b_with_ties_on_both_sides():
    # x ties (0,1) and (2,3); y ties (1,2), (3,4), (3,5), (4,5). Of 15 pairs: 8 concordant,
    # 1 discordant (0,2); 13 untied in x, 11 in y: tau-b = 7 / sqrt(13 * 11).
    x, y = [1, 1, 2, 2, 3, 4], [2, 1, 1, 3, 3, 3]
    assert stats.kendall_tau(x, y) == pytest.approx(7 / math.sqrt(143))
    assert stats.kendall_tau(y, x) == pytest.approx(7 / math.sqrt(143))
    # Ties on both sides and perfectly concordant otherwise: tau-b reaches 1 (tau-a would not).
    assert stats.kendall_tau([1, 1, 2, 3], [5, 5, 6, 7]) == pytest.approx(1.0)
    assert stats.average_ranks([3, 1, 4, 1, 5]).tolist() == [3.0, 1.5, 4.0, 1.5, 5.0]


def test_mean_pairwise_kendall_and_the_row_bootstrap():
    table = np.column_stack([np.arange(8), np.arange(8) * 2, np.arange(8) ** 2])
    assert stats.mean_pairwise_kendall(table) == pytest.approx(1.0)
    # Seed 2 reverses seed 1 on one pair of 8 arcs: tau = (27 - 1) / 28.
    noisy = np.column_stack([np.arange(8), [0, 1, 3, 2, 4, 5, 6, 7]])
    assert stats.mean_pairwise_kendall(noisy) == pytest.approx(26 / 28)
    low, high = stats.bootstrap_rows_interval(stats.mean_pairwise_kendall, table, seed=0)
    assert low == pytest.approx(1.0) and high == pytest.approx(1.0)
    low, high = stats.bootstrap_rows_interval(stats.mean_pairwise_kendall, noisy, seed=0)
    assert low < 26 / 28 <= high <= 1.0
