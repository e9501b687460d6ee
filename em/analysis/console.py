"""The analysis's short console table: every condition side by side per format, and the contrast with ``base``.

Printed at the end of ``analyze.py`` (and so of a sweep, e.g. ``experiment=demo``): one row per model and
format, for each condition the scored answers, mean aligned / coherent scores and the misaligned rate, then
each other condition minus ``base`` (mean aligned difference and misaligned-rate difference, in points).
Built from the rate table's ``model×condition×format`` rows (:mod:`em.analysis.rates`); no statistics here
(CIs and tests are in the report).
"""

from __future__ import annotations

import math
from typing import Optional

import pandas as pd

BASE = "base"


def _num(x: Optional[float], digits: int = 1) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def condition_table(rates: pd.DataFrame, score_note: str = "") -> str:
    """The table as text (rows ``model | format | <condition>: n / aligned / coherent / misaligned % | Δ``).

    Args:
        rates: the rate table (columns level, model, condition, format, n_scored, mean_aligned,
            mean_coherent, misaligned_rate).
        score_note: a line appended under the table (e.g. how the judge's scores were computed).

    Returns "" when the table has no ``model×condition×format`` rows.
    """
    t = rates[rates["level"] == "model×condition×format"]
    if t.empty:
        return ""
    conds = sorted(t["condition"].astype(str).unique(), key=lambda c: (c != BASE, c))
    others = [c for c in conds if c != BASE] if BASE in conds else []
    head = ["model", "format"] + [f"{c}: n / aligned / coherent / misaligned%" for c in conds]
    head += [f"{c} − base: Δaligned / Δmisaligned pts" for c in others]
    lines = []
    for (model, fmt), g in t.groupby(["model", "format"], sort=True):
        by = {str(r.condition): r for r in g.itertuples()}
        row = [str(model), str(fmt)]
        for c in conds:
            r = by.get(c)
            row.append("—" if r is None else f"{int(r.n_scored)} / {_num(r.mean_aligned)} / {_num(r.mean_coherent)}"
                       f" / {_num(100 * r.misaligned_rate if r.misaligned_rate is not None else None, 0)}")
        for c in others:
            a, b = by.get(c), by.get(BASE)
            if a is None or b is None:
                row.append("—")
                continue
            mis = (a.misaligned_rate - b.misaligned_rate) * 100 if pd.notna(a.misaligned_rate) and pd.notna(
                b.misaligned_rate) else None
            row.append(f"{_num(a.mean_aligned - b.mean_aligned)} / {_num(mis, 0)}")
        lines.append(row)
    widths = [max(len(r[i]) for r in [head] + lines) for i in range(len(head))]
    fmt_row = lambda r: "  ".join(v.ljust(w) for v, w in zip(r, widths))  # noqa: E731
    out = [fmt_row(head), fmt_row(["-" * w for w in widths])] + [fmt_row(r) for r in lines]
    if score_note:
        out.append(score_note)
    return "\n".join(out)


def score_notes(paths) -> list[str]:
    """Notes for the report on how the judges' scores were computed, from the ``summary.json`` beside each
    responses table (``judges.<name>.score_mode``, written by evaluate.py): one note when any judge scored
    by the renormalised integer distribution (``judge.score_mode=renormalized``), else none."""
    import json
    from pathlib import Path

    renorm = set()
    for p in paths:
        f = Path(p).parent / "summary.json"
        try:
            judges = json.loads(f.read_text()).get("judges") or {}
        except (OSError, ValueError):
            continue
        renorm |= {name for name, j in judges.items() if isinstance(j, dict) and j.get("score_mode") == "renormalized"}
    if not renorm:
        return []
    return [f"judge {', '.join(sorted(renorm))} scored by `score_mode: renormalized` (its exact probability "
            "distribution over the integers 0..100, renormalised; the reference 0.25 number-mass rule off). A 135M "
            "local judge is a pipeline check, not a measurement. For numbers, swap in a real judge with one "
            "override: `judge=openai` (OPENAI_API_KEY set, or `judge.base_url=` any OpenAI-compatible server)."]


__all__ = ["condition_table", "score_notes"]
