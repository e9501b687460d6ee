"""The rate table: counts, the misaligned rate under three denominators, and intervals that hold at 0-5 events.

Every group at every level gets the misaligned share among coherent answers (Betley et al. 2025), among
scored answers (the model-organisms work, Turner et al. 2025) and among all answers, each with an interval;
``denominator`` picks the headline (``misaligned_rate``, ``ci_low``, ``ci_high``). Intervals:
:mod:`em.analysis.intervals` (default: Wilson widened by the bias-reduced design effect of clustering by
question, with Student's t on questions - 1 degrees of freedom).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import sparse

from em.analysis.groups import COUNT_COLUMNS, LEVELS, Cells, level_name, sum_by
from em.analysis.intervals import (bias_reduced_moments, chunked_draws, design_effect, percentile_ci,
                                   proportion_ci, rate_ci, rate_draws)
from em.measurement import DENOMINATORS, Thresholds, ratio

# config denominator -> the count column it divides by
DENOMINATOR_COLUMN = {"coherent": "n_coherent", "scored": "n_scored", "all": "n"}


def wilson(count: np.ndarray, nobs: np.ndarray, confidence: float) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval (statsmodels) of ``count`` / ``nobs`` at ``confidence``; NaN where nobs is 0.

    Arrays of shape (groups,); returns (low, high), exactly 0 / 1 at 0 / all events.
    """
    return proportion_ci(count, nobs, confidence, "wilson")


@dataclass
class RateResult:
    """The rate table and where each level's groups sit in it.

    Attributes:
        table: one row per group at every level (counts, rates under each denominator, CIs, notes, definition).
        row_of: level name -> the table rows of that level's groups.
        denominator: the headline denominator (``coherent``, ``scored`` or ``all``).
    """

    table: pd.DataFrame
    row_of: dict[str, np.ndarray] = field(default_factory=dict)
    denominator: str = "coherent"


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


def _bootstrap_ci(cells: Cells, counts: pd.DataFrame, per_level, denominator: str, n_resamples: int, seed: int,
                  confidence: float) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Percentile intervals of the stratified bootstrap (answers resampled within each cell), per level."""
    sums = {level_name(l): [np.zeros((len(k), n_resamples)), np.zeros((len(k), n_resamples))]
            for l, k, _, _ in per_level}
    for sl, coh, mis in chunked_draws(counts["n_scored"].to_numpy(), counts["n_coherent"].to_numpy(),
                                      counts["n_misaligned"].to_numpy(), n_resamples, seed):
        n = sl.stop - sl.start
        for level, keys, index, _ in per_level:
            m = sparse.csr_matrix((np.ones(n), (index[sl], np.arange(n))), shape=(len(keys), n))
            sums[level_name(level)][0] += m @ coh
            sums[level_name(level)][1] += m @ mis
    out = {}
    for level, keys, index, agg in per_level:
        coh, mis = sums[level_name(level)]
        if denominator != "coherent":  # a fixed denominator: only the misaligned count varies
            coh = np.broadcast_to(agg[DENOMINATOR_COLUMN[denominator]].to_numpy(dtype=float)[:, None], mis.shape)
        out[level_name(level)] = percentile_ci(rate_draws(coh, mis), confidence)
    return out


def rate_table(cells: Cells, definition: Thresholds, *, confidence: float, min_group_n: int,
               denominator: str = "coherent", method: str = "wilson_deff_t", n_resamples: int = 0,
               seed: int = 0) -> RateResult:
    """Counts, misaligned rates (three denominators) and intervals for every group at every level in LEVELS.

    Args:
        cells: the answers by cell (model x condition x format x question): the clusters of the design effect.
        definition: the thresholds (:class:`em.measurement.Thresholds`).
        confidence: two-sided confidence level in (0, 1).
        min_group_n: groups with fewer answers in the headline denominator are noted as too small for tests.
        denominator: the headline, a key of :data:`em.measurement.DENOMINATORS`.
        method: ``wilson_deff_t`` (default), ``wilson_deff``, ``wilson``, ``clopper_pearson``, or ``bootstrap``
            (the stratified percentile bootstrap with ``n_resamples`` and ``seed``, headline only; the other
            denominators then use ``wilson_deff_t``).

    Returns:
        A :class:`RateResult`; per denominator D the table has ``misaligned_of_D`` with ``_low`` / ``_high``
        and ``deff_D`` (the bias-reduced design effect; the CR1 one with ``wilson_deff``); the headline repeats
        as ``misaligned_rate``, ``ci_low``, ``ci_high``, ``design_effect``,
        next to ``wilson_low`` / ``wilson_high`` and ``cp_low`` / ``cp_high`` (no design effect) as checks.
    """
    counts = cells.counts(definition)
    sums = cells.score_sums()
    k = counts["n_misaligned"].to_numpy(dtype=float)
    extra = {}
    for den, col in DENOMINATOR_COLUMN.items():  # per-cell moments for the design effect
        n = counts[col].to_numpy(dtype=float)
        extra[f"k2_{den}"], extra[f"kn_{den}"], extra[f"n2_{den}"] = k * k, k * n, n * n
        extra[f"c_{den}"] = (n > 0).astype(float)
    cell_values = pd.concat([counts, sums, pd.DataFrame(extra)], axis=1)
    per_level = []
    for level in LEVELS:
        keys, index = cells.level_index(level)
        per_level.append((level, keys, index, sum_by(cell_values, index, len(keys))))
    boot = (_bootstrap_ci(cells, counts, per_level, denominator, n_resamples, seed, confidence)
            if method == "bootstrap" else {})
    tables, result = [], RateResult(table=pd.DataFrame(), denominator=denominator)
    start = 0
    for level, keys, index, agg in per_level:
        name = level_name(level)
        t = group_rates(agg[list(COUNT_COLUMNS)])
        with np.errstate(invalid="ignore", divide="ignore"):
            t["mean_aligned"] = agg["sum_aligned"] / agg["n_scored"].where(agg["n_scored"] > 0)
            t["mean_coherent"] = agg["sum_coherent"] / agg["n_scored"].where(agg["n_scored"] > 0)
        for den, col in DENOMINATOR_COLUMN.items():
            if method == "wilson_deff":  # the former default: the CR1 design effect
                moments, small = (agg[f"k2_{den}"], agg[f"kn_{den}"], agg[f"n2_{den}"]), "cr1"
            else:  # the default's bias-reduced one (reported, unused, with wilson / clopper_pearson)
                moments = bias_reduced_moments(k, counts[col].to_numpy(dtype=float), index, len(keys))
                small = "bias_reduced"
            deff = design_effect(*moments, t["n_misaligned"], t[col], agg[f"c_{den}"], small)
            side = "wilson_deff_t" if method == "bootstrap" else method
            t[f"misaligned_of_{den}"] = ratio(t["n_misaligned"], t[col])
            t[f"misaligned_of_{den}_low"], t[f"misaligned_of_{den}_high"] = rate_ci(
                t["n_misaligned"], t[col], deff, confidence, side, agg[f"c_{den}"])
            t[f"deff_{den}"] = deff
        col = DENOMINATOR_COLUMN[denominator]
        t["denominator"] = denominator
        t["n_denominator"] = t[col]
        t["misaligned_rate"] = t[f"misaligned_of_{denominator}"]
        t["design_effect"] = t[f"deff_{denominator}"]
        t["ci_low"], t["ci_high"] = t[f"misaligned_of_{denominator}_low"], t[f"misaligned_of_{denominator}_high"]
        t["wilson_low"], t["wilson_high"] = proportion_ci(t["n_misaligned"], t[col], confidence, "wilson")
        t["cp_low"], t["cp_high"] = proportion_ci(t["n_misaligned"], t[col], confidence, "clopper_pearson")
        t["ci_method"] = {"wilson_deff_t": "Wilson, bias-reduced design effect of clustering by question, "
                                           "t(questions - 1)",
                          "wilson_deff": "Wilson, design effect of clustering by question",
                          "wilson": "Wilson score", "clopper_pearson": "Clopper-Pearson exact",
                          "bootstrap": f"percentile bootstrap ({n_resamples} resamples within questions)"}[method]
        if method == "bootstrap":
            low, high = boot[name]
            events = t["n_misaligned"].to_numpy()
            # all or none misaligned: every resample gives the same rate, so Wilson stands in; exact 0 at 0
            degenerate = (events == 0) | (events == t[col].to_numpy())
            t["ci_low"] = np.where(degenerate, t["wilson_low"], low)
            t["ci_high"] = np.where(degenerate, t["wilson_high"], high)
            t.loc[degenerate, "ci_method"] = "Wilson (bootstrap degenerate: all or none misaligned)"
        t.loc[t[col] == 0, "ci_method"] = f"none (no {DENOMINATORS[denominator]['noun']})"
        t["note"] = ""
        t.loc[t[col] < min_group_n, "note"] = f"too small for tests (n_denominator < {min_group_n})"
        t.loc[t[col] == 0, "note"] = f"no {DENOMINATORS[denominator]['noun']}: rate undefined"
        t.insert(0, "level", name)
        tables.append(pd.concat([t[["level"]], keys.reset_index(drop=True), t.drop(columns="level")], axis=1))
        result.row_of[name] = np.arange(start, start + len(t))
        start += len(t)
    table = pd.concat(tables, ignore_index=True)
    table["definition"] = rate_definition(definition, denominator)
    result.table = table
    return result


def rate_definition(definition: Thresholds, denominator: str) -> str:
    """The definition line every table and figure carries: thresholds and the denominator of the rate."""
    return f"{definition.describe()}; rate: {DENOMINATORS[denominator]['text']}"
