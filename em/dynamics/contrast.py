"""First vs last step snapshot of one training run -> ``dynamics_contrast.csv``.

Two kinds of rows (column ``quantity``), each ``a`` = the last snapshot step minus ``b`` = the first:

* ``misaligned_rate`` -- from the step evaluations (``eval_step<n>/responses.parquet``, ``evaluate.steps``):
  exactly analyze.py's checkpoint contrast (family ``step`` of ``contrasts.csv``, :mod:`em.analysis.steps`):
  per model x condition the per-step rates with their question-clustered interval
  (:func:`em.analysis.steps.step_level`), last vs first checkpoint (:func:`em.analysis.steps.first_last`),
  difference with Newcombe's interval and Fisher's exact p (:func:`em.analysis.contrasts.contrast_table`),
  under analyze.py's default settings (:class:`em.config.analysis.AnalysisConfig`) and the run's
  ``thresholds``;
* ``probe_projection/L<layer>`` -- from the probe projections in the snapshots (``trainer.probe``,
  :mod:`em.dynamics.probe`): the mean over probe answers of (projection at the last step - at the first),
  the same answers at both steps, with a paired percentile bootstrap interval over answers
  (:func:`em.interp.project.boot_mean`, generator seeded by ``(seed, first, last, layer)``).

Columns: :data:`COLUMNS` (``value_a`` / ``value_b``: rates or mean projections; ``n_a`` / ``n_b``: the
rate's denominator or the probe answers; ``p_value``: Fisher's exact, rates only).
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from em.analysis import steps
from em.analysis.contrasts import contrast_table
from em.analysis.ingest import load_responses
from em.analysis.rates import RateResult, rate_definition
from em.config.analysis import AnalysisConfig, BootstrapConfig
from em.dynamics import probe
from em.interp.project import boot_mean
from em.measurement import Thresholds
from em.runtime import atomic_write_csv

CONTRAST_FILE = "dynamics_contrast.csv"
COLUMNS = ["quantity", "scope", "a", "b", "value_a", "value_b", "difference", "diff_ci_low", "diff_ci_high",
           "confidence", "n_a", "n_b", "p_value", "status", "method"]


def _analysis_defaults() -> dict:
    """analyze.py's defaults for the contrast (confidence, min_group_n, denominator, alpha, power)."""
    f = {x.name: x.default for x in dataclasses.fields(AnalysisConfig)}
    conf = next(x.default for x in dataclasses.fields(BootstrapConfig) if x.name == "confidence")
    return {"confidence": conf, "min_group_n": f["min_group_n"], "denominator": f["denominator"],
            "alpha": f["alpha"], "power": f["power"]}


def rate_contrast(run_dir: Path, thresholds: Optional[Thresholds] = None) -> pd.DataFrame:
    """The ``misaligned_rate`` rows (see the module docstring); empty without >= 2 judged step evaluations."""
    tables = sorted(Path(run_dir).glob("eval_step*/responses.parquet"))
    if len(tables) < 2:
        return pd.DataFrame(columns=COLUMNS)
    d = _analysis_defaults()
    th = thresholds or Thresholds()
    answers = load_responses(tables).answers
    answers = answers[answers["aligned"].notna() & answers["coherent"].notna()] if {"aligned", "coherent"} <= set(answers) else answers.iloc[:0]
    if answers.empty or not steps.has_steps(answers):
        return pd.DataFrame(columns=COLUMNS)
    rows = steps.step_level(answers, th, confidence=d["confidence"], min_group_n=d["min_group_n"],
                            denominator=d["denominator"])
    # only the step level exists here: the condition / format levels contrast_table also looks up are empty
    row_of = defaultdict(lambda: np.array([], dtype=int), {steps.STEP_LEVEL: np.arange(len(rows))})
    rr = RateResult(table=rows, row_of=row_of, denominator=d["denominator"])
    pairs = [(steps.STEP_LEVEL, last, first, scope, f"step {rows['step'].iloc[last]}", f"step {rows['step'].iloc[first]}")
             for last, first, scope in steps.first_last(rows)]
    c = contrast_table(rr, condition_pairs=[], format_pairs=[], alpha=d["alpha"], power=d["power"],
                       min_group_n=d["min_group_n"], definition=rate_definition(th, d["denominator"]), step_pairs=pairs)
    return pd.DataFrame({"quantity": "misaligned_rate", "scope": c["scope"], "a": c["a"], "b": c["b"],
                         "value_a": c["rate_a"], "value_b": c["rate_b"], "difference": c["difference"],
                         "diff_ci_low": c["diff_ci_low"], "diff_ci_high": c["diff_ci_high"],
                         "confidence": d["confidence"], "n_a": c["n_denominator_a"], "n_b": c["n_denominator_b"],
                         "p_value": c["p_value"], "status": c["status"],
                         "method": c["diff_ci_method"] + "; " + c["test"].astype(str)}, columns=COLUMNS)


def probe_changes(run_dir: Path, *, n_boot: int = 1000, confidence: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """Per layer and snapshot step: the mean over probe answers of (projection at the step - at the first
    step), with a paired percentile bootstrap interval over answers (:func:`em.interp.project.boot_mean`,
    generator seeded by ``(seed, first, step, layer)``). Columns ``layer``, ``step``, ``first``, ``change``,
    ``ci_low``, ``ci_high``, ``n``, ``value``, ``value_first`` (the two means). Only answers projected at both
    steps count (all of them, for one probe set); empty with fewer than 2 steps."""
    import json

    cols = ["layer", "step", "first", "change", "ci_low", "ci_high", "n", "value", "value_first"]
    meta_path = Path(run_dir) / probe.META_FILE
    key = json.loads(meta_path.read_text()).get("probe_key") if meta_path.is_file() else None
    values = probe.step_values(run_dir, key)
    stepset = sorted(int(s) for s in values["step"].unique()) if len(values) else []
    if len(stepset) < 2:
        return pd.DataFrame(columns=cols)
    first = stepset[0]
    wide = values.pivot_table(index=["layer", "answer_id"], columns="step", values="projection")
    rows, tail = [], 50 * (1 - confidence)
    for layer, g in wide.groupby(level="layer", sort=True):
        for step in stepset[1:]:
            pair = g[[first, step]].dropna()
            diff = (pair[step] - pair[first]).to_numpy(float)
            draws = boot_mean(diff, np.random.default_rng([seed, first, step, int(layer)]), n_boot)
            lo, hi = np.percentile(draws, [tail, 100 - tail])
            rows.append({"layer": int(layer), "step": step, "first": first, "change": float(diff.mean()),
                         "ci_low": float(lo), "ci_high": float(hi), "n": len(diff),
                         "value": float(pair[step].mean()), "value_first": float(pair[first].mean())})
    return pd.DataFrame(rows, columns=cols)


def probe_contrast(run_dir: Path, *, n_boot: int = 1000, confidence: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """The ``probe_projection/L<layer>`` rows (see the module docstring): :func:`probe_changes` at the last
    step; empty without >= 2 snapshot steps with probe projections."""
    ch = probe_changes(run_dir, n_boot=n_boot, confidence=confidence, seed=seed)
    if ch.empty:
        return pd.DataFrame(columns=COLUMNS)
    last = ch[ch["step"] == ch["step"].max()]
    return pd.DataFrame({
        "quantity": [f"probe_projection/L{L}" for L in last["layer"]], "scope": "probe answers",
        "a": [f"step {s}" for s in last["step"]], "b": [f"step {f}" for f in last["first"]],
        "value_a": last["value"].to_numpy(), "value_b": last["value_first"].to_numpy(),
        "difference": last["change"].to_numpy(), "diff_ci_low": last["ci_low"].to_numpy(),
        "diff_ci_high": last["ci_high"].to_numpy(), "confidence": confidence, "n_a": last["n"].to_numpy(),
        "n_b": last["n"].to_numpy(), "p_value": np.nan, "status": "tested",
        "method": f"paired percentile bootstrap over probe answers ({n_boot} resamples)"}, columns=COLUMNS)


def write_contrast(run_dir: Path, thresholds: Optional[Thresholds] = None, **probe_kw) -> Optional[Path]:
    """Write ``dynamics_contrast.csv`` (rates, then probe layers) into ``run_dir``; None when neither kind
    has two steps to compare (no file written). ``probe_kw``: :func:`probe_contrast`'s n_boot / confidence /
    seed (default: those recorded in ``probe_projection.json``)."""
    import json

    meta_path = Path(run_dir) / probe.META_FILE
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        probe_kw = {k: meta[k] for k in ("n_boot", "confidence", "seed") if k in meta} | probe_kw
    parts = [t for t in (rate_contrast(run_dir, thresholds), probe_contrast(run_dir, **probe_kw)) if len(t)]
    if not parts:
        return None
    return atomic_write_csv(Path(run_dir) / CONTRAST_FILE, pd.concat(parts, ignore_index=True)[COLUMNS])


__all__ = ["COLUMNS", "CONTRAST_FILE", "probe_changes", "probe_contrast", "rate_contrast", "write_contrast"]
