"""The rate table: counts, misaligned rate, bootstrap CI (Wilson as a check) for every group at every level."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import sparse

from em.analysis.bootstrap import chunked_draws, percentile_ci, rate_draws
from em.measurement import Thresholds, ratio
from em.analysis.groups import COUNT_COLUMNS, LEVELS, Cells, level_name, sum_by

# Levels whose bootstrap draws are kept for the contrasts (difference CIs).
KEEP_DRAWS = (("model", "condition"), ("condition",), ("condition", "format"))


@dataclass
class RateResult:
    """The rate table and the bootstrap draws the contrasts need.

    Attributes:
        table: one row per group at every level (counts, rates, CIs, notes, definition).
        draws: level name -> float array (groups, resamples) of bootstrap rates (levels in KEEP_DRAWS).
        row_of: level name -> the table row of each group in ``draws``.
    """

    table: pd.DataFrame
    draws: dict[str, np.ndarray] = field(default_factory=dict)  # level name -> (groups, resamples) rates
    row_of: dict[str, np.ndarray] = field(default_factory=dict)  # level name -> table row of each group


def wilson(count: np.ndarray, nobs: np.ndarray, confidence: float) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval (statsmodels) of ``count`` / ``nobs`` at ``confidence``; NaN where nobs is 0.

    Arrays of shape (groups,); returns (low, high).
    """
    from statsmodels.stats.proportion import proportion_confint

    count = np.asarray(count, dtype=float)
    nobs = np.asarray(nobs, dtype=float)
    ok = nobs > 0
    low, high = np.full(len(nobs), np.nan), np.full(len(nobs), np.nan)
    if ok.any():
        low[ok], high[ok] = proportion_confint(count[ok], nobs[ok], alpha=1 - confidence, method="wilson")
    return low, high


def group_rates(counts: pd.DataFrame) -> pd.DataFrame:
    """Counts (COUNT_COLUMNS, rounded to int) plus ``coherent_share`` = coherent / scored and
    ``misaligned_rate`` = misaligned / coherent (NaN for an empty denominator; :func:`em.measurement.ratio`).
    """
    out = counts.copy()
    for c in COUNT_COLUMNS:
        out[c] = out[c].round().astype(np.int64)
    out["coherent_share"] = ratio(out["n_coherent"], out["n_scored"])
    out["misaligned_rate"] = ratio(out["n_misaligned"], out["n_coherent"])
    return out


def rate_table(cells: Cells, definition: Thresholds, *, n_resamples: int, seed: int, confidence: float,
               min_group_n: int) -> RateResult:
    """Counts, misaligned rate and CIs for every group at every level in LEVELS.

    CIs are percentile intervals of a stratified bootstrap (``n_resamples`` resamples of the answers
    within each cell, ``seed``; :mod:`em.analysis.bootstrap`), with the Wilson interval as a check and as
    the stand-in where a group has all or none misaligned. Groups with fewer than ``min_group_n``
    coherent answers are noted as too small for tests.

    Args:
        cells: the answers by cell.
        definition: the thresholds (:class:`em.measurement.Thresholds`).
        confidence: two-sided confidence level in (0, 1).
    """
    counts = cells.counts(definition)
    sums = cells.score_sums()
    per_level = []
    for level in LEVELS:
        keys, index = cells.level_index(level)
        agg = sum_by(pd.concat([counts, sums], axis=1), index, len(keys))
        per_level.append((level, keys, index, agg))

    # Bootstrap: per-cell draws, summed into each level's groups chunk by chunk.
    coarse = [(lvl, idx, len(k)) for lvl, k, idx, _ in per_level if len(lvl) < len(LEVELS[0])]
    sum_coh = {level_name(l): np.zeros((g, n_resamples)) for l, _, g in coarse}
    sum_mis = {level_name(l): np.zeros((g, n_resamples)) for l, _, g in coarse}
    fine_low = np.full(cells.n_cells, np.nan)
    fine_high = np.full(cells.n_cells, np.nan)
    for sl, coh, mis in chunked_draws(counts["n_scored"].to_numpy(), counts["n_coherent"].to_numpy(),
                                      counts["n_misaligned"].to_numpy(), n_resamples, seed):
        fine_low[sl], fine_high[sl] = percentile_ci(rate_draws(coh, mis), confidence)
        n = sl.stop - sl.start
        for level, index, g in coarse:
            m = sparse.csr_matrix((np.ones(n), (index[sl], np.arange(n))), shape=(g, n))
            sum_coh[level_name(level)] += m @ coh
            sum_mis[level_name(level)] += m @ mis

    tables, result = [], RateResult(table=pd.DataFrame())
    start = 0
    for level, keys, index, agg in per_level:
        name = level_name(level)
        t = group_rates(agg[list(COUNT_COLUMNS)])
        with np.errstate(invalid="ignore", divide="ignore"):
            t["mean_aligned"] = agg["sum_aligned"] / agg["n_scored"].where(agg["n_scored"] > 0)
            t["mean_coherent"] = agg["sum_coherent"] / agg["n_scored"].where(agg["n_scored"] > 0)
        if name in sum_coh:
            draws = rate_draws(sum_coh[name], sum_mis[name])
            t["ci_low"], t["ci_high"] = percentile_ci(draws, confidence)
            if tuple(level) in KEEP_DRAWS:
                result.draws[name] = draws
                result.row_of[name] = np.arange(start, start + len(t))
        else:
            t["ci_low"], t["ci_high"] = fine_low, fine_high
        t["wilson_low"], t["wilson_high"] = wilson(t["n_misaligned"], t["n_coherent"], confidence)
        t["ci_method"] = f"bootstrap ({n_resamples} resamples of answers within questions)"
        # A group with no misaligned (or only misaligned) answers resamples to a single value; the
        # percentile interval then collapses to a point, so the Wilson interval stands in.
        degenerate = (t["n_coherent"] > 0) & ((t["n_misaligned"] == 0) | (t["n_misaligned"] == t["n_coherent"]))
        t.loc[degenerate, "ci_low"] = t.loc[degenerate, "wilson_low"]
        t.loc[degenerate, "ci_high"] = t.loc[degenerate, "wilson_high"]
        t.loc[degenerate, "ci_method"] = "wilson (bootstrap degenerate: all or none misaligned)"
        t.loc[t["n_coherent"] == 0, "ci_method"] = "none (no coherent answers)"
        t["note"] = ""
        t.loc[t["n_coherent"] < min_group_n, "note"] = f"too small for tests (n_coherent < {min_group_n})"
        t.loc[t["n_coherent"] == 0, "note"] = "no coherent answers: rate undefined"
        t.insert(0, "level", name)
        tables.append(pd.concat([t[["level"]], keys.reset_index(drop=True), t.drop(columns="level")], axis=1))
        start += len(t)
    table = pd.concat(tables, ignore_index=True)
    table["definition"] = definition.describe()
    result.table = table
    return result
