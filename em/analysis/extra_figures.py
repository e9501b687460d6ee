"""Figures drawn only when the data have the dimension they show: the per-run dot plot (>= 2 training runs in a
model × condition, :mod:`em.analysis.runs`) and the rate-vs-step curve (a checkpoint ``step`` dimension,
:mod:`em.analysis.steps`). Captions: :data:`em.analysis.figures.CAPTIONS`."""

from __future__ import annotations

import numpy as np
import pandas as pd

from em.analysis.figures import _model_order, _rate_label
from em.analysis.results import Results


def runs_figure(r: Results, plt, sns, conditions: list[str]):
    """Per model × condition (x): each run's rate (dots, with its CI) and the pooled rate (bar, two-way CI)."""
    from em.analysis.runs import RUN_LEVEL

    runs = r.rates[r.rates["level"] == RUN_LEVEL]
    pooled = r.level("model×condition")
    models = _model_order(pooled)
    groups = [(m, c) for m in models for c in conditions
              if ((pooled["model"] == m) & (pooled["condition"] == c)).any()]
    fig, ax = plt.subplots(figsize=(max(6, 1.2 + 1.1 * len(groups)), 4.4))
    palette = dict(zip(conditions, sns.color_palette("deep", max(1, len(conditions)))))
    for x, (m, c) in enumerate(groups):
        p = pooled[(pooled["model"] == m) & (pooled["condition"] == c)].iloc[0]
        rate = 100 * float(p.misaligned_rate) if pd.notna(p.misaligned_rate) else np.nan
        ax.bar(x, np.nan_to_num(rate), width=0.6, color=palette[c], alpha=0.35)
        if np.isfinite(rate):
            ax.errorbar(x, rate, yerr=[[max(rate - 100 * p.ci_low, 0)], [max(100 * p.ci_high - rate, 0)]],
                        fmt="none", ecolor="0.2", capsize=4, lw=1.2)
        mine = runs[(runs["model"] == m) & (runs["condition"] == c)]
        if len(mine):
            xs = x + np.linspace(-0.18, 0.18, len(mine))
            rr = 100 * mine["misaligned_rate"].to_numpy(float)
            err = [np.clip(rr - 100 * mine["ci_low"].to_numpy(float), 0, None),
                   np.clip(100 * mine["ci_high"].to_numpy(float) - rr, 0, None)]
            ax.errorbar(xs, rr, yerr=err, fmt="o", ms=5, color=palette[c], ecolor=palette[c], elinewidth=0.8,
                        capsize=2, markeredgecolor="black", markeredgewidth=0.5)
    ax.set_xticks(range(len(groups)), [f"{m}\n{c} ({int(((runs['model'] == m) & (runs['condition'] == c)).sum())}"
                                       " runs)" for m, c in groups], fontsize=8)
    ax.set_ylabel(_rate_label(pooled))
    ax.set_ylim(bottom=0)
    ax.set_title("Misaligned rate per fine-tuning run (dots) and pooled over runs (bars)")
    return fig


def rate_vs_step_figure(r: Results, plt, sns, conditions: list[str]):
    """Misaligned rate (%) against the checkpoint's optimizer step, one line per model × condition, with CIs."""
    from em.analysis.steps import STEP_LEVEL

    d = r.rates[r.rates["level"] == STEP_LEVEL].copy()
    d["step_n"] = pd.to_numeric(d["step"], errors="coerce")
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    palette = sns.color_palette("deep", max(1, d.groupby(["model", "condition"]).ngroups))
    for i, ((m, c), g) in enumerate(d.groupby(["model", "condition"], sort=True)):
        g = g.sort_values("step_n")
        rate = 100 * g["misaligned_rate"].to_numpy(float)
        err = [np.clip(rate - 100 * g["ci_low"].to_numpy(float), 0, None),
               np.clip(100 * g["ci_high"].to_numpy(float) - rate, 0, None)]
        ax.errorbar(g["step_n"], rate, yerr=err, marker="o", ms=4, capsize=2, lw=1.2, color=palette[i],
                    label=f"{m} · {c}")
    ax.set_xlabel("optimizer step of the checkpoint")
    ax.set_ylabel(_rate_label(d) if len(d) else "misaligned (%)")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=7)
    ax.set_title("Misaligned rate vs training step")
    return fig


def extra_figures(r: Results, plt, sns, conditions: list[str]) -> dict:
    """name -> Matplotlib figure, for the dimensions present (none when neither is)."""
    from em.analysis.runs import RUN_LEVEL
    from em.analysis.steps import STEP_LEVEL

    out = {}
    levels = set(r.rates["level"].unique())
    if RUN_LEVEL in levels:
        out["runs"] = runs_figure(r, plt, sns, conditions)
    if STEP_LEVEL in levels:
        out["rate_vs_step"] = rate_vs_step_figure(r, plt, sns, conditions)
    return out


