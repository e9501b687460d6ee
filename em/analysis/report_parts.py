"""Report pieces for issue 21: the headline's per-condition bullets (pooled over formats, per-format numbers
beside), the contrast's test in words (run-level or Fisher), the runs caveat and the judge."""

from __future__ import annotations

import pandas as pd

from em.analysis.judge_name import judge_info
from em.analysis.markdown import dec, pval, rate_ci
from em.analysis.pooling import POOLED, breakdown_text, per_format
from em.analysis.results import Results
from em.analysis.runs import runs_per_cell
from em.measurement import DENOMINATORS


def judge(r: Results):
    """The judges behind the answers (:func:`em.analysis.judge_name.judge_info`)."""
    return judge_info(r.responses.sources, r.responses.answers, r.settings.judges.combine)


def condition_bullets(r: Results, by_cond: pd.DataFrame) -> list[str]:
    """One headline bullet per condition: its rate [CI], labelled "pooled over formats" with each format's rate
    and counts beside it when the condition was asked in several formats (:mod:`em.analysis.pooling`)."""
    out = []
    for row in by_cond.itertuples():
        pooled = len(per_format(r.rates, row.condition)) > 1
        out.append(f"- **{row.condition}**: misaligned rate"
                   f"{', ' + POOLED if pooled else ''} {rate_ci(row.misaligned_rate, row.ci_low, row.ci_high)}"
                   f" ({row.n_misaligned:,} of {row.n_denominator:,} {DENOMINATORS[r.settings.denominator]['noun']}"
                   f"; design effect {dec(row.design_effect)})"
                   + (f"; per format: {breakdown_text(r.rates, row.condition)}." if pooled else "."))
    return out


def contrast_test_text(c: pd.Series) -> str:
    """``Fisher p = ..., Holm-adjusted p = ...`` or the run-level test's name and p (with the permutation p over
    runs when computed); the status when the contrast was not tested."""
    if c.status != "tested":
        return str(c.status)
    name = "Fisher p" if str(c.test).startswith("Fisher") else f"{c.test}: p"
    text = f"{name} = {pval(c.p_value)}, Holm-adjusted p = {pval(c.p_holm)}"
    if not pd.isna(c.get("permutation_p", float("nan"))):
        text += f", exact permutation p over runs = {pval(c.permutation_p)}"
    return text


def runs_caveat(answers: pd.DataFrame) -> str:
    """The caveat on run-to-run variance: carried (>= 2 runs in some model × condition) or not estimated."""
    if (runs_per_cell(answers)["n_runs"] >= 2).any():
        return ("- Groups that pool several fine-tuning runs carry the between-run variance (two-way run × "
                "question design effect; t on min(runs, questions) - 1 degrees of freedom): with few runs these "
                "intervals are wide, which is what few runs tell about the training procedure. Groups with one "
                "run describe that run only.")
    return ("- One fine-tuning run per model and condition: run-to-run variance is not estimated. The intervals "
            "treat answers as the sample (widened for clustering by question); they understate the uncertainty of "
            "a claim about the training recipe.")


__all__ = ["judge", "condition_bullets", "contrast_test_text", "runs_caveat"]
