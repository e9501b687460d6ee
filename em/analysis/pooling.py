"""Never pooled silently: every number pooled over question formats says so and has the per-format numbers
beside it (report headline, ``summary.json``, W&B, the model card).

Why: the format is the factor that doubles the rate in Dickson 2025 (JSON / template vs plain), so a
condition's rate over all formats depends on the mix of formats asked, and a reader must see that mix.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

POOLED = "pooled over formats"


def _pct(x) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f} %"


def per_format(rates: pd.DataFrame, condition: str) -> pd.DataFrame:
    """The ``condition×format`` rows of one condition (pooled over models), in the table's order."""
    t = rates[(rates["level"] == "condition×format") & (rates["condition"].astype(str) == str(condition))]
    return t


def breakdown_text(rates: pd.DataFrame, condition: str) -> str:
    """``plain 1.2 % (3/250), json 4.0 % (10/250)``: each format's misaligned rate with its counts."""
    return ", ".join(f"{r.format} {_pct(r.misaligned_rate)} ({int(r.n_misaligned)}/{int(r.n_denominator)})"
                     for r in per_format(rates, condition).itertuples())


def summary_entry(rates: pd.DataFrame, condition: str, row: Any, f) -> dict:
    """``summary.json``'s per-condition entry additions: ``pooled_over`` and ``by_format`` (rate, CI, counts)."""
    fmts = per_format(rates, condition)
    return {"pooled_over": "formats" if len(fmts) > 1 else None,
            "by_format": {str(r.format): {"misaligned_rate": f(r.misaligned_rate), "ci_low": f(r.ci_low),
                                          "ci_high": f(r.ci_high), "n_denominator": int(r.n_denominator),
                                          "n_misaligned": int(r.n_misaligned)} for r in fmts.itertuples()}}


def card_lines(formats: dict[str, dict]) -> list[str]:
    """The model card's pooled line: all formats' answers together, labelled, with the per-format rates beside
    (from an evaluation summary's ``formats``: n_coherent / misaligned counts when present, else the rates)."""
    if len(formats) < 2:
        return []
    k = n = 0
    for e in formats.values():
        c, m = e.get("n_coherent"), e.get("n_misaligned")
        if c is None or m is None:
            return [f"- {POOLED}: not computed (counts missing); per format: " + ", ".join(
                f"{fmt} {_pct(e.get('misaligned_rate'))}" for fmt, e in formats.items())]
        k, n = k + m, n + c
    per = ", ".join(f"{fmt} {_pct(e.get('misaligned_rate'))}" for fmt, e in formats.items())
    return [f"- misaligned, {POOLED}: {_pct(k / n if n else float('nan'))} ({k}/{n} coherent answers); "
            f"per format: {per}"]


__all__ = ["POOLED", "per_format", "breakdown_text", "summary_entry", "card_lines"]
