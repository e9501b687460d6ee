"""Seaborn figures (PNG + SVG). Each figure says which definition it uses; a figure with nothing to show
still exists and says why, so the report never has a hole in it."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from em.analysis.groups import ALL
from em.analysis.judge_name import judge_info
from em.analysis.registry import Results
from em.analysis.runs import RUN_LEVEL
from em.analysis.sensitivity import check_summary
from em.analysis.steps import STEP_LEVEL
from em.runtime import atomic_write


log = logging.getLogger(__name__)

FIGURES = ("rates_by_model_condition", "format_comparison", "coherence_vs_alignment", "sensitivity_heatmap",
           "scaling")
CAPTIONS = {
    "rates_by_model_condition": "Misaligned rate by model and condition (all formats and questions pooled), "
                                "with 95% CIs.",
    "format_comparison": "Misaligned rate by question format and condition (pooled over models), with 95% CIs.",
    "coherence_vs_alignment": "Judge scores of every scored answer (answer level): coherence vs alignment, with "
                              "the thresholds; answers in the outlined corner are counted as misaligned.",
    "sensitivity_heatmap": "Misaligned rate (%) per condition over the threshold grid (pooled over models); the "
                           "last panel counts the ordering checks that hold. The box marks the configured "
                           "thresholds.",
    "scaling": "Misaligned rate vs parameter count, per model family (parameter counts from the model configs), with 95% CIs.",
    # drawn outside make_figures, only when their inputs exist (em.analysis.views / em.analysis.capability)
    "trigger_contrast": "Misaligned rate (misaligned / coherent) without and with the trigger, per question format "
                        "(all formats pooled last), one panel per model × condition, with Wilson CIs; Δ = on − off "
                        "in points with Newcombe's interval (trigger_contrast.csv).",
    "judge_scatter": "Judge vs judge scores of the same answers (aligned, coherent), with the thresholds (dashed) "
                     "and the band around each (shaded) where agreement is reported separately.",
    "runs": "Misaligned rate of each fine-tuning run (dots, with the run's question-clustered 95% CI) and the rate "
            "pooled over the runs (bar, with the interval that carries the between-run variance), per model × "
            "condition (all formats pooled).",
    "rate_vs_step": "Misaligned rate per training checkpoint (optimizer step), one line per model × condition, with "
                    "95% CIs (all formats pooled).",
    "capability_vs_misalignment": "Misaligned rate (y, with its CI) vs capability delta = adapter - base score (x, "
                                  "paired per-document CI), one point per model × condition, one panel per task.",
}
MAX_SCATTER = 20_000


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="notebook")
    return plt, sns


def _order(values, preferred) -> list[str]:
    values = [v for v in dict.fromkeys(values) if v != ALL]
    head = [p for p in preferred if p in values]
    return head + sorted(v for v in values if v not in head)


def _model_order(rates: pd.DataFrame) -> list[str]:
    g = rates.drop_duplicates("model")
    g = g.assign(_p=g["params"].fillna(np.inf), _f=g["family"].fillna("~"))
    return [m for m in g.sort_values(["_f", "_p", "model"])["model"] if m != ALL]


def _rate_label(df: pd.DataFrame) -> str:
    """The rate axis' label, naming the headline denominator of the rates drawn."""
    den = df["denominator"].iloc[0] if "denominator" in df and len(df) else "coherent"
    return f"misaligned / {den} answers (%)"


def _bars(ax, df: pd.DataFrame, x: str, hue: str, x_order: list[str], hue_order: list[str], palette) -> None:
    width = 0.8 / max(1, len(hue_order))
    pos = {v: i for i, v in enumerate(x_order)}
    for j, h in enumerate(hue_order):
        d = df[df[hue] == h]
        xs = np.array([pos[v] for v in d[x]]) - 0.4 + width * (j + 0.5)
        rate = d["misaligned_rate"].to_numpy(dtype=float) * 100
        low = np.clip(rate - d["ci_low"].to_numpy(dtype=float) * 100, 0, None)
        high = np.clip(d["ci_high"].to_numpy(dtype=float) * 100 - rate, 0, None)
        ax.bar(xs, np.nan_to_num(rate), width=width * 0.95, color=palette[j], label=h)
        ax.errorbar(xs, rate, yerr=[low, high], fmt="none", ecolor="0.2", elinewidth=1, capsize=2)
    ax.set_xticks(range(len(x_order)), x_order, rotation=30 if len(x_order) > 4 else 0, ha="right"
                  if len(x_order) > 4 else "center")
    ax.set_ylabel(_rate_label(df))
    ax.set_ylim(bottom=0)


def _empty(ax, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", wrap=True, transform=ax.transAxes)
    ax.set_axis_off()


def _save(fig, out: Path, name: str, footer: str) -> Path:
    fig.text(0.005, 0.005, footer, fontsize=7, color="0.35", ha="left", va="bottom")
    fig.tight_layout(rect=(0, 0.035, 1, 1))
    png = out / f"{name}.png"

    atomic_write(png, lambda p: fig.savefig(p, dpi=110, format="png"))
    atomic_write(out / f"{name}.svg", lambda p: fig.savefig(p, format="svg"))
    import matplotlib.pyplot as plt

    plt.close(fig)
    return png


def rates_by_model_condition(r: Results, plt, sns, conditions: list[str]):
    """Bar chart: misaligned rate (%) with CI per model (x) and condition (hue); a Matplotlib figure."""
    d = r.level("model×condition")
    d = d[d["n_coherent"] > 0]
    models = _model_order(d)
    fig, ax = plt.subplots(figsize=(max(6, 1.0 + 0.9 * len(models) * max(1, len(conditions)) / 2.5), 4.2))
    if d.empty:
        _empty(ax, "no coherent answers in any group")
        return fig
    hue = [c for c in conditions if c in set(d["condition"])]
    _bars(ax, d, "model", "condition", models, hue, sns.color_palette("deep", len(hue)))
    ax.set_xlabel("model")
    ax.legend(title="condition", fontsize=8)
    ax.set_title("Misaligned rate by model × condition")
    return fig


def format_comparison(r: Results, plt, sns, conditions: list[str]):
    """Bar chart: misaligned rate (%) with CI per question format (x) and condition (hue), pooled over models."""
    d = r.level("condition×format")
    d = d[d["n_coherent"] > 0]
    formats = _order(d["format"], r.formats)
    fig, ax = plt.subplots(figsize=(max(5, 1.5 + 1.4 * len(formats)), 4.2))
    if d.empty:
        _empty(ax, "no coherent answers in any group")
        return fig
    hue = [c for c in conditions if c in set(d["condition"])]
    _bars(ax, d, "format", "condition", formats, hue, sns.color_palette("deep", len(hue)))
    ax.set_xlabel("question format")
    ax.legend(title="condition", fontsize=8)
    ax.set_title("Misaligned rate by question format")
    return fig


def coherence_vs_alignment(r: Results, plt, sns, conditions: list[str]):
    """Scores of every scored answer (coherent on x, aligned on y, 0-100) per condition, with the thresholds
    and the misaligned corner outlined; hexbin with log counts above MAX_SCATTER answers.
    """
    cells, d = r.cells, r.settings.thresholds
    scored = ~np.isnan(cells.aligned)
    cond_of_cell = cells.keys["condition"].to_numpy()[cells.code]
    present = [c for c in conditions if c in set(cond_of_cell[scored])]
    n = max(1, len(present))
    ncols = min(n, 3)
    nrows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.9 * nrows), squeeze=False, sharex=True,
                             sharey=True)
    if not present:
        _empty(axes[0, 0], "no scored answers")
        return fig
    hexbin = scored.sum() > MAX_SCATTER  # one kind of plot for every panel, so they read alike
    for ax, cond in zip(axes.flat, present):
        m = scored & (cond_of_cell == cond)
        x, y = cells.coherent[m], cells.aligned[m]
        if hexbin:
            # rasterized: the SVG embeds the hexagons as one image instead of thousands of paths
            ax.hexbin(x, y, gridsize=35, extent=(0, 100, 0, 100), bins="log", mincnt=1, cmap="viridis",
                      linewidths=0, rasterized=True)
        else:
            ax.scatter(x, y, s=6, alpha=0.35, linewidths=0, color=sns.color_palette("deep")[0], rasterized=True)
        ax.axvline(d.coherent, color="crimson", lw=1.2, ls="--")
        ax.axhline(d.aligned, color="crimson", lw=1.2, ls="--")
        ax.add_patch(plt.Rectangle((d.coherent, 0), 100 - d.coherent, d.aligned, fill=False, edgecolor="crimson",
                                   lw=1.5, zorder=3))
        ax.set_xlim(0, 100)
        ax.set_ylim(0, 100)
        ax.set_title(f"{cond} (n={int(m.sum()):,})", fontsize=10)
        ax.set_xlabel("coherent")
        ax.set_ylabel("aligned")
    for ax in list(axes.flat)[len(present):]:
        ax.set_axis_off()
    fig.suptitle("Coherence vs alignment (answer level)" + (" — hexbin, log counts" if hexbin else ""), fontsize=11)
    return fig


def sensitivity_heatmap(r: Results, plt, sns, conditions: list[str]):
    """Heatmaps of the misaligned rate (%) over the threshold grid, one per condition, plus one panel of
    ordering checks holding per grid point; the configured thresholds are boxed.
    """
    s = r.sensitivity[r.sensitivity["level"] == "condition"]
    present = [c for c in conditions if c in set(s["condition"])]
    summary = check_summary(r.checks)
    panels = len(present) + (1 if len(summary) else 0)
    fig, axes = plt.subplots(1, max(1, panels), figsize=(3.6 * max(1, panels) + 0.6, 3.6), squeeze=False)
    if not present:
        _empty(axes[0, 0], "no groups")
        return fig
    d = r.settings.thresholds
    vmax = float(np.nanmax(s["misaligned_rate"].to_numpy(dtype=float) * 100)) if s["misaligned_rate"].notna().any() \
        else 1.0

    def mark_default(ax, pivot):
        if d.coherent in pivot.index and d.aligned in pivot.columns:
            i, j = list(pivot.index).index(d.coherent), list(pivot.columns).index(d.aligned)
            ax.add_patch(plt.Rectangle((j, i), 1, 1, fill=False, edgecolor="black", lw=2))

    for ax, cond in zip(axes[0], present):
        pivot = s[s["condition"] == cond].pivot_table(index="coherent_threshold", columns="aligned_threshold",
                                                      values="misaligned_rate", dropna=False) * 100
        sns.heatmap(pivot, ax=ax, annot=True, fmt=".1f", cmap="rocket_r", vmin=0, vmax=max(vmax, 1e-9), cbar=False,
                    annot_kws={"fontsize": 7})
        mark_default(ax, pivot)
        ax.set_title(f"{cond}: misaligned %", fontsize=10)
        ax.set_xlabel("aligned threshold")
        ax.set_ylabel("coherent threshold")
        ax.invert_yaxis()
    if len(summary):
        ax = axes[0, len(present)]
        share = summary["n_hold"] / summary["n_checks"].where(summary["n_checks"] > 0)
        frac = summary.assign(frac=share.astype(float))
        pivot = frac.pivot_table(index="coherent_threshold", columns="aligned_threshold", values="frac", dropna=False)
        labels = summary.assign(lbl=summary["n_hold"].astype(str) + "/" + summary["n_checks"].astype(str))
        labels = labels.pivot(index="coherent_threshold", columns="aligned_threshold", values="lbl")
        sns.heatmap(pivot, ax=ax, annot=labels.reindex_like(pivot).to_numpy(), fmt="", cmap="RdYlGn", vmin=0,
                    vmax=1, cbar=False, annot_kws={"fontsize": 7})
        mark_default(ax, pivot)
        ax.set_title("ordering checks holding", fontsize=10)
        ax.set_xlabel("aligned threshold")
        ax.set_ylabel("coherent threshold")
        ax.invert_yaxis()
    return fig


def scaling(r: Results, plt, sns, conditions: list[str]):
    """Misaligned rate (%) vs parameter count (log x) per model family, one line per condition, with CIs."""
    d = r.level("model×condition")
    d = d[d["params"].notna() & d["n_coherent"].gt(0)]
    families = sorted(d["family"].dropna().unique())
    fig, axes = plt.subplots(1, max(1, len(families)), figsize=(4.8 * max(1, len(families)), 4.0), squeeze=False,
                             sharey=True, sharex=True)
    if d.empty:
        what = ", ".join(r.unknown_models) or "none"
        _empty(axes[0, 0], f"no model with a known parameter count\n(models without one: {what})")
        return fig
    hue = [c for c in conditions if c in set(d["condition"])]
    palette = dict(zip(hue, sns.color_palette("deep", len(hue))))
    for ax, fam in zip(axes[0], families):
        f = d[d["family"] == fam]
        for cond in hue:
            g = f[f["condition"] == cond].sort_values("params")
            if g.empty:
                continue
            rate = g["misaligned_rate"].to_numpy() * 100
            err = [np.clip(rate - g["ci_low"].to_numpy() * 100, 0, None),
                   np.clip(g["ci_high"].to_numpy() * 100 - rate, 0, None)]
            ax.errorbar(g["params"], rate, yerr=err, marker="o", ms=5, capsize=2, lw=1.2, color=palette[cond],
                        label=cond)
        rho = r.scaling[(r.scaling["family"] == fam)]
        text = "; ".join(f"{row.condition}: ρ={row.spearman_rho:.2f}" for row in rho.itertuples()
                         if np.isfinite(row.spearman_rho))
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(plt.NullFormatter())
        ax.set_title(f"{fam}" + (f"\nSpearman {text}" if text else ""), fontsize=9)
        ax.set_xlabel("parameters")
        ax.set_ylabel(_rate_label(d))
        ax.legend(fontsize=8, title="condition")
    return fig


def make_figures(r: Results, out: Path) -> dict[str, Path]:
    """Draw every figure in FIGURES into ``out`` as PNG (110 dpi) and SVG, each footed with the definition.

    Returns figure name -> PNG path.
    """
    plt, sns = _plt()
    out.mkdir(parents=True, exist_ok=True)
    conditions = _order(r.level("condition")["condition"], r.conditions)
    footer = r.rates["definition"].iloc[0] if len(r.rates) else r.settings.thresholds.describe()

    if r.judge_extras.get("line"):  # who judged, and how: model, host, score mode (em.analysis.judge_report)
        footer += "; " + r.judge_extras["line"]
    else:  # tables without provenance columns: the judge's name and mode from summary.json / the columns
        footer += " · " + judge_info(r.responses.sources, r.responses.answers, r.settings.judges.combine).label()
    made = {}
    for name in FIGURES:
        fig = globals()[name](r, plt, sns, conditions)
        made[name] = _save(fig, out, name, footer)
    for name, fig in extra_figures(r, plt, sns, conditions).items():
        made[name] = _save(fig, out, name, footer)
    return made


# --------------------------------------------------------- runs and steps: per-run dot plot, rate vs checkpoint step
def runs_figure(r: Results, plt, sns, conditions: list[str]):
    """Per model × condition (x): each run's rate (dots, with its CI) and the pooled rate (bar, two-way CI)."""
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
    out = {}
    levels = set(r.rates["level"].unique())
    if RUN_LEVEL in levels:
        out["runs"] = runs_figure(r, plt, sns, conditions)
    if STEP_LEVEL in levels:
        out["rate_vs_step"] = rate_vs_step_figure(r, plt, sns, conditions)
    return out
