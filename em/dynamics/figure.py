"""The dynamics figure of one training run: misaligned rate per step, LoRA geometry, probe projection,
change points, and the first-vs-last step contrast.

Reads what the run wrote: ``lora_geometry.csv`` / ``lora_changepoints.json`` (:mod:`em.dynamics.geometry`),
``probe_projection.csv`` / ``.json`` with ``trainer.probe`` (:mod:`em.dynamics.probe`) and, when the step
snapshots were evaluated (``evaluate.steps``), the ``eval_step<n>/responses.parquet`` tables (their integer
``step`` column). Panels sharing the step axis:

1. misaligned rate (misaligned / coherent, Betley et al.'s number, by ``thresholds``) per step with 95 %
   Wilson intervals, per format; empty when no snapshot was evaluated or judged;
2. ``norm_B_total`` (root of summed squared ||B||) and the mean over modules of ``cos_B_prev``;
3. the PCA trajectory (PC1, PC2 of the flattened adapter) against the step;
4. (with ``trainer.probe``) the probe answers' mean projection at the headline layer as its change from the
   first snapshot (paired over the same answers, percentile bootstrap interval; the absolute means are in
   ``dynamics.csv`` / ``probe_projection.csv``).

Each change point is a vertical dotted line. The first-vs-last contrast (:mod:`em.dynamics.contrast`,
written to ``dynamics_contrast.csv``) is printed in the rate and probe panels as "last - first: difference
[interval]". Also ``dynamics.csv``: one row per step with the rates and the series (what the figure draws).
``python -m em.dynamics.figure <run dir>`` writes all three.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Optional

from em.analysis.intervals import proportion_ci
from em.dynamics import contrast, geometry, probe
from em.measurement import Thresholds, rates
from em.runtime import atomic_write, atomic_write_csv

log = logging.getLogger("em.dynamics")

FIGURE_FILE = "dynamics.png"
TABLE_FILE = "dynamics.csv"


def step_rates(run_dir: Path, thresholds: Optional[Thresholds] = None):
    """Misaligned rate per (step, format) from ``<run_dir>/eval_step*/responses.parquet`` (and any other
    table under ``run_dir`` with a ``step`` column): columns step, format, n_scored, n_coherent,
    n_misaligned, misaligned_rate, low, high (95 % Wilson). Rows with no score are left out (unscored);
    empty DataFrame when nothing was judged."""
    import numpy as np
    import pandas as pd

    cols = ["step", "format", "n_scored", "n_coherent", "n_misaligned", "misaligned_rate", "low", "high"]
    parts = []
    for p in sorted(Path(run_dir).glob("eval_step*/responses.parquet")):
        df = pd.read_parquet(p)
        if "step" in df and {"aligned", "coherent"} <= set(df.columns):
            parts.append(df)
    if not parts:
        return pd.DataFrame(columns=cols)
    df = pd.concat(parts, ignore_index=True)
    df = df[df["aligned"].notna() & df["coherent"].notna() & df["step"].notna()]
    rows = []
    for (step, fmt), g in df.groupby(["step", "format"], sort=True):
        r = rates(g["aligned"].to_numpy(float), g["coherent"].to_numpy(float), thresholds)
        lo, hi = proportion_ci(np.array([r["n_misaligned"]]), np.array([max(r["n_coherent"], 1)]), 0.95)
        rows.append({"step": int(step), "format": fmt, "n_scored": r["n_scored"], "n_coherent": r["n_coherent"],
                     "n_misaligned": r["n_misaligned"], "misaligned_rate": r["misaligned_rate"],
                     "low": float(lo[0]) if r["n_coherent"] else None, "high": float(hi[0]) if r["n_coherent"] else None})
    return pd.DataFrame(rows, columns=cols)


def write_figure(run_dir: Path, thresholds: Optional[Thresholds] = None) -> Optional[Path]:
    """Draw ``dynamics.png`` and write ``dynamics.csv`` into ``run_dir``; None when the run has no
    ``lora_geometry.csv`` (no step snapshots)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    gpath = run_dir / geometry.GEOMETRY_FILE
    if not gpath.is_file():
        return None
    import pandas as pd

    series = geometry.step_series(geometry.read_geometry(gpath))
    cps_file = run_dir / geometry.CHANGEPOINTS_FILE
    cps = json.loads(cps_file.read_text()) if cps_file.is_file() else {}
    rates = step_rates(run_dir, thresholds)
    proj, pmeta = probe.read_projection(run_dir)
    head = pmeta.get("headline_layer")
    pline = proj[proj["layer"] == head].sort_values("step") if len(proj) and head is not None else proj.iloc[:0]
    cpath = contrast.write_contrast(run_dir, thresholds)
    contrasts = pd.read_csv(cpath) if cpath else pd.DataFrame(columns=contrast.COLUMNS)

    table = series.reset_index()
    if len(rates):
        wide = rates.pivot(index="step", columns="format", values="misaligned_rate").add_prefix("misaligned_rate/")
        table = table.merge(wide.reset_index(), on="step", how="left")
    if len(pline):
        cols = {"mean": f"probe_L{head}", "ci_low": f"probe_L{head}_ci_low", "ci_high": f"probe_L{head}_ci_high"}
        table = table.merge(pline[["step", *cols]].rename(columns=cols), on="step", how="outer")
    atomic_write_csv(run_dir / TABLE_FILE, table)

    fig, ax = plt.subplots(4 if len(pline) else 3, 1, figsize=(7, 10.5 if len(pline) else 8), sharex=True)
    if len(rates):
        for fmt, g in rates.groupby("format"):
            g = g.dropna(subset=["misaligned_rate"])
            ax[0].errorbar(g["step"], g["misaligned_rate"], yerr=[g["misaligned_rate"] - g["low"], g["high"] - g["misaligned_rate"]],
                           marker="o", capsize=3, label=str(fmt))
        ax[0].legend(fontsize=8)
    else:
        ax[0].text(0.5, 0.5, "no judged step evaluation (evaluate.steps.enabled)", ha="center", va="center",
                   transform=ax[0].transAxes, fontsize=9, color="gray")
    ax[0].set_ylabel("misaligned rate\n(95% Wilson)")
    ax[1].plot(series.index, series["norm_B_total"], "o-", color="C0", label="||B|| (all modules)")
    ax[1].set_ylabel("||B||")
    twin = ax[1].twinx()
    twin.plot(series.index, series["cos_B_prev_mean"], "s--", color="C3", label="cos(B_t, B_prev), mean")
    twin.set_ylabel("cos to previous", color="C3")
    ax[2].plot(series.index, series["pc1"], "o-", label="PC1")
    pc2 = geometry.read_geometry(gpath).groupby("step")["pc2"].first()
    ax[2].plot(pc2.index, pc2.values, "o-", label="PC2")
    ax[2].set_ylabel("adapter PCA")
    ax[2].legend(fontsize=8)
    if len(pline):
        # the change from the first snapshot, paired over the same answers: the between-answer spread of the
        # absolute projection (dynamics.csv) is far wider than what training moves
        conf = float(pline["confidence"].iloc[0])
        ch = contrast.probe_changes(run_dir, n_boot=int(pmeta.get("n_boot", 1000)), confidence=conf,
                                    seed=int(pmeta.get("seed", 0)))
        ch = ch[ch["layer"] == head]
        if len(ch):
            first = int(ch["first"].iloc[0])
            steps = [first, *ch["step"]]
            ax[3].fill_between(steps, [0.0, *ch["ci_low"]], [0.0, *ch["ci_high"]], alpha=0.25, color="C2",
                               label=f"{int(conf * 100)}% paired bootstrap interval")
            ax[3].plot(steps, [0.0, *ch["change"]], "o-", color="C2",
                       label=f"mean over {int(ch['n'].iloc[0])} probe answers")
            ax[3].axhline(0, color="0.6", lw=0.8)
            ax[3].set_ylabel(f"probe projection,\nchange from step {first}\n(layer {head})")
            ax[3].legend(fontsize=8, loc="lower right")
        _contrast_note(ax[3], contrasts, f"probe_projection/L{head}")
    if len(rates):
        _contrast_note(ax[0], contrasts, "misaligned_rate")
    ax[-1].set_xlabel("optimizer step")
    at: dict[int, list[str]] = {}  # one line and one label per step, naming every series that breaks there
    for name in geometry.SERIES:
        if cps.get(name) is not None:
            at.setdefault(int(cps[name]), []).append(name)
    if head is not None and (pmeta.get("changepoints") or {}).get(str(head)) is not None:
        at.setdefault(int(pmeta["changepoints"][str(head)]), []).append(f"probe_L{head}")
    for i, (step, names) in enumerate(sorted(at.items())):
        for a in ax:
            a.axvline(step, ls=":", color=f"C{4 + i}", alpha=0.8)
        ax[0].annotate(f"change point {step}: {', '.join(names)}", xy=(step, 0.98), xycoords=("data", "axes fraction"),
                       fontsize=7, rotation=90, va="top", ha="right")
    fig.suptitle(f"training dynamics: {run_dir.resolve().name}", fontsize=10)
    fig.tight_layout()
    out = atomic_write(run_dir / FIGURE_FILE, lambda p: fig.savefig(p, dpi=120, format="png"))
    plt.close(fig)
    return out


def _contrast_note(axis, contrasts, quantity: str) -> None:
    """Write "last - first: difference [interval]" of ``quantity``'s contrast rows into ``axis``."""
    rows = contrasts[contrasts["quantity"] == quantity]
    lines = [f"{r.a} - {r.b}: {r.difference:+.3g} [{r.diff_ci_low:+.3g}, {r.diff_ci_high:+.3g}], n {r.n_a} vs {r.n_b}"
             + (f" ({r.scope})" if len(rows) > 1 else "")
             + ("" if str(r.status) == "tested" else f"; {str(r.status).split(':')[0]}")  # e.g. too few coherent answers
             for r in rows.itertuples(index=False)]
    if lines:
        axis.text(0.01, 0.97, "\n".join(lines), transform=axis.transAxes, fontsize=7, va="top", ha="left",
                  bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "0.8"})


def draw_quietly(run_dir: Path, thresholds: Optional[Thresholds] = None) -> Optional[Path]:
    """:func:`write_figure`, a failure logged as a warning (a figure never fails the job that made its data)."""
    try:
        return write_figure(run_dir, thresholds)
    except Exception as e:  # noqa: BLE001  the CSV files on disk are the record
        log.warning("dynamics figure for %s not drawn: %s: %s", run_dir, type(e).__name__, e)
        return None


def main(argv: Optional[list[str]] = None) -> int:
    """``python -m em.dynamics.figure RUN_DIR``: write dynamics.png / dynamics.csv; exit 2 without geometry."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    a = ap.parse_args(argv)
    out = write_figure(a.run_dir)
    if out is None:
        print(f"{a.run_dir}: no {geometry.GEOMETRY_FILE} (train with trainer.snapshot_every_n_steps=N)")
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
