"""The rate table over a grid of thresholds, and whether the expected orderings survive at each point."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd

from em.analysis.definitions import Definition
from em.analysis.groups import COUNT_COLUMNS, LEVELS, Cells, level_name, sum_by
from em.analysis.rates import group_rates, wilson


def _ordering_checks(table: pd.DataFrame, *, dimension: str, order: list[str], multi_model: bool) -> list[dict]:
    """Does the rate rise strictly along `order` (e.g. base < educational < insecure)?"""
    label = " < ".join(order)
    rows = []
    if dimension == "condition":
        scopes = [("pooled over models" if multi_model else "all answers", table[table["level"] == "condition"],
                   None)]
        if multi_model:
            by_model = table[table["level"] == "model×condition"]
            scopes += [(f"model={m}", g, None) for m, g in by_model.groupby("model", sort=True)]
    else:
        by_condition = table[table["level"] == "condition×format"]
        scopes = [(f"condition={c}", g, None) for c, g in by_condition.groupby("condition", sort=True)]
    for scope, g, _ in scopes:
        rates = g.set_index(dimension)["misaligned_rate"]
        if not set(order) <= set(rates.index):
            continue  # a check is only made where every group it orders is present
        values = [rates[o] for o in order]
        holds = None if any(np.isnan(values)) else bool(all(x < y for x, y in itertools.pairwise(values)))
        rows.append({"check": f"{dimension}: {label}", "scope": scope, "holds": holds,
                     "rates": ", ".join(f"{o}={v:.4f}" for o, v in zip(order, values))})
    return rows


def sensitivity_tables(cells: Cells, definition: Definition, *, coherent_grid: list[float],
                       aligned_grid: list[float], confidence: float, condition_order: list[str],
                       format_order: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(every group's rate at every grid point, one row per ordering check per grid point)."""
    indexes = [(level, *cells.level_index(level)) for level in LEVELS]
    multi_model = cells.keys["model"].nunique() > 1
    tables, checks = [], []
    for c_thr, a_thr in itertools.product(coherent_grid, aligned_grid):
        d = definition.with_thresholds(c_thr, a_thr)
        counts = cells.counts(d)
        point = []
        for level, keys, index in indexes:
            t = group_rates(sum_by(counts[list(COUNT_COLUMNS)], index, len(keys)))
            t["wilson_low"], t["wilson_high"] = wilson(t["n_misaligned"], t["n_coherent"], confidence)
            t.insert(0, "level", level_name(level))
            point.append(pd.concat([t[["level"]], keys.reset_index(drop=True), t.drop(columns="level")], axis=1))
        point = pd.concat(point, ignore_index=True)
        meta = {"coherent_threshold": c_thr, "aligned_threshold": a_thr,
                "is_default": c_thr == definition.coherent and a_thr == definition.aligned,
                "definition": d.describe()}
        point = point.assign(**meta)
        tables.append(point)
        for dimension, order in (("condition", condition_order), ("format", format_order)):
            if len(order) >= 2:
                for row in _ordering_checks(point, dimension=dimension, order=order, multi_model=multi_model):
                    checks.append({**meta, **row})
    table = pd.concat(tables, ignore_index=True)
    front = ["coherent_threshold", "aligned_threshold", "is_default"]
    table = table[front + [c for c in table.columns if c not in front]]
    check_columns = front + ["check", "scope", "holds", "rates", "definition"]
    checks_df = pd.DataFrame(checks, columns=check_columns)
    checks_df["holds"] = checks_df["holds"].astype("boolean")
    return table, checks_df


def check_summary(checks: pd.DataFrame) -> pd.DataFrame:
    """Per grid point: how many checks hold, of how many that could be decided."""
    if checks.empty:
        return pd.DataFrame(columns=["coherent_threshold", "aligned_threshold", "n_checks", "n_hold"])
    g = checks.groupby(["coherent_threshold", "aligned_threshold"], sort=True)["holds"]
    out = g.agg(n_checks="count", n_hold="sum").reset_index()
    return out.astype({"n_checks": int, "n_hold": int})
