"""Condition and format contrasts: difference with Newcombe's interval, ratio, Fisher exact p, Bonferroni/Holm
across the family of contrasts that can be tested, power.

A contrast is *not tested* (reported, with the reason, and left out of the adjusted family) when a side has
fewer than ``min_group_n`` answers in the rate's denominator, or when neither side has a misaligned answer
(or both have only misaligned answers): such a table carries no evidence either way, and adding it to the
family only makes every other adjusted p larger.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
import pandas as pd

from em.analysis.groups import ALL
from em.analysis.intervals import newcombe
from em.analysis.rates import RateResult
from em.analysis.runs import permutation_p, run_test
from em.measurement import DENOMINATORS

TEST = "Fisher exact, two-sided"


def _power(rate_a: float, rate_b: float, n_a: int, n_b: int, alpha: float, power: float) -> tuple[float, float, str]:
    """(power the contrast had, n per group for `power`, note) from the normal approximation on Cohen's h."""
    from statsmodels.stats.power import NormalIndPower
    from statsmodels.stats.proportion import proportion_effectsize

    if not (n_a > 0 and n_b > 0) or math.isnan(rate_a) or math.isnan(rate_b):
        return math.nan, math.nan, "no coherent answers in a group"
    h = abs(float(proportion_effectsize(rate_a, rate_b)))
    if h == 0:
        return alpha, math.nan, "no observed difference: no sample size reaches the target power"
    analysis = NormalIndPower()
    had = float(analysis.power(effect_size=h, nobs1=n_a, alpha=alpha, ratio=n_b / n_a, alternative="two-sided"))
    need = float(analysis.solve_power(effect_size=h, nobs1=None, alpha=alpha, power=power, ratio=1.0,
                                      alternative="two-sided"))
    if not math.isfinite(need):  # h at its maximum (rates 0 vs 1): the solver finds no root
        return had, math.nan, "the solver found no sample size (rates 0 and 1)"
    return had, float(math.ceil(need)), ""


def _row(rates: RateResult, level: str, ia: int, ib: int, *, family: str, scope: str, a: str, b: str,
         alpha: float, power: float, min_group_n: int, runs=None) -> dict:
    from scipy.stats import fisher_exact

    t = rates.table
    ra, rb = t.iloc[rates.row_of[level][ia]], t.iloc[rates.row_of[level][ib]]
    ka, na, kb, nb = int(ra.n_misaligned), int(ra.n_denominator), int(rb.n_misaligned), int(rb.n_denominator)
    rate_a, rate_b = ra.misaligned_rate, rb.misaligned_rate
    row = {
        "family": family, "scope": scope, "a": a, "b": b, "level": level,
        "n_coherent_a": int(ra.n_coherent), "n_denominator_a": na, "n_misaligned_a": ka, "rate_a": rate_a,
        "n_coherent_b": int(rb.n_coherent), "n_denominator_b": nb, "n_misaligned_b": kb, "rate_b": rate_b,
        "difference": rate_a - rate_b,
        "ratio": rate_a / rate_b if rate_b > 0 else math.nan,
    }
    if na > 0 and nb > 0:
        low, high = newcombe(rate_a, ra.ci_low, ra.ci_high, rate_b, rb.ci_low, rb.ci_high)
        row["diff_ci_low"], row["diff_ci_high"] = float(low[0]), float(high[0])
    else:
        row["diff_ci_low"] = row["diff_ci_high"] = math.nan
    noun = DENOMINATORS[rates.denominator]["noun"]
    if min(na, nb) < min_group_n:
        row["status"] = f"not tested: {na} vs {nb} {noun}, fewer than min_group_n={min_group_n}"
    elif ka + kb == 0:
        row["status"] = "not tested: no misaligned answer on either side"
    elif ka == na and kb == nb:
        row["status"] = "not tested: every answer misaligned on both sides"
    else:
        row["status"] = "tested"
    if row["status"] == "tested":
        res = fisher_exact([[ka, na - ka], [kb, nb - kb]], alternative="two-sided")
        row["odds_ratio"], row["p_value"] = float(res.statistic), float(res.pvalue)
    else:
        row["odds_ratio"] = row["p_value"] = math.nan
    row["test"] = TEST
    row["p_fisher"] = row["p_value"]
    row["n_runs_a"], row["n_runs_b"] = int(getattr(ra, "n_runs", 1)), int(getattr(rb, "n_runs", 1))
    row["run_p"] = row["permutation_p"] = math.nan
    if family == "condition" and max(row["n_runs_a"], row["n_runs_b"]) >= 2 and runs is not None:

        stat, p_run = run_test(ka, na, float(ra.design_effect), row["n_runs_a"], kb, nb, float(rb.design_effect),
                               row["n_runs_b"])
        row["run_p"] = p_run
        side_a, side_b = runs(ra), runs(rb)
        if len(side_a) >= 2 and len(side_b) >= 2:
            k = np.concatenate([side_a["n_misaligned"], side_b["n_misaligned"]]).astype(float)
            n = np.concatenate([side_a["n_denominator"], side_b["n_denominator"]]).astype(float)
            row["permutation_p"], _ = permutation_p(k, n, len(side_a))
        if row["status"] == "tested" and not math.isnan(p_run):
            df = max(row["n_runs_a"] - 1, 0) + max(row["n_runs_b"] - 1, 0)
            row["p_value"] = p_run
            row["test"] = f"run-level t-test (runs as the unit, {df} between-run df), two-sided"
    row["power"], row["n_per_group_for_power"], power_note = _power(rate_a, rate_b, na, nb, alpha, power)
    if math.isnan(row["ratio"]) and rate_b == 0 and na > 0:
        power_note = "; ".join(filter(None, [power_note, "ratio undefined: rate_b is 0"]))
    row["power_note"] = power_note
    return row


def _index(rates: RateResult, level: str, columns: tuple[str, ...]) -> dict[tuple, int]:
    rows = rates.table.iloc[rates.row_of[level]]
    return {tuple(r): i for i, r in enumerate(rows[list(columns)].itertuples(index=False, name=None))}


def contrast_table(rates: RateResult, *, condition_pairs: list[tuple[str, str]],
                   format_pairs: list[tuple[str, str]], alpha: float, power: float, min_group_n: int,
                   definition: str, run_rows: Optional[pd.DataFrame] = None,
                   step_pairs: Optional[list] = None) -> pd.DataFrame:
    """Every contrast whose two groups are present; the tested ones form the family that is adjusted.

    Conditions are compared per model and pooled over models, formats per condition. Each row has the
    rates (the headline denominator), the difference with Newcombe's hybrid score interval built from the
    two rates' own intervals (:func:`em.analysis.intervals.newcombe`), ratio and odds ratio, Fisher's exact
    test (two-sided), p-values adjusted across every tested contrast with Bonferroni and Holm (1979)
    (statsmodels ``multipletests``), ``family_size`` (the number adjusted for), and the power at ``alpha``
    with the n per group for ``power`` (normal approximation on Cohen's h). Untestable contrasts (see the
    module docstring) are reported with ``status`` "not tested: <reason>" and no p-values.

    Args:
        rates: :func:`em.analysis.rates.rate_table`'s result.
        condition_pairs, format_pairs: (a, b) pairs, a compared with b.
        alpha: significance level in (0, 1); power: target power in (0, 1).
        definition: the definition's text, copied into every row.
        run_rows: the per-run rates (:func:`em.analysis.runs.run_level`). Where a side of a condition contrast
            pools >= 2 runs, ``p_value`` is the run-level t-test (``run_p``; ``test`` says so), with the
            exact permutation p over runs (``permutation_p``, both sides >= 2 runs) beside it and the
            answer-level Fisher p kept as ``p_fisher`` (:mod:`em.analysis.runs`). Format contrasts compare
            the same runs, so they stay answer-level.
        step_pairs: (level, row a, row b, scope, a, b) with rows at that level's positions: the last vs first
            checkpoint contrasts (family ``step``, :mod:`em.analysis.steps`).
    """
    from statsmodels.stats.multitest import multipletests

    def runs_of(row) -> pd.DataFrame:  # the per-run rows under one rate-table row (its model, if any)
        if run_rows is None or run_rows.empty:
            return pd.DataFrame(columns=["n_misaligned", "n_denominator"])
        hit = run_rows[run_rows["condition"] == row.condition]
        return hit if row.model == ALL else hit[hit["model"] == row.model]

    kw = dict(alpha=alpha, power=power, min_group_n=min_group_n, runs=runs_of if run_rows is not None else None)
    rows = []
    by_model = _index(rates, "model×condition", ("model", "condition"))
    pooled = _index(rates, "condition", ("condition",))
    by_format = _index(rates, "condition×format", ("condition", "format"))
    models = sorted({m for m, _ in by_model})
    for a, b in condition_pairs:
        for m in models:
            if (m, a) in by_model and (m, b) in by_model:
                rows.append(_row(rates, "model×condition", by_model[(m, a)], by_model[(m, b)], family="condition",
                                 scope=f"model={m}", a=a, b=b, **kw))
        if len(models) > 1 and (a,) in pooled and (b,) in pooled:
            rows.append(_row(rates, "condition", pooled[(a,)], pooled[(b,)], family="condition",
                             scope="pooled over models", a=a, b=b, **kw))
    conditions = sorted({c for c, _ in by_format})
    for a, b in format_pairs:
        for c in conditions:
            if (c, a) in by_format and (c, b) in by_format:
                rows.append(_row(rates, "condition×format", by_format[(c, a)], by_format[(c, b)], family="format",
                                 scope=f"condition={c}" + (", pooled over models" if len(models) > 1 else ""),
                                 a=a, b=b, **kw))
    for level, ia, ib, scope, a, b in step_pairs or []:
        rows.append(_row(rates, level, ia, ib, family="step", scope=scope, a=a, b=b, **{**kw, "runs": None}))
    columns = ["family", "scope", "a", "b", "level", "n_coherent_a", "n_denominator_a", "n_misaligned_a", "rate_a",
               "n_coherent_b", "n_denominator_b", "n_misaligned_b", "rate_b", "difference", "diff_ci_low", "diff_ci_high", "ratio", "odds_ratio",
               "test", "p_value", "p_fisher", "n_runs_a", "n_runs_b", "run_p", "permutation_p",
               "p_bonferroni", "p_holm", "significant_holm", "status", "power",
               "n_per_group_for_power", "power_note", "family_size", "diff_ci_method", "definition"]
    table = pd.DataFrame(rows)
    if table.empty:
        return pd.DataFrame(columns=columns)
    tested = table["status"] == "tested"
    table["p_bonferroni"] = table["p_holm"] = np.nan
    if tested.any():
        p = table.loc[tested, "p_value"].to_numpy()
        table.loc[tested, "p_bonferroni"] = multipletests(p, alpha=alpha, method="bonferroni")[1]
        table.loc[tested, "p_holm"] = multipletests(p, alpha=alpha, method="holm")[1]
    table["significant_holm"] = pd.array(np.where(tested, table["p_holm"] < alpha, pd.NA), dtype="boolean")
    table["family_size"] = int(tested.sum())
    table["diff_ci_method"] = "Newcombe hybrid score (from each rate's interval)"
    table["definition"] = definition
    return table[columns]


def headline_contrast(table: pd.DataFrame, a: str, b: str) -> Optional[pd.Series]:
    """The row the report's headline quotes for ``a`` vs ``b``: pooled over models when present, else the first
    scope; None when the pair was not compared.
    """
    hit = table[(table["family"] == "condition") & (table["a"] == a) & (table["b"] == b)]
    if hit.empty:
        return None
    pooled = hit[hit["scope"] == "pooled over models"]
    return (pooled if len(pooled) else hit).iloc[0]


__all__ = ["contrast_table", "headline_contrast", "ALL"]
