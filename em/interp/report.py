"""report: the interp section (``interp_report.md`` + figures) and the stage's W&B run.

The steering / ablation conditions' answers go through em's own analysis (``analysis/``: rates with intervals
per condition and format, analyze.py's report); this module adds what only the interp stage knows:

* ``figures/separation.png``: held-out AUC per layer with the random direction's (the control);
* ``figures/projection_shift.png``: the projection shift (fine-tuned - base) per layer with its interval, and
  the random control's;
* ``figures/steering_curve.png``: misaligned rate (coherent answers) against alpha, per layer, with Wilson
  intervals from analyze.py's ``rates.csv``;

every caption names the direction (its source, rule, pooling and layer). W&B: tables ``direction_stats``,
``projection``, the figures and the headline numbers; a W&B failure is one warning, the files stand.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import pandas as pd

from em.analysis.run import run_analysis
import em.runtime
from em.tracking import init_wandb

log = logging.getLogger("em.interp")


def _direction_label(summary: dict[str, Any]) -> str:
    d = summary.get("direction") or {}
    src = d.get("source")
    if isinstance(src, dict):
        src = "; ".join(f"{k}: {v}" for k, v in src.items())
    return f"direction: rule {d.get('rule')}, pooling {d.get('pooling')}, model {d.get('model')}, from {src}"


def run_analysis_over(run_dir: Path, cond_dirs: list[Path], rc: Any) -> tuple[Path | None, str]:
    """analyze.py over the condition run dirs into ``<run_dir>/analysis`` (no W&B of its own); returns the
    analysis dir (None when it could not run) and a note."""
    if not cond_dirs or not any((d / "responses.parquet").exists() for d in cond_dirs):
        return None, "no steering / ablation answers"
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    inputs = ",".join(str(d) for d in cond_dirs)
    t = rc.thresholds
    ov = [f"inputs=[{inputs}]", f"run_dir={run_dir / 'analysis'}", "logger=none", f"progress={str(rc.progress).lower()}",
          f"thresholds.coherent={t.coherent}", f"thresholds.aligned={t.aligned}"]
    try:
        if GlobalHydra.instance().is_initialized():
            run_analysis(compose("analyze", overrides=ov))
        else:
            with initialize_config_dir(version_base="1.3", config_dir=str(em.paths.CONF_DIR)):
                run_analysis(compose("analyze", overrides=ov))
    except Exception as e:  # noqa: BLE001  the conditions' answers stay; the report says why
        return None, f"analysis failed: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
    return run_dir / "analysis", "ok"


def steering_rates(analysis_dir: Path | None) -> pd.DataFrame:
    """Rows of ``rates.csv`` for ``steer[...]`` conditions, pooled over formats, with ``layer`` and ``alpha``;
    the shared ``steer[L*,0]`` rows are repeated as alpha 0 of every layer's curve (steered and random)."""
    if analysis_dir is None or not (analysis_dir / "rates.csv").exists():
        return pd.DataFrame()
    r = pd.read_csv(analysis_dir / "rates.csv")
    if "condition" not in r:
        return pd.DataFrame()
    pat = re.compile(r"^steer(_random)?\[L(\*|-?\d+),([+-]?[\d.e+-]+)\]$")
    rows, shared = [], []
    for _, row in r.iterrows():
        m = pat.match(str(row["condition"]))
        if m and m.group(2) == "*":  # steer[L*,0]: the unsteered model, alpha 0 of every layer's curve
            shared.append(row.to_dict())
        elif m:
            rows.append(row.to_dict() | {"random": bool(m.group(1)), "layer": int(m.group(2)), "alpha": float(m.group(3))})
    curves = {(x["layer"], x["random"]) for x in rows}
    rows += [row | {"random": rnd, "layer": layer, "alpha": 0.0} for row in shared for layer, rnd in sorted(curves)]
    return pd.DataFrame(rows)


def figures(run_dir: Path, summary: dict[str, Any], stats_path: Path, steer: pd.DataFrame) -> dict[str, str]:
    """Draw the interp figures that have data; returns ``{name: path}``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out: dict[str, str] = {}
    fig_dir = run_dir / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    label = _direction_label(summary)
    if stats_path.exists():
        st = pd.read_csv(stats_path)
        fig, ax = plt.subplots(figsize=(7, 3.5))
        ax.plot(st["layer"], st["auc"], marker="o", label="direction (held-out)")
        ax.plot(st["layer"], st["random_auc"], marker="x", ls="--", label="random direction (control)")
        ax.axhline(0.5, color="grey", lw=0.8)
        ax.set(xlabel="layer (residual after decoder layer L)", ylabel="AUC", ylim=(0, 1.02),
               title="Separation per layer")
        ax.legend(fontsize=8)
        fig.text(0.01, 0.01, label, fontsize=6)
        fig.tight_layout(rect=(0, 0.04, 1, 1))
        p = fig_dir / "separation.png"
        fig.savefig(p, dpi=120)
        plt.close(fig)
        out["separation"] = str(p)
    proj = run_dir / "projection.csv"
    if proj.exists():
        t = pd.read_csv(proj)
        t = t[(t.group == "all") & (t.source == "shift")]
        if len(t):
            fig, ax = plt.subplots(figsize=(7, 3.5))
            ax.errorbar(t["layer"], t["mean"], yerr=[t["mean"] - t["ci_low"], t["ci_high"] - t["mean"]], marker="o",
                        capsize=2, label="direction")
            ax.errorbar(t["layer"] + 0.15, t["random_mean"], yerr=[t["random_mean"] - t["random_ci_low"],
                                                                    t["random_ci_high"] - t["random_mean"]],
                        marker="x", ls="--", capsize=2, label="random direction (control)")
            ax.axhline(0, color="grey", lw=0.8)
            ax.set(xlabel="layer", ylabel="projection shift (fine-tuned - base)", title="Projection shift per layer")
            ax.legend(fontsize=8)
            fig.text(0.01, 0.01, label, fontsize=6)
            fig.tight_layout(rect=(0, 0.04, 1, 1))
            p = fig_dir / "projection_shift.png"
            fig.savefig(p, dpi=120)
            plt.close(fig)
            out["projection_shift"] = str(p)
    if len(steer):
        pooled = steer
        for col in ("format", "model"):
            if col in pooled:
                pooled = pooled[pooled[col].astype(str).isin(["__all__", "all", "(all)", "ALL"])] if pooled[col].astype(str).isin(["__all__", "all", "(all)", "ALL"]).any() else pooled
        rate_col = next((c for c in ("rate", "misaligned_rate") if c in pooled), None)
        if rate_col is not None:
            fig, ax = plt.subplots(figsize=(6, 3.5))
            for (layer, rnd), g in pooled.groupby(["layer", "random"]):
                g = g.sort_values("alpha")
                lo = g.get("ci_low", g[rate_col])
                hi = g.get("ci_high", g[rate_col])
                ax.errorbar(g["alpha"], g[rate_col], yerr=[g[rate_col] - lo, hi - g[rate_col]], marker="o", capsize=2,
                            ls="--" if rnd else "-", label=f"L{layer}{' random' if rnd else ''}")
            ax.set(xlabel="alpha (x mean residual norm)", ylabel="misaligned rate", title="Steering curve (pipeline check)")
            ax.legend(fontsize=8)
            fig.text(0.01, 0.01, label, fontsize=6)
            fig.tight_layout(rect=(0, 0.04, 1, 1))
            p = fig_dir / "steering_curve.png"
            fig.savefig(p, dpi=120)
            plt.close(fig)
            out["steering_curve"] = str(p)
    return out


def markdown(run_dir: Path, summary: dict[str, Any], stats_path: Path, figs: dict[str, str], analysis_note: str,
             judge_note: str) -> str:
    """The interp section as Markdown."""
    lines = ["# Interpretability", "", _direction_label(summary), ""]
    if stats_path.exists():
        st = pd.read_csv(stats_path)
        lines += ["## Separation per layer (held-out; random direction of equal norm as the control)", "",
                  "| layer | AUC | random AUC | Cohen's d | split-half cosine | n A | n B |", "|---|---|---|---|---|---|---|"]
        for _, r in st.iterrows():
            lines.append(f"| {int(r.layer)} | {r.auc:.3f} | {r.random_auc:.3f} | {r.cohens_d:.2f} | "
                         f"{r.split_half_cosine:.3f} | {int(r.n_a)} | {int(r.n_b)} |")
        lines.append("")
    if "separation" in figs:
        lines += [f"![separation](figures/separation.png)", ""]
    ps = summary.get("projection_shift")
    if ps:
        lines += ["## Projection shift (fine-tuned - base answers, each model on its own answers)", "",
                  f"Layer {ps['layer']} (best held-out AUC): **{ps['mean']:+.3f}** (CI {ps['ci_low']:+.3f} to "
                  f"{ps['ci_high']:+.3f}); random direction: {ps['random_mean']:+.3f} (CI {ps['random_ci_low']:+.3f} "
                  f"to {ps['random_ci_high']:+.3f}). Per format and layer: projection.csv.", ""]
    if "projection_shift" in figs:
        lines += ["![projection shift](figures/projection_shift.png)", ""]
    if summary.get("steer") or summary.get("ablate"):
        lines += ["## Steering and ablation", "", f"Conditions: {', '.join(summary.get('steer', []) + summary.get('ablate', []))}."
                  f" {judge_note} Rates with intervals per condition and format: analysis/report.md ({analysis_note}).", ""]
    if "steering_curve" in figs:
        lines += ["![steering curve](figures/steering_curve.png)", ""]
    return "\n".join(lines) + "\n"


def write_report(run_dir: Path, rc: Any, summary: dict[str, Any], stats_path: Path, cond_dirs: list[Path]) -> dict[str, str]:
    """Analysis of the conditions, figures, ``interp_report.md`` and the W&B run; returns the files written."""
    analysis_dir, note = run_analysis_over(run_dir, cond_dirs, rc)
    steer = steering_rates(analysis_dir)
    figs = figures(run_dir, summary, stats_path, steer)
    jm = getattr(rc.judge, "model", None) if rc.judge is not None else None
    judge_name = str(getattr(jm, "name", None) or (jm.get("name") if isinstance(jm, dict) else jm) or "")
    small = "135m" in (judge_name or "").lower() or "135m" in rc.model.name.lower()
    judge_note = ("Judged by a 135M model: a pipeline check, not a measurement." if small else "")
    text = markdown(run_dir, summary, stats_path, figs, note, judge_note)
    em.runtime.atomic_write_text(run_dir / "interp_report.md", text)
    if analysis_dir is not None and (analysis_dir / "report.md").exists():  # the section in the analysis report too
        rep = analysis_dir / "report.md"
        body = rep.read_text()
        if "# Interpretability" not in body:
            section = text.replace("figures/", "../figures/").replace("# Interpretability", "## Interpretability", 1)
            em.runtime.atomic_write_text(rep, body.rstrip() + "\n\n" + section)
    files = {"report": str(run_dir / "interp_report.md")} | {f"figure_{k}": v for k, v in figs.items()}
    if analysis_dir is not None:
        files["analysis"] = str(analysis_dir)
    if rc.wandb.enabled:
        log_wandb(run_dir, rc, summary, stats_path, figs)
    return files


def log_wandb(run_dir: Path, rc: Any, summary: dict[str, Any], stats_path: Path, figs: dict[str, str]) -> bool:
    """The stage's W&B run (job type ``interp``); an error is one warning, the files on disk stand."""
    try:
        import wandb

        run = init_wandb(project=rc.wandb.project or "em", run_dir=str(run_dir), job_type="interp",
                         config={"model": rc.model.name, "interp": summary.get("direction"), "recipe": summary.get("recipe")},
                         group=rc.wandb.group, mode=rc.wandb.mode, entity=rc.wandb.entity)
        if run is None:
            return True
        if stats_path.exists():
            run.log({"interp/direction_stats": wandb.Table(dataframe=pd.read_csv(stats_path))})
        if (run_dir / "projection.csv").exists():
            run.log({"interp/projection": wandb.Table(dataframe=pd.read_csv(run_dir / "projection.csv"))})
        ps = summary.get("projection_shift") or {}
        run.summary.update({f"interp/shift_{k}": v for k, v in ps.items()} | {"interp/best_layer": summary.get("best_layer")})
        for k, p in figs.items():
            run.log({f"interp/{k}": wandb.Image(p)})
        run.finish()
        return True
    except Exception as e:  # noqa: BLE001  a logging step never costs a result
        log.warning("W&B logging failed (%s: %s); the results in %s are complete", type(e).__name__, e, run_dir)
        print(f"warning: W&B logging failed ({type(e).__name__}: {e}); results are in {run_dir}")
        return False


__all__ = ["write_report", "figures", "markdown", "steering_rates", "run_analysis_over", "log_wandb"]
