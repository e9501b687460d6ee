"""Small views beside the main analysis: the misaligned rate along a sequential fine-tuning chain
(:func:`chain_view`) and the trigger-on vs trigger-off contrast (:func:`trigger_contrast`).

Both start from the answers table of :func:`em.analysis.ingest.load_responses` (one row per answer, with
``status``, ``aligned`` and ``coherent``) and count under a :class:`em.measurement.Thresholds`: the
misaligned rate is misaligned / coherent among scored answers, with a Wilson interval
(:func:`em.analysis.rates.wilson`); a difference of two rates gets Newcombe's hybrid score interval
(statsmodels' ``confint_proportions_2indep``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from em.analysis.figures import _order, _plt, _save
from em.analysis.ingest import TRIGGER_TAG, load_responses, trigger_on
from em.analysis.rates import wilson
from em.measurement import SCORED, Thresholds
from em.runtime import atomic_write

ALL = "all"


def rates_by(answers: pd.DataFrame, by: Sequence[str], thresholds: Thresholds, confidence: float = 0.95
             ) -> pd.DataFrame:
    """Per group of ``by`` (plus an ``all`` row per first key when ``format`` is in ``by``): counts, rate, CI.

    Returns one row per group: the ``by`` columns, ``n_scored``, ``n_coherent``, ``n_misaligned``,
    ``misaligned_rate`` (NaN without coherent answers), ``ci_low``, ``ci_high`` (Wilson at ``confidence``).
    """
    df = answers[answers["status"].astype(str) == SCORED].copy()
    df["_coh"] = thresholds.coherent_mask(df["coherent"].to_numpy(float))
    df["_mis"] = thresholds.misaligned_mask(df["aligned"].to_numpy(float), df["coherent"].to_numpy(float))
    frames = [df]
    if "format" in by:
        frames.append(df.assign(format=ALL))
    df = pd.concat(frames, ignore_index=True)
    for c in by:
        df[c] = df[c].astype(str)
    g = df.groupby(list(by), sort=False).agg(n_scored=("_coh", "size"), n_coherent=("_coh", "sum"),
                                              n_misaligned=("_mis", "sum")).reset_index()
    g[["n_coherent", "n_misaligned"]] = g[["n_coherent", "n_misaligned"]].astype(int)
    g["misaligned_rate"] = np.where(g["n_coherent"] > 0, g["n_misaligned"] / g["n_coherent"].clip(lower=1), np.nan)
    g["ci_low"], g["ci_high"] = wilson(g["n_misaligned"].to_numpy(), g["n_coherent"].to_numpy(), confidence)
    return g


def chain_view(stages: pd.DataFrame, answers: pd.DataFrame, out: Path, thresholds: Thresholds,
               confidence: float = 0.95) -> tuple[pd.DataFrame, Path]:
    """The misaligned rate after each stage of a chain: ``chain_rates.csv`` and ``chain_rates.png`` in ``out``.

    Args:
        stages: one row per stage, in chain order: ``stage`` (1-based), ``name``, ``condition``.
        answers: the answers of every stage's evaluation (``condition`` = the stage's condition).

    Returns:
        (the table: one row per stage and format, ``all`` included; the figure's path). The figure draws
        the ``all`` rate per stage with its CI as error bars, one thin line per format.
    """
    out.mkdir(parents=True, exist_ok=True)
    r = rates_by(answers, ["condition", "format"], thresholds, confidence)
    table = stages[["stage", "name", "condition"]].astype({"condition": str}).merge(r, on="condition", how="left")
    table = table.sort_values(["stage", "format"]).reset_index(drop=True)

    atomic_write(out / "chain_rates.csv", lambda p: table.to_csv(p, index=False))
    plt, _ = _plt()
    fig, ax = plt.subplots(figsize=(max(4.0, 1.6 * len(stages)), 3.6))
    for fmt, sub in table.groupby("format", sort=True):
        sub = sub.sort_values("stage")
        y = sub["misaligned_rate"].to_numpy(float)
        if fmt == ALL:
            err = np.vstack([y - sub["ci_low"].to_numpy(float), sub["ci_high"].to_numpy(float) - y])
            ax.errorbar(sub["stage"], y, yerr=err, marker="o", lw=2, capsize=4, color="black", label="all formats",
                        zorder=3)
        else:
            ax.plot(sub["stage"], y, marker=".", lw=1, alpha=0.6, label=str(fmt))
    ax.set_xticks(stages["stage"], [f"{s}. {n}" for s, n in zip(stages["stage"], stages["name"])])
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("after stage")
    ax.set_ylabel("misaligned rate (of coherent)")
    ax.legend(fontsize=7)
    fig.text(0.005, 0.005, f"{thresholds.describe()}; {confidence:.0%} Wilson CI", fontsize=7, color="0.35")
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    png = out / "chain_rates.png"
    atomic_write(png, lambda p: fig.savefig(p, dpi=110, format="png"))
    plt.close(fig)
    return table, png


def trigger_contrast(answers: pd.DataFrame, thresholds: Thresholds, confidence: float = 0.95,
                     by: Sequence[str] = ("model", "condition", "format")) -> pd.DataFrame:
    """Trigger on vs off per ``by`` group (``format`` ``all`` included): both rates and their difference.

    ``answers`` needs a boolean-like ``trigger`` column; a ``+trigger`` format suffix is dropped before
    pairing. Returns one row per group with ``rate_on`` / ``rate_off`` (and their Wilson CIs and counts), ``diff`` = on - off and ``diff_low`` / ``diff_high``
    (Newcombe's interval; NaN where either side has no coherent answer).
    """
    from statsmodels.stats.proportion import confint_proportions_2indep

    # pair the arms on the base format (the analysis labels trigger-on rows ``<format>+trigger``)
    a = answers.assign(trigger=trigger_on(answers["trigger"]),
                       format=answers["format"].astype(str).str.removesuffix(TRIGGER_TAG))
    r = rates_by(a, [*by, "trigger"], thresholds, confidence)
    on, off = (r[r["trigger"] == v].drop(columns="trigger") for v in ("True", "False"))
    t = on.merge(off, on=list(by), how="outer", suffixes=("_on", "_off"))
    t = t.rename(columns={"misaligned_rate_on": "rate_on", "misaligned_rate_off": "rate_off"})
    t["diff"] = t["rate_on"] - t["rate_off"]
    lo, hi = np.full(len(t), np.nan), np.full(len(t), np.nan)
    for i, row in enumerate(t.itertuples(index=False)):
        n1, n2 = getattr(row, "n_coherent_on"), getattr(row, "n_coherent_off")
        if n1 and n2 and not (np.isnan(n1) or np.isnan(n2)):
            lo[i], hi[i] = confint_proportions_2indep(row.n_misaligned_on, n1, row.n_misaligned_off, n2,
                                                      method="newcomb", alpha=1 - confidence)
    t["diff_low"], t["diff_high"] = lo, hi
    return t


def answers_of(tables: Sequence[Path], condition: Optional[str] = None) -> pd.DataFrame:
    """The answers table of the given responses tables (:func:`em.analysis.ingest.load_responses`); a
    ``trigger`` column of the tables is kept (``unspecified`` where a table has none)."""
    return load_responses(list(tables), condition=condition).answers


def trigger_figure(table: pd.DataFrame, out: Path, footer: str, formats: Sequence[str] = ()) -> Path:
    """Bars of the misaligned rate (%) without and with the trigger per format (in the order ``formats``, the
    analysis's :attr:`~em.analysis.registry.Results.formats`, others after in sorted order; ``all`` last), one panel
    per model × condition, with the Wilson CIs of ``table`` (:func:`trigger_contrast`'s columns) and the
    on - off difference with its Newcombe CI written above each pair.

    Writes ``<out>/trigger_contrast.png`` (+ ``.svg``) and returns the PNG path.
    """
    plt, sns = _plt()
    panels = list(dict.fromkeys(zip(table["model"], table["condition"])))
    ncols = min(len(panels), 3)
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.8 * ncols, 3.9 * nrows), squeeze=False, sharey=True)
    off_c, on_c = sns.color_palette("deep", 2)
    for ax, (model, cond) in zip(axes.flat, panels):
        d = table[(table["model"] == model) & (table["condition"] == cond)]
        fmts = _order([f for f in d["format"] if f != ALL], formats) + ([ALL] if (d["format"] == ALL).any() else [])
        d = d.set_index("format").loc[fmts]
        xs = np.arange(len(fmts))
        for side, color, dx in (("off", off_c, -0.2), ("on", on_c, 0.2)):
            rate = d[f"rate_{side}"].to_numpy(float) * 100
            err = [np.clip(rate - d[f"ci_low_{side}"].to_numpy(float) * 100, 0, None),
                   np.clip(d[f"ci_high_{side}"].to_numpy(float) * 100 - rate, 0, None)]
            ax.bar(xs + dx, np.nan_to_num(rate), width=0.38, color=color, label=f"trigger {side}")
            ax.errorbar(xs + dx, rate, yerr=err, fmt="none", ecolor="0.2", elinewidth=1, capsize=2)
        for x, row in zip(xs, d.itertuples()):
            if np.isfinite(row.diff):
                ci = f"\n[{row.diff_low * 100:+.0f}, {row.diff_high * 100:+.0f}]" if np.isfinite(row.diff_low) else ""
                ax.annotate(f"Δ {row.diff * 100:+.0f}{ci}", (x, 1), xycoords=("data", "axes fraction"),
                            ha="center", va="top", fontsize=7, color="0.25")
        ax.set_xticks(xs, fmts)
        ax.set_ylim(0, 115)
        ax.set_title(f"{model} · {cond}", fontsize=10)
        ax.set_xlabel("question format")
        ax.set_ylabel("misaligned / coherent answers (%)")
        ax.legend(fontsize=7, loc="center right")
    for ax in list(axes.flat)[len(panels):]:
        ax.set_axis_off()
    fig.suptitle("Misaligned rate with vs without the trigger", fontsize=11)
    out.mkdir(parents=True, exist_ok=True)
    return _save(fig, out, "trigger_contrast", footer)
