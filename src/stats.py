"""The few statistics a search reports: Welch's interval for a difference of means,
rank correlations and their bootstrap intervals. NumPy only (no SciPy for five
functions); tests check them against textbook values."""
from __future__ import annotations

import math
from typing import Callable, Dict, Sequence, Tuple

import numpy as np


def _continued_fraction_beta(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, fraction_c, fraction_d = 1e-300, 1.0, 1.0 - (a + b) * x / (a + 1.0)
    fraction_d = 1.0 / (fraction_d if abs(fraction_d) > tiny else tiny)
    result = fraction_d
    for m in range(1, 300):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            fraction_d = 1.0 + numerator * fraction_d
            fraction_d = 1.0 / (fraction_d if abs(fraction_d) > tiny else tiny)
            fraction_c = 1.0 + numerator / fraction_c
            fraction_c = fraction_c if abs(fraction_c) > tiny else tiny
            result *= fraction_d * fraction_c
        if abs(fraction_d * fraction_c - 1.0) < 1e-14:
            break
    return result


def regularized_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b), the regularized incomplete beta function."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                 + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _continued_fraction_beta(a, b, x) / a
    return 1.0 - math.exp(log_front) * _continued_fraction_beta(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with `df` degrees of freedom."""
    tail = 0.5 * regularized_beta(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The t with t_cdf(t, df) = p, by bisection (p in (0, 1))."""
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    low, high = 0.0, 1.0
    while t_cdf(high, df) < p:
        high *= 2.0
    for _ in range(200):
        middle = 0.5 * (low + high)
        low, high = (middle, high) if t_cdf(middle, df) < p else (low, middle)
    return 0.5 * (low + high)


def welch_difference(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> Dict:
    """mean(a) - mean(b), its standard error, Welch-Satterthwaite degrees of freedom and
    the two-sided `level` confidence interval [low, high]. Needs 2 or more of each."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(a) < 2 or len(b) < 2:
        raise ValueError("Welch's interval needs at least 2 values in each group")
    var_a, var_b = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    difference, se = float(a.mean() - b.mean()), math.sqrt(var_a + var_b)
    if se == 0.0:
        return {"difference": difference, "se": 0.0, "df": math.inf,
                "ci": [difference, difference]}
    df = (var_a + var_b) ** 2 / (var_a ** 2 / (len(a) - 1) + var_b ** 2 / (len(b) - 1))
    half_width = t_quantile(0.5 + level / 2.0, df) * se
    return {"difference": difference, "se": se, "df": float(df),
            "ci": [difference - half_width, difference + half_width]}


def average_ranks(values: Sequence[float]) -> np.ndarray:
    """Ranks 1..n, ties sharing the mean of their ranks."""
    values = np.asarray(values, np.float64)
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(1, len(values) + 1)
    for value in np.unique(values):
        tied = values == value
        ranks[tied] = ranks[tied].mean()
    return ranks


def spearman_rho(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson correlation of the average ranks; nan where either side is constant."""
    rx, ry = average_ranks(x), average_ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b (ties counted as neither concordant nor discordant, and
    corrected for); nan where either side is constant."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    upper = np.triu_indices(len(x), k=1)  # every pair i < j once
    sx = np.sign(x[:, None] - x[None, :])[upper]
    sy = np.sign(y[:, None] - y[None, :])[upper]
    denominator = math.sqrt(float(np.count_nonzero(sx)) * float(np.count_nonzero(sy)))
    return float(np.sum(sx * sy) / denominator) if denominator else float("nan")


def bootstrap_interval(statistic: Callable[[np.ndarray, np.ndarray], float],
                       x: Sequence[float], y: Sequence[float], seed: int = 0,
                       resamples: int = 2000, level: float = 0.95) -> Tuple[float, float]:
    """Percentile bootstrap interval of statistic(x, y) over pairs drawn with
    replacement; resamples where the statistic is undefined (nan) are left out."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(resamples):
        pick = rng.integers(0, len(x), len(x))
        values.append(statistic(x[pick], y[pick]))
    values = np.asarray(values)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return float("nan"), float("nan")
    tail = (1.0 - level) / 2.0 * 100.0
    return float(np.percentile(values, tail)), float(np.percentile(values, 100.0 - tail))
