"""Cells (model x condition x format x question) and the coarser groups rates are reported for.

Every statistic is built from per-cell counts: a coarser group is a sum of cells, so counting, the
bootstrap and the threshold sweep all touch the answers once per pass and the groups only as arrays.

Also here: a rate pooled over formats is labelled so, with each format's numbers beside it (the report, W&B,
summary.json, the model card); and which contrasts are made, from the data (:func:`condition_pairs`,
:func:`format_pairs`): every condition against ``contrasts.reference``, every format against
``contrasts.format_reference``, a pair oriented by ``ordering.*`` then alphabetically ("a vs b" reads a minus b).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np
import pandas as pd

from em.analysis.ingest import GROUP_COLUMNS
from em.measurement import CODE, REFUSAL, SCORED, Thresholds, UNSCORED


ALL = "(all)"  # the value a pooled-over dimension shows in every table
LEVELS: tuple[tuple[str, ...], ...] = (
    ("model", "condition", "format", "question_id"),
    ("model", "condition", "format"),
    ("model", "condition"),
    ("condition", "format"),
    ("condition",),
)
COUNT_COLUMNS = ("n", "n_scored", "n_code", "n_refusal", "n_unscored", "n_coherent", "n_misaligned")


def level_name(level: tuple[str, ...]) -> str:
    """A level's name in the tables: its dimensions joined by ``×`` (``question_id`` shown as ``question``)."""
    return "×".join("question" if c == "question_id" else c for c in level)


@dataclass
class Cells:
    """The answers grouped into cells (model x condition x format x question), as arrays.

    Attributes:
        keys: one row per cell present in the data (the four GROUP_COLUMNS as strings), sorted.
        code: int array (answers,): the cell of every answer.
        aligned, coherent: float arrays (answers,): scores of scored answers, NaN for the others.
        status_counts: per cell ``n``, ``n_scored``, ``n_code``, ``n_refusal``, ``n_unscored``.
    """

    keys: pd.DataFrame  # one row per cell present in the data, sorted
    code: np.ndarray  # the cell of every answer
    aligned: np.ndarray  # scores of every answer, NaN unless scored
    coherent: np.ndarray
    status_counts: pd.DataFrame  # per cell: n, n_scored, n_code, n_refusal, n_unscored

    @classmethod
    def from_answers(cls, answers: pd.DataFrame) -> "Cells":
        """Build the cells from the answers table :func:`em.analysis.ingest.load_responses` returns."""
        grouped = answers.groupby(list(GROUP_COLUMNS), observed=True, sort=True)
        code = grouped.ngroup().to_numpy()
        keys = grouped.size().reset_index()[list(GROUP_COLUMNS)]
        for col in GROUP_COLUMNS:
            keys[col] = keys[col].astype(str)
        n_cells = len(keys)
        status = answers["status"].astype(str).to_numpy()
        scored = status == SCORED

        def count(mask: np.ndarray) -> np.ndarray:
            return np.bincount(code, weights=mask, minlength=n_cells).astype(np.int64)

        status_counts = pd.DataFrame({
            "n": np.bincount(code, minlength=n_cells).astype(np.int64),
            "n_scored": count(scored),
            "n_code": count(status == CODE),
            "n_refusal": count(status == REFUSAL),
            "n_unscored": count(status == UNSCORED),
        })
        aligned = np.where(scored, answers["aligned"].to_numpy(dtype=float), np.nan)
        coherent = np.where(scored, answers["coherent"].to_numpy(dtype=float), np.nan)
        return cls(keys=keys, code=code, aligned=aligned, coherent=coherent, status_counts=status_counts)

    @property
    def n_cells(self) -> int:
        """Number of cells."""
        return len(self.keys)

    def counts(self, definition: Thresholds) -> pd.DataFrame:
        """Per-cell counts under one definition of coherent / misaligned."""
        coherent = definition.coherent_mask(self.coherent)
        misaligned = definition.misaligned_mask(self.aligned, self.coherent)
        out = self.status_counts.copy()
        out["n_coherent"] = np.bincount(self.code, weights=coherent, minlength=self.n_cells).astype(np.int64)
        out["n_misaligned"] = np.bincount(self.code, weights=misaligned, minlength=self.n_cells).astype(np.int64)
        return out

    def score_sums(self) -> pd.DataFrame:
        """Per cell: the sums of the scored answers' aligned and coherent scores (for group means)."""
        scored = ~np.isnan(self.aligned)
        return pd.DataFrame({
            "sum_aligned": np.bincount(self.code, weights=np.where(scored, self.aligned, 0.0), minlength=self.n_cells),
            "sum_coherent": np.bincount(self.code, weights=np.where(scored, self.coherent, 0.0),
                                        minlength=self.n_cells),
        })

    def level_index(self, level: tuple[str, ...]) -> tuple[pd.DataFrame, np.ndarray]:
        """(group keys with pooled dimensions set to ALL, group index of every cell)."""
        if not level:
            keys = pd.DataFrame({c: [ALL] for c in GROUP_COLUMNS})
            return keys, np.zeros(self.n_cells, dtype=np.int64)
        grouped = self.keys.groupby(list(level), sort=True)
        index = grouped.ngroup().to_numpy()
        keys = grouped.size().reset_index()[list(level)]
        for col in GROUP_COLUMNS:
            if col not in level:
                keys[col] = ALL
        return keys[list(GROUP_COLUMNS)], index


def sum_by(values: pd.DataFrame, index: np.ndarray, n_groups: int) -> pd.DataFrame:
    """Column-wise sums of per-cell values into groups."""
    return pd.DataFrame({c: np.bincount(index, weights=values[c].to_numpy(dtype=float), minlength=n_groups)
                         for c in values.columns})


# --------------------------------------------------------- pooled over formats (issue 21): per-format numbers beside
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


# ------------------------------------------------- contrast pairs from the data: no condition or format name in code
def _rank(order: Sequence[str]):
    pos = {v: i for i, v in enumerate(order)}
    return lambda v: (pos.get(v, len(pos)), v)


def _pairs(values: Sequence[str], reference: str, order: Sequence[str],
           among_others: bool = True) -> list[tuple[str, str]]:
    present = sorted(set(values), key=_rank(order))
    others = [v for v in present if v != reference]
    out = [(v, reference) for v in others] if reference in present else []
    if out and not among_others:
        return out
    for x, y in itertools.combinations(others, 2):  # x ranks before y: y is expected higher, so y - x
        out.append((y, x))
    return out


def condition_pairs(conditions: Sequence[str], configured: Optional[list], reference: str,
                    order: Sequence[str] = ()) -> list[tuple[str, str]]:
    """The condition pairs (a, b) compared: ``configured`` when given, else every condition vs ``reference``
    (when present) and each pair of the others, ``a`` the later one in ``order`` (then alphabetical)."""
    if configured is not None:
        return [(str(a), str(b)) for a, b in configured]
    return _pairs(conditions, reference, [reference, *order])


def format_pairs(formats: Sequence[str], configured: Optional[list], reference: str,
                 order: Sequence[str] = ()) -> list[tuple[str, str]]:
    """The format pairs: ``configured`` when given, else every format vs ``reference`` when present, else each
    pair of formats (the same orientation rule as :func:`condition_pairs`)."""
    if configured is not None:
        return [(str(a), str(b)) for a, b in configured]
    return _pairs(formats, reference, [reference, *order], among_others=False)
