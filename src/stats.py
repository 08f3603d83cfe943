"""The few statistics a search and its studies report: Welch's interval for a
difference of means (also with binomially floored variances, for test accuracies),
binomial standard errors, rank correlations (Kendall's tau-b, Spearman's rho), their
bootstrap intervals and permutation p-values. NumPy only (no SciPy for these); tests
check them against textbook and hand-computed values."""
from __future__ import annotations

import itertools
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
    _, inverse, counts = np.unique(np.asarray(values, np.float64), return_inverse=True,
                                   return_counts=True)
    last = np.cumsum(counts)  # the rank of each distinct value's last copy
    return ((last - counts + 1 + last) / 2.0)[inverse.ravel()]


def spearman_rho(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson correlation of the average ranks; nan where either side is constant."""
    rx, ry = average_ranks(x), average_ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    scale = math.sqrt(float(np.dot(rx, rx)) * float(np.dot(ry, ry)))
    return float(np.dot(rx, ry) / scale) if scale > 0 else float("nan")


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


# ---------------------------------------------------------------------------- test accuracies


def binomial_se(p: float, n: int) -> float:
    """sqrt(p (1 - p) / n): the standard error of an accuracy p measured on n test images."""
    if n < 1:
        raise ValueError(f"a binomial standard error needs n >= 1 test images, got {n}")
    return math.sqrt(max(p * (1.0 - p), 0.0) / n)


def floored_variance(accuracies: Sequence[float], num_test: int) -> Dict:
    """The variance of ONE model's test accuracy, estimated from accuracies of repeated
    runs: their sample variance, floored at the binomial variance p(1 - p)/n of their
    mean p (no accuracy on n images is known better than that; with 2 runs the sample
    variance has 1 degree of freedom and is often near 0 by chance). One value: the
    binomial variance alone."""
    values = np.asarray(accuracies, np.float64)
    binomial = binomial_se(float(values.mean()), num_test) ** 2
    sample = float(values.var(ddof=1)) if len(values) > 1 else 0.0
    return {"variance": max(sample, binomial), "sample_variance": sample,
            "binomial_variance": binomial, "floored": sample < binomial}


def mean_and_se(accuracies: Sequence[float], num_test: int) -> Dict:
    """Mean of repeated runs' test accuracies and its standard error
    sqrt(floored_variance / runs); also the runs' SD and the binomial SE of the mean."""
    values = np.asarray(accuracies, np.float64)
    if len(values) == 0:
        raise ValueError("mean_and_se needs at least one accuracy")
    variance = floored_variance(values, num_test)
    return {"mean": float(values.mean()), "se": math.sqrt(variance["variance"] / len(values)),
            "n": int(len(values)),
            "sd": float(values.std(ddof=1)) if len(values) > 1 else float("nan"),
            "binomial_se": binomial_se(float(values.mean()), num_test),
            "se_floored_at_binomial": variance["floored"]}


def difference_interval(a: Sequence[float], b: Sequence[float], num_test: int,
                        level: float = 0.95) -> Dict:
    """mean(a) - mean(b) for test accuracies on num_test images, with Welch's interval on
    binomially floored variances:

        v_g  = max(s_g^2, p_g (1 - p_g) / n)      (s_g^2: sample variance of group g, p_g its mean)
        se^2 = v_a / k_a + v_b / k_b               (k_g: runs in group g)
        df   = se^4 / ((v_a/k_a)^2 / (k_a - 1) + (v_b/k_b)^2 / (k_b - 1))   (Welch-Satterthwaite)
        CI   = difference +- t(0.5 + level/2, df) * se

    The degrees of freedom stay k_g - 1 even where the floor applies (conservative).
    Needs 2 or more runs in each group."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(a) < 2 or len(b) < 2:
        raise ValueError("the interval of a difference needs at least 2 runs in each group")
    var_a, var_b = floored_variance(a, num_test), floored_variance(b, num_test)
    part_a, part_b = var_a["variance"] / len(a), var_b["variance"] / len(b)
    difference, se = float(a.mean() - b.mean()), math.sqrt(part_a + part_b)
    df = (part_a + part_b) ** 2 / (part_a ** 2 / (len(a) - 1) + part_b ** 2 / (len(b) - 1))
    half_width = t_quantile(0.5 + level / 2.0, df) * se
    return {"difference": difference, "se": se, "df": float(df), "level": level,
            "ci": [difference - half_width, difference + half_width],
            "a_variance": var_a, "b_variance": var_b}


# ---------------------------------------------------------------------------- rank statistics


# Up to this many pairs, permutation_p_value runs through every ordering (7! = 5,040).
EXHAUSTIVE_MAX = 7


def permutation_p_value(x: Sequence[float], y: Sequence[float],
                        statistic: Callable[[np.ndarray, np.ndarray], float],
                        num_permutations: int = 10000, seed: int = 0,
                        alternative: str = "greater") -> Dict:
    """The p-value of statistic(x, y) under "x and y unrelated": y is permuted against x.

    Up to EXHAUSTIVE_MAX pairs every ordering is tried and p = (orderings scoring at least
    the observed value) / n!, the identity included, so exact; above that p = (1 + count)
    / (1 + num_permutations) over seeded random orderings (Phipson and Smyth 2010: never
    0). alternative "greater" is one-sided (H1: the statistic is positive), "two-sided"
    counts |statistic| >= |observed|. nan when the statistic is undefined (a constant side)."""
    if alternative not in ("greater", "two-sided"):
        raise ValueError(f"alternative must be 'greater' or 'two-sided', got {alternative!r}")
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    observed = statistic(x, y)
    result = {"statistic": observed, "alternative": alternative, "p_value": float("nan")}
    if not np.isfinite(observed):
        return {**result, "method": "undefined", "permutations": 0}
    exhaustive = len(x) <= EXHAUSTIVE_MAX
    if exhaustive:
        orders = itertools.permutations(range(len(y)))
    else:
        rng = np.random.default_rng(seed)
        orders = (rng.permutation(len(y)) for _ in range(num_permutations))
    transform = abs if alternative == "two-sided" else (lambda value: value)
    threshold = transform(observed) - 1e-12  # ties with the observed value count
    tried = at_least = 0
    for order in orders:
        value = statistic(x, y[list(order)])
        tried += 1
        at_least += bool(np.isfinite(value) and transform(value) >= threshold)
    p_value = at_least / tried if exhaustive else (1 + at_least) / (1 + tried)
    return {**result, "p_value": float(p_value), "permutations": tried,
            "method": "exhaustive" if exhaustive else "monte carlo"}


def mean_pairwise_kendall(table: np.ndarray) -> float:
    """Kendall's tau-b between every two columns of table (units x repeats; e.g. arcs x
    seeds), averaged; with two columns simply their tau. nan if any is undefined."""
    table = np.asarray(table, np.float64)
    taus = [kendall_tau(table[:, i], table[:, j])
            for i, j in itertools.combinations(range(table.shape[1]), 2)]
    return float(np.mean(taus)) if taus else float("nan")


def bootstrap_rows_interval(statistic: Callable[[np.ndarray], float], table: Sequence,
                            seed: int = 0, resamples: int = 2000,
                            level: float = 0.95) -> Tuple[float, float]:
    """Percentile bootstrap interval of statistic(table) over its rows (units, e.g. arcs)
    drawn with replacement; resamples where the statistic is undefined are left out."""
    table = np.asarray(table, np.float64)
    rng = np.random.default_rng(seed)
    values = np.asarray([statistic(table[rng.integers(0, len(table), len(table))])
                         for _ in range(resamples)])
    values = values[np.isfinite(values)]
    if values.size == 0:
        return float("nan"), float("nan")
    tail = (1.0 - level) / 2.0 * 100.0
    return float(np.percentile(values, tail)), float(np.percentile(values, 100.0 - tail))
