"""Cells (model x condition x format x question) and the coarser groups rates are reported for.

Every statistic is built from per-cell counts: a coarser group is a sum of cells, so counting, the
bootstrap and the threshold sweep all touch the answers once per pass and the groups only as arrays.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from em.analysis.ingest import GROUP_COLUMNS
from em.measurement import CODE, REFUSAL, SCORED, UNSCORED, Thresholds

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
