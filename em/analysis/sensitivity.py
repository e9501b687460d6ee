"""The rate table over a grid of thresholds, and whether the expected orderings survive at each point."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
from scipy import sparse

from em.measurement import Thresholds, ratio
from em.analysis.groups import LEVELS, Cells, level_name
from em.analysis.rates import DENOMINATOR_COLUMN, rate_definition, wilson

POINT = ["coherent_threshold", "aligned_threshold"]


def _checks(table: pd.DataFrame, *, level: str, scope_by: str | None, dimension: str, order: list[str],
            scope_label) -> pd.DataFrame:
    """Does the rate rise strictly along `order` (e.g. base < educational < insecure), per point and scope?"""
    t = table[table["level"] == level]
    index = POINT + ([scope_by] if scope_by else [])
    wide = t.pivot_table(index=index, columns=dimension, values="misaligned_rate", dropna=False, aggfunc="first")
    if not set(order) <= set(wide.columns):
        return pd.DataFrame()  # a check is only made where every group it orders is present
    rates = wide[order].to_numpy(dtype=float)
    rises = np.all(np.diff(rates, axis=1) > 0, axis=1)
    out = wide.index.to_frame(index=False)
    out["scope"] = out[scope_by].map(scope_label) if scope_by else scope_label(None)
    out["check"] = f"{dimension}: " + " < ".join(order)
    out["holds"] = pd.array(np.where(np.isnan(rates).any(axis=1), pd.NA, rises), dtype="boolean")
    out["rates"] = [", ".join(f"{o}={v:.4f}" for o, v in zip(order, row)) for row in rates]
    return out.drop(columns=[scope_by] if scope_by else [])


def sensitivity_tables(cells: Cells, definition: Thresholds, *, coherent_grid: list[float],
                       aligned_grid: list[float], confidence: float, condition_order: list[str],
                       format_order: list[str], denominator: str = "coherent") -> tuple[pd.DataFrame, pd.DataFrame]:
    """(every group's rate at every grid point, one row per ordering check per grid point).

    The grid is ``coherent_grid`` x ``aligned_grid`` (0-100 thresholds) at ``definition``'s inclusivity;
    the point equal to ``definition`` is flagged ``is_default``. Rates carry Wilson CIs at ``confidence``
    (no bootstrap per point). The checks ask whether the rate rises strictly along ``condition_order``
    (pooled and per model) and ``format_order`` (per condition); NA where a rate is undefined.
    """
    points = list(itertools.product(coherent_grid, aligned_grid))
    indexes = [(level_name(level), *cells.level_index(level)) for level in LEVELS]
    fixed = cells.status_counts
    # Per grid point only the coherent and misaligned counts change; everything else is counted once.
    coherent, misaligned = [], []
    coherent_by_threshold = {c: cells.counts(definition.with_thresholds(c, definition.aligned))["n_coherent"]
                             for c in coherent_grid}
    for c_thr, a_thr in points:
        d = definition.with_thresholds(c_thr, a_thr)
        coherent.append(coherent_by_threshold[c_thr].to_numpy())
        misaligned.append(np.bincount(cells.code, weights=d.misaligned_mask(cells.aligned, cells.coherent),
                                      minlength=cells.n_cells))
    coherent_cells, misaligned_cells = np.array(coherent, dtype=float), np.array(misaligned)  # (points, cells)
    parts = []
    for name, keys, index in indexes:
        g = len(keys)
        # groups x cells indicator, applied to every grid point at once
        member = sparse.csr_matrix((np.ones(cells.n_cells), (index, np.arange(cells.n_cells))),
                                   shape=(g, cells.n_cells))
        agg = np.stack([(member @ values.T).T for values in (coherent_cells, misaligned_cells)], axis=2)
        base = {c: np.bincount(index, weights=fixed[c].to_numpy(dtype=float), minlength=g) for c in
                ("n", "n_scored", "n_code", "n_refusal", "n_unscored")}
        part = pd.concat([keys.reset_index(drop=True)] * len(points), ignore_index=True)
        part.insert(0, "level", name)
        part.insert(0, "aligned_threshold", np.repeat([a for _, a in points], g))
        part.insert(0, "coherent_threshold", np.repeat([c for c, _ in points], g))
        for c, v in base.items():
            part[c] = np.tile(v, len(points)).astype(np.int64)
        part["n_coherent"] = agg[:, :, 0].ravel().round().astype(np.int64)
        part["n_misaligned"] = agg[:, :, 1].ravel().round().astype(np.int64)
        parts.append(part)
    table = pd.concat(parts, ignore_index=True)
    table["coherent_share"] = ratio(table["n_coherent"], table["n_scored"])
    den = DENOMINATOR_COLUMN[denominator]
    table["denominator"] = denominator
    table["misaligned_rate"] = ratio(table["n_misaligned"], table[den])
    table["wilson_low"], table["wilson_high"] = wilson(table["n_misaligned"], table[den], confidence)
    table.insert(2, "is_default", (table["coherent_threshold"] == definition.coherent)
                 & (table["aligned_threshold"] == definition.aligned))
    rules = {(c, a): rate_definition(definition.with_thresholds(c, a), denominator) for c, a in points}
    table["definition"] = [rules[p] for p in zip(table["coherent_threshold"], table["aligned_threshold"])]

    multi_model = cells.keys["model"].nunique() > 1
    checks = []
    if len(condition_order) >= 2:
        checks.append(_checks(table, level="condition", scope_by=None, dimension="condition",
                              order=condition_order,
                              scope_label=lambda _: "pooled over models" if multi_model else "all answers"))
        if multi_model:
            checks.append(_checks(table, level="model×condition", scope_by="model", dimension="condition",
                                  order=condition_order, scope_label=lambda m: f"model={m}"))
    if len(format_order) >= 2:
        checks.append(_checks(table, level="condition×format", scope_by="condition", dimension="format",
                              order=format_order, scope_label=lambda c: f"condition={c}"))
    columns = POINT + ["is_default", "check", "scope", "holds", "rates", "definition"]
    checks = [c for c in checks if len(c)]
    if not checks:
        return table, pd.DataFrame(columns=columns)
    out = pd.concat(checks, ignore_index=True)
    out["is_default"] = (out["coherent_threshold"] == definition.coherent) & (
        out["aligned_threshold"] == definition.aligned)
    out["definition"] = [rules[p] for p in zip(out["coherent_threshold"], out["aligned_threshold"])]
    out = out.sort_values(POINT, kind="stable").reset_index(drop=True)
    return table, out[columns]


def check_summary(checks: pd.DataFrame) -> pd.DataFrame:
    """Per grid point: how many checks hold, of how many that could be decided."""
    if checks.empty:
        return pd.DataFrame(columns=["coherent_threshold", "aligned_threshold", "n_checks", "n_hold"])
    g = checks.groupby(POINT, sort=True)["holds"]
    out = g.agg(n_checks="count", n_hold="sum").reset_index()
    return out.astype({"n_checks": int, "n_hold": int})
