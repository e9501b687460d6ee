"""Coherence-alignment correlation at two levels: single answers, and model x condition group means."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd

from em.measurement import SCORED

MIN_N = 4  # Fisher-z intervals need n > 3


def _spearman_ci(rho: float, n: int, confidence: float) -> tuple[float, float]:
    # Fisher z with the Bonett & Wright (2000) standard error for Spearman's rho.
    from scipy.stats import norm

    if n < MIN_N or not math.isfinite(rho):
        return math.nan, math.nan
    z = np.arctanh(np.clip(rho, -0.999999, 0.999999))
    se = math.sqrt((1 + rho**2 / 2) / (n - 3))
    q = norm.ppf(0.5 + confidence / 2)
    return float(np.tanh(z - q * se)), float(np.tanh(z + q * se))


def correlate(x: np.ndarray, y: np.ndarray, confidence: float) -> list[dict]:
    """Pearson and Spearman r with CIs and p-values; NaN with a note when there is too little to correlate."""
    from scipy.stats import pearsonr, spearmanr

    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    n = len(x)
    out = []
    for method in ("pearson", "spearman"):
        row = {"method": method, "n": n, "r": math.nan, "ci_low": math.nan, "ci_high": math.nan,
               "p_value": math.nan, "note": ""}
        if n < MIN_N:
            row["note"] = f"too few points (n={n} < {MIN_N})"
        elif np.ptp(x) == 0 or np.ptp(y) == 0:
            row["note"] = "a variable is constant: correlation undefined"
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if method == "pearson":
                    res = pearsonr(x, y)
                    ci = res.confidence_interval(confidence_level=confidence)
                    row.update(r=float(res.statistic), ci_low=float(ci.low), ci_high=float(ci.high),
                               p_value=float(res.pvalue))
                else:
                    res = spearmanr(x, y)
                    low, high = _spearman_ci(float(res.statistic), n, confidence)
                    row.update(r=float(res.statistic), ci_low=low, ci_high=high, p_value=float(res.pvalue),
                               note="CI: Fisher z, Bonett-Wright standard error")
        out.append(row)
    return out


def correlation_table(answers: pd.DataFrame, rates: pd.DataFrame, confidence: float) -> pd.DataFrame:
    """Coherence-alignment correlations (Pearson and Spearman, with CIs at ``confidence``).

    Answer level: the scored answers' two scores, over all and per condition. Group level: the
    model x condition rows of ``rates`` (mean scores; coherent share vs misaligned rate).

    Args:
        answers: one row per answer (``status``, ``aligned``, ``coherent``, ``condition``).
        rates: the rate table (:func:`em.analysis.rates.rate_table`).
        confidence: two-sided confidence level in (0, 1).

    Returns:
        One row per (level, scope, x ~ y, method) with r, CI, p-value, n and a note.
    """
    rows = []
    scored = answers[answers["status"].astype(str) == SCORED]
    x, y = scored["coherent"].to_numpy(dtype=float), scored["aligned"].to_numpy(dtype=float)
    for r in correlate(x, y, confidence):
        rows.append({"level": "answer", "scope": "all scored answers", "x": "coherent", "y": "aligned", **r})
    conditions = scored["condition"].astype(str)
    if conditions.nunique() > 1:
        for c in sorted(conditions.unique()):
            m = (conditions == c).to_numpy()
            for r in correlate(x[m], y[m], confidence):
                rows.append({"level": "answer", "scope": f"condition={c}", "x": "coherent", "y": "aligned", **r})
    groups = rates[rates["level"] == "model×condition"]
    what = "model×condition groups"
    for xcol, ycol in (("mean_coherent", "mean_aligned"), ("coherent_share", "misaligned_rate")):
        for r in correlate(groups[xcol].to_numpy(dtype=float), groups[ycol].to_numpy(dtype=float), confidence):
            rows.append({"level": "group (model × condition)", "scope": what, "x": xcol, "y": ycol, **r})
    return pd.DataFrame(rows)
