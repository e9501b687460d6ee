"""The checkpoint dimension: answers judged at several training checkpoints (an integer ``step`` column, the
optimizer step of the adapter that answered; null = not a snapshot, i.e. the final adapter).

Where it comes from: em's own epoch snapshots (``<job>/eval_epoch<e>/``) write ``step``; other labs' tables
name it with ``columns.step=<their column>``, or carry a ``step`` or ``checkpoint`` column.

What the analysis does with it (never pooling checkpoints into one group): the main tables (rates,
contrasts, sensitivity, ...) use each run's *final* answers — those without a step when the run has them,
else those at its largest step; every checkpoint gets its rate at level ``model×condition×step`` of
``rates.csv`` (column ``step``; ``final`` for answers without one), drawn as the rate-vs-step figure; and per
model × condition the last checkpoint is contrasted with the first (family ``step`` in ``contrasts.csv``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import pandas as pd

from em.analysis.groups import ALL, Cells, level_name
from em.analysis.ingest import UNSPECIFIED
from em.analysis.rates import rate_table
from em.analysis.runs import run_labels
from em.measurement import Thresholds

STEP_LEVEL = "model×condition×step"
FINAL = "final"
STEP_COLUMNS = ("step", "checkpoint")  # read as the step when no columns.step is given


def step_values(answers: pd.DataFrame) -> pd.Series:
    """Each answer's step as a float (NaN: no step, the final adapter); raises nothing (bad text -> NaN)."""
    if "step" not in answers:
        return pd.Series(np.nan, index=answers.index)
    v = answers["step"].astype("string").mask(answers["step"].astype("string") == UNSPECIFIED)
    return pd.to_numeric(v, errors="coerce").astype(float)


def has_steps(answers: pd.DataFrame) -> bool:
    """Do the answers come from >= 2 checkpoints of some model × condition?"""
    if "step" not in answers:
        return False
    s = step_values(answers).fillna(-1.0)
    d = pd.DataFrame({"m": answers["model"].astype(str), "c": answers["condition"].astype(str), "s": s})
    return bool((d.groupby(["m", "c"])["s"].nunique() >= 2).any())


def final_mask(answers: pd.DataFrame) -> np.ndarray:
    """Per answer: is it a final answer of its run (no step where the run has such answers, else its largest
    step)? The run: model × condition × adapter / seed (:func:`em.analysis.runs.run_labels`)."""
    s = step_values(answers)
    run = (answers["model"].astype(str) + "\x1f" + answers["condition"].astype(str) + "\x1f"
           + run_labels(answers).astype(str))
    d = pd.DataFrame({"run": run.to_numpy(), "s": s.to_numpy(), "none": s.isna().to_numpy()})
    has_none = d.groupby("run")["none"].transform("any").to_numpy()
    top = d.groupby("run")["s"].transform("max").to_numpy()
    return np.where(has_none, d["none"].to_numpy(), d["s"].to_numpy() == top)


@dataclass
class StepSplit:
    """answers / judge_scores restricted to final answers, and the number of snapshot answers set aside."""

    answers: pd.DataFrame
    judge_scores: Optional[pd.DataFrame]
    n_snapshot: int


def split_final(answers: pd.DataFrame, judge_scores: Optional[pd.DataFrame]) -> StepSplit:
    """Keep the final answers (:func:`final_mask`) and their judges' rows (answer ids renumbered)."""
    keep = final_mask(answers)
    out = answers[keep].reset_index(drop=True)
    js = judge_scores
    if js is not None:
        remap = np.full(len(answers), -1)
        remap[np.flatnonzero(keep)] = np.arange(int(keep.sum()))
        ids = remap[js["answer_id"].to_numpy()]
        js = js[ids >= 0].assign(answer_id=ids[ids >= 0]).reset_index(drop=True)
    return StepSplit(out, js, int((~keep).sum()))


def step_label(answers: pd.DataFrame) -> pd.Series:
    """``"1200"`` for an answer at step 1200, ``final`` without a step."""
    s = step_values(answers)
    return s.map(lambda x: FINAL if np.isnan(x) else str(int(x))).astype(object)


def step_level(answers: pd.DataFrame, definition: Thresholds, *, confidence: float, min_group_n: int,
               denominator: str) -> pd.DataFrame:
    """Rates per model × condition × checkpoint (level ``model×condition×step``, column ``step``), with the
    question-clustered interval (:func:`em.analysis.rates.rate_table`); runs pooled within a step."""
    per = answers.copy()
    per["format"] = pd.Categorical(step_label(answers))  # the step takes the format's place in the cell key
    rr = rate_table(Cells.from_answers(per), definition, confidence=confidence, min_group_n=min_group_n,
                    denominator=denominator)
    t = rr.table.iloc[rr.row_of[level_name(("model", "condition", "format"))]].copy()
    t["step"] = t["format"]
    t["format"] = ALL
    t["level"] = STEP_LEVEL

    runs = pd.DataFrame({"model": answers["model"].astype(str), "condition": answers["condition"].astype(str),
                         "step": step_label(answers).to_numpy(), "r": run_labels(answers).to_numpy()})
    n_runs = runs.groupby(["model", "condition", "step"])["r"].nunique().rename("n_runs").reset_index()
    t = t.drop(columns=[c for c in ("n_runs",) if c in t]).merge(n_runs, on=["model", "condition", "step"],
                                                                 how="left")
    t["run"] = ALL
    order = pd.to_numeric(t["step"], errors="coerce").fillna(np.inf)
    return t.assign(_o=order).sort_values(["model", "condition", "_o"]).drop(columns="_o").reset_index(drop=True)


def first_last(step_rows: pd.DataFrame) -> list[tuple[int, int, str]]:
    """Per model × condition with >= 2 checkpoints: (row of the last, row of the first, scope) in ``step_rows``
    (positions; ``step_level``'s order, the final answers last)."""
    out = []
    for (m, c), g in step_rows.reset_index(drop=True).groupby(["model", "condition"], sort=True):
        if len(g) >= 2:
            out.append((int(g.index[-1]), int(g.index[0]), f"model={m}, condition={c}"))
    return out


def step_note(n_snapshot: int, step_rows: pd.DataFrame) -> str:
    """The report's note on the checkpoint dimension."""
    groups = step_rows.groupby(["model", "condition"]).size()
    return (f"Answers from {int(groups.max()) if len(groups) else 0} training checkpoints (`step`) in some model × "
            f"condition: the main tables use each run's final answers; {n_snapshot:,} answers of earlier checkpoints "
            "are in the per-step rates only (level `model×condition×step` in rates.csv, figure rate_vs_step, "
            "family `step` in contrasts.csv: last vs first checkpoint).")


__all__ = ["STEP_LEVEL", "FINAL", "STEP_COLUMNS", "step_values", "has_steps", "final_mask", "split_final",
           "step_level", "first_last", "step_note", "StepSplit"]
