"""The judges of an analysis, in the report: who judged and how (provenance), agreement per threshold band,
each judge's rate difference against another (or against ``judges.reference``), the judge-vs-judge scatter.

Provenance comes from the responses tables' columns (:data:`em.judge.provenance.COLUMNS`, written by evaluate.py
and the re-judge path); a judge whose rows carry none (another lab's scores) is listed as "not recorded".
The numbers are :mod:`em.analysis.judges`'s. Everything here is drawn only when the inputs hold two or more
judges, except the provenance line, which every report with judge columns carries.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional, Sequence

import pandas as pd

from em.analysis import judges
from em.analysis.ingest import read_table
from em.analysis.report import dec, md_table, num, pct, pval
from em.errors import ConfigError


log = logging.getLogger("em.analysis")

PROVENANCE = ("judge_model", "judge_host", "judge_score_mode", "judge_template_sha", "judged_at")
MODE_TEXT = {"reference": "logprob-weighted", "renormalized": "renormalised integer distribution",
             "sampled": "mean of sampled replies"}


def provenance_table(paths: Sequence[Path]) -> Optional[pd.DataFrame]:
    """One row per judge named in the tables ``paths``: ``judge``, ``rows``, ``model``, ``host``, ``score_mode``,
    ``template_sha`` (distinct hashes, ``;``-joined), ``judged_from`` / ``judged_to`` (UTC dates); "not recorded"
    where a judge's rows carry no provenance. None when no table has a ``judge`` column."""
    parts = []
    for p in paths:
        try:
            df = read_table(Path(p))
        except Exception as e:  # the loader read it already; a second read failing is not worth the analysis
            log.warning("%s: provenance not read (%s)", p, e)
            continue
        if "judge" not in df:
            continue
        cols = ["judge"] + [c for c in PROVENANCE if c in df]
        parts.append(df[cols])
    if not parts:
        return None
    df = pd.concat(parts, ignore_index=True)
    rows = []
    for judge, g in df.groupby(df["judge"].astype(str), sort=True):
        def one(col: str) -> str:
            if col not in g:
                return "not recorded"
            v = sorted({str(x) for x in g[col].dropna()})
            return "; ".join(v) if v else "not recorded"

        dates = pd.to_datetime(g["judged_at"], errors="coerce", utc=True).dropna() if "judged_at" in g else pd.Series([], dtype=object)
        rows.append({"judge": judge, "rows": int(len(g)), "model": one("judge_model"), "host": one("judge_host"),
                     "score_mode": one("judge_score_mode"), "template_sha": one("judge_template_sha"),
                     "judged_from": dates.min().strftime("%Y-%m-%d") if len(dates) else "not recorded",
                     "judged_to": dates.max().strftime("%Y-%m-%d") if len(dates) else "not recorded"})
    return pd.DataFrame(rows)


def judges_line(prov: Optional[pd.DataFrame]) -> Optional[str]:
    """One line naming every judge with its model, host and score mode (the headline and figure footers)."""
    if prov is None or not len(prov):
        return None
    parts = []
    for row in prov.itertuples():
        if row.model == "not recorded" and row.score_mode == "not recorded":
            parts.append(f"{row.judge} (model and mode not recorded)")
            continue
        mode = MODE_TEXT.get(row.score_mode, row.score_mode)
        host = "" if row.host in ("not recorded", "None") else f" at {row.host}"
        parts.append(f"{row.judge} ({row.model}{host}; {row.score_mode}: {mode})")
    return "judged by " + ", ".join(parts)


def judge_extras(judge_scores: Optional[pd.DataFrame], answers: pd.DataFrame, paths: Sequence[Path], definition,
                 *, reference: Optional[str], n_resamples: int, seed: int, confidence: float) -> dict[str, Any]:
    """Everything the report says about the judges: ``provenance`` (table or None), ``line`` (str or None), and
    with two or more judges ``bands`` (:func:`em.analysis.judges.band_agreement`) and ``differences``
    (:func:`em.analysis.judges.rate_differences`, against ``reference`` when set).

    Raises:
        ConfigError: ``reference`` set but not a judge of the inputs (or the inputs hold one judge only).
    """
    prov = provenance_table(paths)
    out: dict[str, Any] = {"provenance": prov, "line": judges_line(prov), "reference": reference}
    n_judges = 0 if judge_scores is None else judge_scores["judge"].nunique()
    if n_judges < 2:
        if reference is not None:
            raise ConfigError(f"judges.reference={reference}: the inputs hold {n_judges} judge(s); a reference "
                              f"needs another judge's scores of the same answers")
        return out
    out["bands"] = judges.band_agreement(judge_scores, definition)
    out["differences"] = judges.rate_differences(judge_scores, answers, definition, reference=reference,
                                                      n_resamples=n_resamples, seed=seed, confidence=confidence)
    return out


def headline(extras: dict[str, Any]) -> list[str]:
    """The report headline's bullet naming the judges, their models and score modes ([] without provenance)."""
    return [f"- Scores {extras['line']}."] if extras.get("line") else []


def markdown(extras: dict[str, Any]) -> str:
    """The report's judge section: provenance, band-wise agreement, rate differences (empty when none)."""
    out = []
    prov = extras.get("provenance")
    if prov is not None and len(prov):
        out.append("\nWho judged (from the responses tables' provenance columns):\n")
        out.append(md_table(prov, {c: (lambda x, c=c: getattr(x, c)) for c in
                                   ("judge", "model", "host", "score_mode", "template_sha", "judged_from", "judged_to")}))
    bands = extras.get("bands")
    if bands is not None and len(bands):
        out.append("\nAgreement per threshold band (band: answers whose two judges' mean score lies in it; κ on the "
                   "score's threshold flag):\n")
        out.append(md_table(bands, {"judges": lambda x: x.judges, "score": lambda x: x.score, "band": lambda x: x.band,
                                    "n": lambda x: num(x.n_units), "α": lambda x: dec(x.krippendorff_alpha),
                                    "κ": lambda x: dec(x.cohens_kappa)}))
    diff = extras.get("differences")
    if diff is not None and len(diff):
        ref = extras.get("reference")
        out.append(f"\n{'Bias against the reference judge `' + ref + '`' if ref else 'Rate differences between judges'}"
                   " (misaligned / coherent, same answers; paired bootstrap over questions):\n")
        out.append(md_table(diff, {"judge": lambda x: x.judge, "against": lambda x: x.against,
                                   "n": lambda x: num(x.n_both), "rate": lambda x: pct(x.rate_1),
                                   "rate (against)": lambda x: pct(x.rate_2),
                                   "difference [95% CI]": lambda x: f"{pct(x.difference)} [{pct(x.ci_low)}, {pct(x.ci_high)}]",
                                   "McNemar p": lambda x: pval(x.mcnemar_p)}))
    return "\n".join(out) + ("\n" if out else "")
