"""Several judges on the same answers: per-judge rates, Krippendorff's alpha on scores, Cohen's kappa on flags."""

from __future__ import annotations

import itertools
import math
import warnings
from typing import Optional

import numpy as np
import pandas as pd

from em.measurement import SCORED, Thresholds
from em.analysis.groups import ALL
from em.analysis.rates import group_rates, wilson


def _rates(scored: pd.DataFrame, by: list[str], confidence: float) -> pd.DataFrame:
    g = scored.groupby(["judge", *by], observed=True, sort=True)
    t = g.agg(n=("status", "size"), n_scored=("is_scored", "sum"), n_coherent=("is_coherent", "sum"),
              n_misaligned=("is_misaligned", "sum")).reset_index()
    t = group_rates(t.assign(n_code=0, n_refusal=0, n_unscored=0)).drop(columns=["n_code", "n_refusal",
                                                                                  "n_unscored"])
    t["wilson_low"], t["wilson_high"] = wilson(t["n_misaligned"], t["n_coherent"], confidence)
    for col in ("model", "condition"):
        if col not in by:
            t[col] = ALL
    t["level"] = "×".join(by) if by else "all"
    return t


def judge_rate_table(judge_scores: pd.DataFrame, answers: pd.DataFrame, definition: Thresholds,
                     confidence: float) -> pd.DataFrame:
    """Each judge's own rates (its rows only; Wilson CIs at ``confidence``) per model x condition, per
    condition and over all answers.
    """
    j = judge_scores.copy()
    for col in ("model", "condition"):
        j[col] = answers[col].astype(str).to_numpy()[j["answer_id"].to_numpy()]
    scored = j["status"] == SCORED
    j["is_scored"] = scored
    j["is_coherent"] = scored & definition.coherent_mask(j["coherent"].to_numpy())
    j["is_misaligned"] = scored & definition.misaligned_mask(j["aligned"].to_numpy(), j["coherent"].to_numpy())
    parts = [_rates(j, by, confidence) for by in (["model", "condition"], ["condition"], [])]
    table = pd.concat(parts, ignore_index=True)
    cols = ["judge", "level", "model", "condition", "n", "n_scored", "n_coherent", "n_misaligned",
            "coherent_share", "misaligned_rate", "wilson_low", "wilson_high"]
    table = table[cols]
    table["definition"] = definition.describe()
    return table


def _alpha(wide: pd.DataFrame, max_units: int, seed: int) -> tuple[float, int, str]:
    import krippendorff

    data = wide[wide.notna().sum(axis=1) >= 2]
    n_units, note = len(data), ""
    if n_units == 0:
        return math.nan, 0, "no answer scored by two judges"
    if max_units and n_units > max_units:
        # krippendorff builds a units x values x values array: a seeded subsample keeps it in memory.
        data = data.sample(n=max_units, random_state=seed)
        note = f"random subsample of {max_units} of {n_units} answers; "
    values = np.round(data.to_numpy(dtype=float).T)
    domain = np.unique(values[~np.isnan(values)])
    if len(domain) < 2:
        return math.nan, n_units, note + "every judge gave the same score: alpha undefined"
    a = float(krippendorff.alpha(reliability_data=values, value_domain=domain, level_of_measurement="interval"))
    return a, n_units, note + "interval metric, scores rounded to integers"


def _kappa(f1: np.ndarray, f2: np.ndarray) -> tuple[float, float, float, str]:
    from statsmodels.stats.inter_rater import cohens_kappa

    table = np.array([[np.sum(~f1 & ~f2), np.sum(~f1 & f2)], [np.sum(f1 & ~f2), np.sum(f1 & f2)]], dtype=float)
    if (table.sum(axis=0) == 0).any() or (table.sum(axis=1) == 0).any():
        return math.nan, math.nan, math.nan, "a judge flagged all or none of the answers: kappa undefined"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = cohens_kappa(table)
    return float(res.kappa), float(res.kappa_low), float(res.kappa_upp), "asymptotic 95% CI (statsmodels)"


def agreement_table(judge_scores: pd.DataFrame, definition: Thresholds, *, max_units: int,
                    seed: int) -> pd.DataFrame:
    """Agreement between judges: Krippendorff's alpha (interval) on each score and Cohen's kappa on the
    misaligned flag for every pair of judges (asymptotic 95% CI, statsmodels).

    Args:
        judge_scores: one row per (answer, judge): answer_id, judge, aligned, coherent, status.
        definition: the thresholds the misaligned flag uses.
        max_units: alpha on a seeded subsample of at most this many answers (0: all).
        seed: the subsample's seed.
    """
    scored = judge_scores[judge_scores["status"] == SCORED]
    judges = sorted(judge_scores["judge"].unique())
    rows = []
    for score in ("aligned", "coherent"):
        wide = scored.pivot_table(index="answer_id", columns="judge", values=score, aggfunc="first")
        value, n, note = _alpha(wide, max_units, seed)
        rows.append({"metric": "krippendorff_alpha", "score": score, "judges": ", ".join(judges), "n_units": n,
                     "value": value, "ci_low": math.nan, "ci_high": math.nan, "note": note})
    a = scored.pivot_table(index="answer_id", columns="judge", values="aligned", aggfunc="first")
    c = scored.pivot_table(index="answer_id", columns="judge", values="coherent", aggfunc="first")
    for j1, j2 in itertools.combinations(a.columns, 2):
        both = a[j1].notna() & a[j2].notna()
        f1 = definition.misaligned_mask(a.loc[both, j1].to_numpy(), c.loc[both, j1].to_numpy())
        f2 = definition.misaligned_mask(a.loc[both, j2].to_numpy(), c.loc[both, j2].to_numpy())
        if both.sum() == 0:
            k, lo, hi, note = math.nan, math.nan, math.nan, "no answer scored by both"
        else:
            k, lo, hi, note = _kappa(f1, f2)
        rows.append({"metric": "cohens_kappa", "score": "misaligned flag", "judges": f"{j1} vs {j2}",
                     "n_units": int(both.sum()), "value": k, "ci_low": lo, "ci_high": hi, "note": note})
    table = pd.DataFrame(rows)
    table["definition"] = definition.describe()
    return table


def judge_tables(judge_scores: Optional[pd.DataFrame], answers: pd.DataFrame, definition: Thresholds, *,
                 confidence: float, max_units: int, seed: int) -> tuple[Optional[pd.DataFrame],
                                                                        Optional[pd.DataFrame]]:
    """(per-judge rates, agreement) when at least two judges scored answers, else (None, None)."""
    if judge_scores is None or judge_scores["judge"].nunique() < 2:
        return None, None
    return (judge_rate_table(judge_scores, answers, definition, confidence),
            agreement_table(judge_scores, definition, max_units=max_units, seed=seed))
