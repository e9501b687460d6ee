"""The analysis's short console table: every condition side by side per format, and the contrast with ``base``.

Printed at the end of ``analyze.py`` (and so of a sweep, e.g. ``experiment=demo``): one row per model and
format, for each condition the scored answers, mean aligned / coherent scores and the misaligned rate, then
each other condition minus ``base`` (mean aligned difference and misaligned-rate difference, in points).
Built from the rate table's ``model×condition×format`` rows (:mod:`em.analysis.rates`); no statistics here
(CIs and tests are in the report).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import pandas as pd

from em.config.analysis import ContrastsConfig


def _num(x: Optional[float], digits: int = 1) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _pct(x: Optional[float]) -> str:
    """A percentage (or a difference in points) readable at the field's scale: rare events live at 0.07-0.96 %,
    so under 1 (in absolute value) two significant digits (``0.41``, ``0.069``), else one decimal (``12.5``)."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    if x == 0:
        return "0"
    return f"{x:.2g}" if abs(x) < 1 else f"{x:.1f}"


def _misaligned(r) -> str:
    """``0.41 (3/723)``: the misaligned % with its count k / denominator n when the rate table has them."""
    rate = r.misaligned_rate
    pct = _pct(100 * rate if rate is not None and pd.notna(rate) else None)
    k, n = getattr(r, "n_misaligned", None), getattr(r, "n_denominator", None)
    if k is None or n is None or pd.isna(k) or pd.isna(n):
        return pct
    return f"{pct} ({int(k)}/{int(n)})"


def condition_table(rates: pd.DataFrame, score_note: str = "", reference: Optional[str] = None,
                    judge: str = "", formats: Sequence[str] = ()) -> str:
    """The table as text (rows ``model | format | <condition>: n / aligned / coherent / misaligned % | Δ``).

    The misaligned % has two significant digits under 1 % (``0.41``), one decimal above, and the count
    beside it (``0.41 (3/723)``: misaligned / the rate's denominator) when ``rates`` has ``n_misaligned`` and
    ``n_denominator``; the Δ in points is written the same way.

    Args:
        rates: the rate table (columns level, model, condition, format, n_scored, mean_aligned,
            mean_coherent, misaligned_rate; optional n_misaligned, n_denominator).
        score_note: a line appended under the table (e.g. how the judge's scores were computed).
        reference: the condition the others are compared with (``contrasts.reference``; None: its default).
        judge: the judge's label (``judge: <name>``), printed above the table (:mod:`em.analysis.judge_report`).
        formats: the rows' format order (the analysis's :attr:`~em.analysis.registry.Results.formats`; others
            after, alphabetically). Conditions: the reference first, then alphabetically.

    Returns "" when the table has no ``model×condition×format`` rows.
    """
    t = rates[rates["level"] == "model×condition×format"]
    if t.empty:
        return ""
    if reference is None:

        reference = ContrastsConfig.reference
    BASE = reference  # noqa: N806
    fpos = {f: i for i, f in enumerate(formats)}
    conds = sorted(t["condition"].astype(str).unique(), key=lambda c: (c != BASE, c))
    others = [c for c in conds if c != BASE] if BASE in conds else []
    counts = " (k/n)" if {"n_misaligned", "n_denominator"} <= set(t.columns) else ""
    head = ["model", "format"] + [f"{c}: n / aligned / coherent / misaligned%{counts}" for c in conds]
    head += [f"{c} − {BASE}: Δaligned / Δmisaligned pts" for c in others]
    lines = []
    groups = t.groupby(["model", "format"], sort=True)
    for (model, fmt), g in sorted(groups, key=lambda kv: (str(kv[0][0]), fpos.get(str(kv[0][1]), len(fpos)),
                                                          str(kv[0][1]))):
        by = {str(r.condition): r for r in g.itertuples()}
        row = [str(model), str(fmt)]
        for c in conds:
            r = by.get(c)
            row.append("—" if r is None else f"{int(r.n_scored)} / {_num(r.mean_aligned)} / {_num(r.mean_coherent)}"
                       f" / {_misaligned(r)}")
        for c in others:
            a, b = by.get(c), by.get(BASE)
            if a is None or b is None:
                row.append("—")
                continue
            mis = (a.misaligned_rate - b.misaligned_rate) * 100 if pd.notna(a.misaligned_rate) and pd.notna(
                b.misaligned_rate) else None
            row.append(f"{_num(a.mean_aligned - b.mean_aligned)} / {_pct(mis)}")
        lines.append(row)
    widths = [max(len(r[i]) for r in [head] + lines) for i in range(len(head))]
    fmt_row = lambda r: "  ".join(v.ljust(w) for v, w in zip(r, widths))  # noqa: E731
    out = [fmt_row(head), fmt_row(["-" * w for w in widths])] + [fmt_row(r) for r in lines]
    if judge:
        out.insert(0, judge)
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
