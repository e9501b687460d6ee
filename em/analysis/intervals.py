"""Intervals for rare events: Wilson / Clopper-Pearson rates, the design effect of clustering by question,
and Newcombe's hybrid score interval for a difference of two rates.

Why these (the coverage simulation is ``bench/rate_ci_coverage.py``; the table is in docs/analysis.md):
at 0-5 events a percentile bootstrap collapses onto the observed counts (3 of 40 gives a lower bound of
0, 0 of 40 a point), while the score intervals keep their nominal coverage. Answers to the same question
are correlated, so ``wilson_deff`` widens Wilson's interval by the design effect (Kish 1965): the count
and the denominator are divided by ``deff`` before the score interval is taken. The design effect is
estimated from the group's few questions (clusters), so the default (``wilson_deff_t``) takes the two
small-cluster corrections (Cameron & Miller 2015, section VI, few clusters): the bias-reduced cluster variance
(Mancl & DeRouen 2001) in the design effect, and Student's t on (clusters - 1) degrees of freedom instead of
the normal quantile, applied as Korn & Graubard's (1998) degrees-of-freedom-adjusted effective sample size,
n / deff * (z / t)^2, on which Wilson's interval is taken (Dean & Pagano 2015).

Sources: Wilson 1927; Clopper & Pearson 1934 (statsmodels ``proportion_confint``, methods ``wilson`` and
``beta``); Newcombe 1998, "Interval estimation for the difference between independent proportions",
method 10 (statsmodels ``confint_proportions_2indep(method="newcomb")`` is the same interval built from
plain Wilson limits); Kish 1965, *Survey Sampling*, for the design effect; Cameron & Miller 2015, "A
practitioner's guide to cluster-robust inference", J. Human Resources 50(2), for the G/(G-1) factor and
the t(G-1) quantile with few clusters; Mancl & DeRouen 2001, "A covariance estimator for GEE with improved
small-sample properties", Biometrics 57(1), for the bias-reduced variance; Korn & Graubard 1998,
"Confidence intervals for proportions with small expected number of positive counts estimated from survey
data", Survey Methodology 24(2), and
Dean & Pagano 2015, "Evaluating confidence interval methods for binomial proportions in clustered
surveys", J. Survey Statistics and Methodology 3(4), for the df-adjusted effective sample size.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np


METHODS = ("wilson_deff_t", "wilson_deff", "wilson", "clopper_pearson")


def _arrays(*xs) -> list[np.ndarray]:
    return [np.atleast_1d(np.asarray(x, dtype=float)) for x in xs]


def proportion_ci(count, nobs, confidence: float, method: str = "wilson") -> tuple[np.ndarray, np.ndarray]:
    """Two-sided interval of ``count / nobs`` (arrays of shape (groups,); counts may be fractional for Wilson).

    ``method``: ``wilson`` or ``clopper_pearson`` (exact, statsmodels' ``beta``). NaN where ``nobs`` is 0;
    exactly 0 as the lower bound where ``count`` is 0 and exactly 1 as the upper where ``count == nobs``.

    Raises:
        ValueError: an unknown method.
    """
    from statsmodels.stats.proportion import proportion_confint

    sm = {"wilson": "wilson", "clopper_pearson": "beta"}
    if method not in sm:
        raise ValueError(f"unknown interval method {method!r} (wilson, clopper_pearson)")
    count, nobs = _arrays(count, nobs)
    low, high = np.full(len(nobs), np.nan), np.full(len(nobs), np.nan)
    ok = nobs > 0
    if ok.any():
        lo, hi = proportion_confint(count[ok], nobs[ok], alpha=1 - confidence, method=sm[method])
        low[ok], high[ok] = np.clip(lo, 0, 1), np.clip(hi, 0, 1)
    low[ok & (count <= 0)] = 0.0
    high[ok & (count >= nobs)] = 1.0
    return low, high


def design_effect(k2, kn, n2, count, nobs, n_clusters, small_sample: str = "cr1") -> np.ndarray:
    """Design effect of a rate pooled over clusters (questions), one per group; 1 where it cannot be estimated.

    deff = v_cluster / v_binomial, floored at 1, where v_binomial = p(1-p)/N and v_cluster is the
    cluster-robust variance of the ratio estimator p = K/N (Kish 1965). ``small_sample="cr1"``:
    C/(C-1) * sum_i (k_i - p n_i)^2 / N^2 (statsmodels' ``cov_type="cluster"``); ``"bias_reduced"``: the moments
    come from :func:`bias_reduced_moments` (weights (1 - n_i/N)^-2, Mancl & DeRouen 2001) and take no factor.
    Groups with fewer than 2 clusters, or p of 0 or 1, get 1.

    Args:
        k2, kn, n2: per group, the sums over its clusters of k_i^2, k_i n_i and n_i^2 (k_i events of n_i).
        count, nobs: per group K = sum k_i and N = sum n_i; n_clusters: clusters with n_i > 0.
        small_sample: ``cr1`` or ``bias_reduced``.

    Raises:
        ValueError: an unknown ``small_sample``.
    """
    if small_sample not in ("cr1", "bias_reduced"):
        raise ValueError(f"unknown small-sample correction {small_sample!r} (cr1, bias_reduced)")
    k2, kn, n2, count, nobs, c = _arrays(k2, kn, n2, count, nobs, n_clusters)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = count / nobs
        ss = k2 - 2 * p * kn + p * p * n2
        factor = c / (c - 1) if small_sample == "cr1" else 1.0
        v_cluster = factor * ss / (nobs * nobs)
        v_binom = p * (1 - p) / nobs
        deff = v_cluster / v_binom
    ok = (c >= 2) & (nobs > 0) & (count > 0) & (count < nobs) & np.isfinite(deff)
    return np.where(ok, np.maximum(deff, 1.0), 1.0)


def wilson_deff(count, nobs, deff, confidence: float) -> tuple[np.ndarray, np.ndarray]:
    """Wilson's interval on the effective sample (count / deff of nobs / deff); exact 0 / 1 bounds kept."""
    count, nobs, deff = _arrays(count, nobs, deff)
    low, high = proportion_ci(count / deff, nobs / deff, confidence, "wilson")
    low[(nobs > 0) & (count <= 0)] = 0.0
    high[(nobs > 0) & (count >= nobs)] = 1.0
    return low, high


def bias_reduced_moments(k, n, index, n_groups: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per group, sums of w k_i^2, w k_i n_i and w n_i^2 over its clusters, w = (1 - n_i / N)^-2 (shape (groups,)).

    The leverage weights of the bias-reduced sandwich (Mancl & DeRouen 2001; statsmodels GEE
    ``cov_type="bias_reduced"``): for the pooled rate, the i-th cluster's leverage is n_i / N. A cluster that is
    its group's only one gets weight 0 (no between-cluster variance; :func:`design_effect` gives 1 there).

    Args:
        k, n: per cluster (cell), events and answers, shape (cells,); index: each cell's group in [0, n_groups).
    """
    k, n = _arrays(k, n)
    index = np.asarray(index)
    total = np.bincount(index, weights=n, minlength=n_groups)
    with np.errstate(invalid="ignore", divide="ignore"):
        w = 1.0 / (1.0 - n / total[index]) ** 2
    w[~np.isfinite(w)] = 0.0
    return tuple(np.bincount(index, weights=w * x, minlength=n_groups) for x in (k * k, k * n, n * n))


def df_adjustment(n_clusters, confidence: float) -> np.ndarray:
    """(z / t_{G-1})^2 per group, the factor on the effective sample size for G clusters (Korn & Graubard 1998).

    z and t are the two-sided ``confidence`` quantiles of the normal and of Student's t with G - 1 degrees of
    freedom (Cameron & Miller 2015's small-G correction); 1 where G < 2 (one question: no between-question
    variance is estimated, the binomial one is used as is). Shape (groups,), values in (0, 1].
    """
    from scipy import stats

    (g,) = _arrays(n_clusters)
    tail = (1 - confidence) / 2
    out = np.ones(len(g))
    many = g >= 2
    out[many] = (stats.norm.isf(tail) / stats.t.isf(tail, g[many] - 1)) ** 2
    return out


def wilson_deff_t(count, nobs, deff, n_clusters, confidence: float) -> tuple[np.ndarray, np.ndarray]:
    """Wilson's interval on the df-adjusted effective sample, nobs / deff * (z / t_{G-1})^2 (arrays (groups,)).

    The same as Wilson's score interval on (count / deff, nobs / deff) with the critical value t_{G-1} in place
    of z; analyze.py passes the bias-reduced design effect (:func:`bias_reduced_moments`). Contains plain Wilson
    (and :func:`wilson_deff` given the same deff); exact 0 / 1 bounds at 0 / all events are kept, and at 0
    events (deff 1) the upper bound is t^2 / (nobs + t^2), above Wilson's z^2 / (nobs + z^2).
    """
    count, nobs, deff = _arrays(count, nobs, deff)
    return wilson_deff(count, nobs, deff / df_adjustment(n_clusters, confidence), confidence)


def rate_ci(count, nobs, deff, confidence: float, method: str, n_clusters=None) -> tuple[np.ndarray, np.ndarray]:
    """The rate interval ``method`` names (:data:`METHODS`), arrays of shape (groups,).

    ``n_clusters`` (questions with answers, per group) is required by ``wilson_deff_t``.

    Raises:
        ValueError: an unknown method, or ``wilson_deff_t`` without ``n_clusters``.
    """
    if method == "wilson_deff_t":
        if n_clusters is None:
            raise ValueError("wilson_deff_t needs the number of clusters (questions) per group")
        return wilson_deff_t(count, nobs, deff, n_clusters, confidence)
    if method == "wilson_deff":
        return wilson_deff(count, nobs, deff, confidence)
    return proportion_ci(count, nobs, confidence, method)


def newcombe(p1, low1, high1, p2, low2, high2) -> tuple[np.ndarray, np.ndarray]:
    """Newcombe's hybrid score interval for p1 - p2 from each rate's own interval (arrays of shape (pairs,)).

    low = d - sqrt((p1 - l1)^2 + (u2 - p2)^2), high = d + sqrt((u1 - p1)^2 + (p2 - l2)^2) with d = p1 - p2
    (Newcombe 1998, method 10). With plain Wilson limits this is statsmodels' ``method="newcomb"``.
    """
    p1, low1, high1, p2, low2, high2 = _arrays(p1, low1, high1, p2, low2, high2)
    d = p1 - p2
    low = d - np.sqrt((p1 - low1) ** 2 + (high2 - p2) ** 2)
    high = d + np.sqrt((high1 - p1) ** 2 + (p2 - low2) ** 2)
    return np.clip(low, -1, 1), np.clip(high, -1, 1)


# ------------------------------------------------------------------------ stratified bootstrap (ci.method=bootstrap)
# Cells x resamples per chunk: bounds memory (two int64 arrays of this size) whatever the cell count.
CHUNK_DRAWS = 2_000_000


def cell_draws(n_scored: np.ndarray, n_coherent: np.ndarray, n_misaligned: np.ndarray, n_resamples: int,
               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Bootstrap (coherent, misaligned) counts, shape (cells, n_resamples), from a cell's scored answers."""
    n_scored = np.asarray(n_scored, dtype=np.int64)
    p_coherent = np.divide(n_coherent, n_scored, out=np.zeros(len(n_scored)), where=n_scored > 0)
    p_misaligned = np.divide(n_misaligned, n_coherent, out=np.zeros(len(n_scored)), where=np.asarray(n_coherent) > 0)
    coherent = rng.binomial(n_scored[:, None], p_coherent[:, None], size=(len(n_scored), n_resamples))
    misaligned = rng.binomial(coherent, p_misaligned[:, None])
    return coherent, misaligned


def chunked_draws(n_scored: np.ndarray, n_coherent: np.ndarray, n_misaligned: np.ndarray, n_resamples: int,
                  seed: int) -> Iterator[tuple[slice, np.ndarray, np.ndarray]]:
    """cell_draws over consecutive chunks of cells; the stream depends only on the seed and the cells."""
    rng = np.random.default_rng(seed)
    step = max(1, CHUNK_DRAWS // max(1, n_resamples))
    for start in range(0, len(n_scored), step):
        sl = slice(start, min(start + step, len(n_scored)))
        coherent, misaligned = cell_draws(n_scored[sl], n_coherent[sl], n_misaligned[sl], n_resamples, rng)
        yield sl, coherent, misaligned


def rate_draws(coherent: np.ndarray, misaligned: np.ndarray) -> np.ndarray:
    """Misaligned / coherent per resample; NaN where a resample drew no coherent answer."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(coherent > 0, misaligned / np.maximum(coherent, 1), np.nan)


def percentile_ci(draws: np.ndarray, confidence: float) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval of each row of draws (NaN draws ignored; all-NaN rows give NaN)."""
    tail = (1 - confidence) / 2
    if draws.size == 0:
        return np.empty(len(draws)), np.empty(len(draws))
    if not np.isnan(draws).any():
        low, high = np.quantile(draws, [tail, 1 - tail], axis=1)
        return low, high
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            low, high = np.nanquantile(draws, [tail, 1 - tail], axis=1)
    return low, high
