"""Ingestion: read the responses tables (found by :mod:`em.analysis.inputs`) and normalise both schemas
into one answers table, each answer's status from :mod:`em.measurement`.

Two schemas are accepted. Ours (evaluate.py) has one row per judged answer with model / condition /
format columns, and with an ensemble judge one row per judge (a ``judge`` column) or extra
``aligned__<judge>`` columns. The upstream one (Betley et al.'s ``eval.py``) has only ``question``,
``answer``, ``question_id``, ``aligned`` and ``coherent``, with the format in the question id suffix and
"CODE" / "REFUSAL" written into the score column.
"""

from __future__ import annotations

import contextvars
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from em import measurement
from em.analysis import readers
from em.errors import ConfigError, DataError
from em.measurement import SPECIALS, STATUSES, UNSCORED, answer_status, special_scored

log = logging.getLogger("em.analysis")
GROUP_COLUMNS = ("model", "condition", "format", "question_id")
# A missing model/condition/format column makes one group, named so nobody mistakes it for a real value.
UNSPECIFIED = "unspecified"
FORMAT_SUFFIXES = (("_json", "json"), ("_template", "template"))
# Columns that together identify one answer, so the rows several judges wrote about it line up.
ANSWER_KEY = ("model", "adapter", "condition", "seed", "sample_seed", "format", "question_id", "paraphrase",
              "sample", "system", "question", "answer", "trigger", "step")
# step: the checkpoint's optimizer step (em.analysis.steps); an answer at another step is another answer
KEEP_COLUMNS = ("adapter", "seed", "trigger", "step", "judge_score_mode", "score_mode")  # score mode: the judge's label  # trigger: evaluate.trigger on / off (em.evaluate.triggers)
# Trigger-on answers form their own format group ``<format>+trigger``, as evaluate.py's summary.json keys them
# (em.evaluate.triggers.TAG), so no rate pools the two arms; the ``trigger`` column is kept for the contrast.
TRIGGER_TAG = "+trigger"


def trigger_on(values: pd.Series) -> pd.Series:
    """Which rows of a ``trigger`` column (bool, or text / numbers read from CSV / JSONL) say the trigger was on."""
    return values.astype("string").str.strip().str.lower().isin(("true", "1", "1.0")).fillna(False).astype(bool)


@dataclass
class Responses:
    """The answers read from every input table.

    Attributes:
        answers: one row per answer: ``source`` (input index), model / condition / format / question_id
            (categorical), optional adapter / seed, ``aligned``, ``coherent`` (0-100, NaN when none),
            ``status`` (:data:`em.measurement.STATUSES`) and ``reason``.
        judge_scores: one row per (answer, judge) when several judges scored answers, else None.
        sources: one row per input table: path, schema, rows, answers, judges, status counts.
        notes: caveats for the report (e.g. a missing column made one "unspecified" group).
    """

    answers: pd.DataFrame  # one row per answer: group columns, aligned, coherent, status, reason
    judge_scores: Optional[pd.DataFrame]  # one row per (answer, judge) when several judges scored answers
    sources: pd.DataFrame  # one row per input table
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------- reading
read_table = readers.read_table
_where = readers.where


def parse_scores(df: pd.DataFrame, column: str, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A score column -> (float scores with NaN for none, special label "CODE"/"REFUSAL" or None)."""
    s = df[column]
    special = np.full(len(s), None, dtype=object)
    if pd.api.types.is_bool_dtype(s):
        raise DataError(f"{path}: column '{column}' holds true/false values, not 0-100 scores")
    if pd.api.types.is_numeric_dtype(s):
        values = s.to_numpy(dtype=float, na_value=np.nan)
    else:
        text = s.astype("string").str.strip()
        upper = text.str.upper()
        is_special = upper.isin(SPECIALS).fillna(False).to_numpy(dtype=bool)
        special[is_special] = upper[is_special].to_numpy(dtype=object)
        numeric = pd.to_numeric(text.mask(is_special | (text == "")), errors="coerce")
        values = numeric.to_numpy(dtype=float, na_value=np.nan)
        bad = (text.notna() & (text != "")).to_numpy(dtype=bool) & ~is_special & np.isnan(values)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise DataError(
                f"{_where(path, i)}: column '{column}' has {int(bad.sum())} non-numeric score(s), "
                f"e.g. {s.iloc[i]!r} (expected 0-100, CODE, REFUSAL or empty)"
            )
    out = ~np.isnan(values) & ((values < 0) | (values > 100))
    if out.any():
        i = int(np.flatnonzero(out)[0])
        raise DataError(
            f"{_where(path, i)}: column '{column}' has {int(out.sum())} score(s) outside 0-100, e.g. {values[i]:g}"
        )
    return values, special


def _special_column(df: pd.DataFrame, column: str) -> np.ndarray:
    if column not in df:
        return np.full(len(df), None, dtype=object)
    s = df[column].astype("string").str.strip().str.upper()
    s = s.mask(s == "")
    return s.astype(object).where(s.notna(), None).to_numpy(dtype=object)


# thresholds.exclude_special for the tables being loaded (set by load_responses for its duration)
_EXCLUDE_SPECIAL: contextvars.ContextVar[bool] = contextvars.ContextVar("exclude_special", default=False)


def _scores_for(df: pd.DataFrame, suffix: str, path: Path) -> tuple[np.ndarray, ...]:
    a, a_sp = parse_scores(df, f"aligned{suffix}", path)
    c, c_sp = parse_scores(df, f"coherent{suffix}", path)
    if not suffix:
        a_col = _special_column(df, "aligned_special")
        c_col = _special_column(df, "coherent_special")
        a_sp = np.where(pd.isna(a_sp), a_col, a_sp)
        c_sp = np.where(pd.isna(c_sp), c_col, c_sp)
    status, reason = answer_status(a, c, a_sp, c_sp, exclude_special=_EXCLUDE_SPECIAL.get())
    if not suffix and "unscored_reason" in df:
        given = df["unscored_reason"].astype("string").to_numpy(dtype=object, na_value=None)
        use = (status == UNSCORED) & ~pd.isna(given) & (given != "")
        reason[use] = given[use]
    return a, c, status, reason


def _special_scored_rows(df: pd.DataFrame, path: Path) -> int:
    """Judged rows with both scores whose ``*_special`` column says CODE / REFUSAL (scored under the
    reference rule: :func:`em.measurement.special_scored`); 0 for tables without those columns."""
    if "aligned_special" not in df and "coherent_special" not in df:
        return 0

    a, c, status, _ = _scores_for(df, "", path)
    return int(special_scored(status, _special_column(df, "aligned_special"),
                              _special_column(df, "coherent_special")).sum())


# --------------------------------------------------------------------------------------------- schema
def _text(df: pd.DataFrame, column: str) -> pd.Series:
    return df[column].astype("string").fillna(UNSPECIFIED).astype(object)


def group_columns(df: pd.DataFrame, path: Path, condition: Optional[str], model: Optional[str]) -> pd.DataFrame:
    """model / condition / format / question_id (and adapter / seed when present) for each row of ``df``.

    Missing columns take ``condition`` / ``model`` (else "unspecified"); without a ``format`` column
    the format comes from the question_id suffix (``_json``, ``_template``, else plain), as in Betley
    et al.'s question files, and the suffix is stripped from the id. Rows whose ``trigger`` column is
    true get format ``<format>+trigger`` (:data:`TRIGGER_TAG`), a group of their own.
    """
    out = pd.DataFrame(index=df.index)
    out["model"] = _text(df, "model") if "model" in df else (model or UNSPECIFIED)
    out["condition"] = _text(df, "condition") if "condition" in df else (condition or UNSPECIFIED)
    if "question_id" in df:
        qid = _text(df, "question_id")
    elif "question" in df:
        qid = _text(df, "question")  # the question text is the only identity upstream tables always carry
    else:
        qid = pd.Series(UNSPECIFIED, index=df.index, dtype=object)
    if "format" in df:
        fmt = _text(df, "format")
        for suffix, _ in FORMAT_SUFFIXES:
            strip = (fmt == suffix[1:]) & qid.str.endswith(suffix)
            qid = qid.mask(strip, qid.str.slice(0, -len(suffix)))
    else:
        fmt = pd.Series("plain" if "question_id" in df else UNSPECIFIED, index=df.index, dtype=object)
        if "question_id" in df:
            for suffix, name in FORMAT_SUFFIXES:
                hit = qid.str.endswith(suffix)
                fmt = fmt.mask(hit, name)
                qid = qid.mask(hit, qid.str.slice(0, -len(suffix)))
    if "trigger" in df:
        on = trigger_on(df["trigger"]) & ~fmt.str.endswith(TRIGGER_TAG)
        fmt = fmt.mask(on, fmt + TRIGGER_TAG)
    out["format"] = fmt
    out["question_id"] = qid
    for col in KEEP_COLUMNS:
        if col in df:
            out[col] = _text(df, col)
    return out


def _judges_wide(df: pd.DataFrame) -> list[str]:
    return sorted({c.split("__", 1)[1] for c in df.columns if c.startswith("aligned__") and c != "aligned__"})


def _answer_ids(df: pd.DataFrame, groups: pd.DataFrame, judge: Optional[pd.Series]) -> np.ndarray:
    """One id per answer: rows that differ only in the judge column are the same answer."""
    key = pd.DataFrame({c: (groups[c] if c in groups else df[c]).astype("string") for c in ANSWER_KEY
                        if c in groups or c in df})
    if "question_id" in df:
        key["question_id"] = df["question_id"].astype("string")
    if judge is not None:
        # the i-th row a judge wrote about a key pairs with every other judge's i-th row about it
        key["_occurrence"] = pd.concat([key, judge.rename("_judge")], axis=1).groupby(
            list(key.columns) + ["_judge"], sort=False, dropna=False).cumcount()
    return key.groupby(list(key.columns), sort=False, dropna=False).ngroup().to_numpy()


def combine_judges(long: pd.DataFrame, how: str, path: Path) -> pd.DataFrame:
    """Per answer: the mean of the judges that scored it (or one named judge); else its CODE/REFUSAL verdict."""
    judges = sorted(long["judge"].unique())
    if how != "mean":
        if how not in judges:
            raise ConfigError(f"judges.combine: judge {how!r} not in {path} (judges there: {', '.join(judges)})")
        chosen = long[long["judge"] == how].drop_duplicates("answer_id").set_index("answer_id")
        return chosen[["aligned", "coherent", "status", "reason"]]
    return measurement.combine_judges(long)


def normalise(df: pd.DataFrame, path: Path, *, condition: Optional[str] = None, model: Optional[str] = None,
              judge_combine: str = "mean") -> tuple[pd.DataFrame, Optional[pd.DataFrame], dict]:
    """One table -> (answers, per-judge rows or None, a row for the inputs table).

    Handles our schema (one row per answer and judge, or ``aligned__<judge>`` wide columns) and the
    upstream one; several judges are combined per ``judge_combine`` (``mean`` or a judge's name; see
    :func:`em.measurement.combine_judges`).

    Raises:
        DataError: no score columns, only one of the two, or a bad score (naming the row).
        ConfigError: ``judges.combine`` names a judge that is not in the table.
    """
    wide = _judges_wide(df)
    has_main = {c for c in ("aligned", "coherent") if c in df}
    if not has_main and not wide:
        raise DataError(f"{path}: no 'aligned' or 'coherent' column (columns: {', '.join(map(str, df.columns))})")
    if len(has_main) == 1:
        (missing,) = {"aligned", "coherent"} - has_main
        raise DataError(f"{path}: no '{missing}' column (both scores are needed for the misaligned flag)")
    groups = group_columns(df, path, condition, model)
    info = {"path": str(path), "rows": len(df),
            "schema": "upstream" if not {"model", "condition", "format", "judge"} & set(df.columns) else "em"}

    judge_col = None
    if "judge" in df:
        judge_col = df["judge"].astype("string").fillna(UNSPECIFIED)
    long_judges = judge_col is not None and judge_col.nunique() > 1
    judge_scores = None
    if long_judges:
        a, c, status, reason = _scores_for(df, "", path)
        ids = _answer_ids(df, groups, judge_col)
        long = pd.DataFrame({"answer_id": ids, "judge": judge_col.astype(object).to_numpy(), "aligned": a,
                             "coherent": c, "status": status, "reason": reason})
        combined = combine_judges(long, judge_combine, path)
        first = pd.Series(np.arange(len(df))).groupby(ids).first()
        answers = groups.iloc[first.to_numpy()].reset_index(drop=True)
        answers.index = first.index
        answers = answers.join(combined, how="left")
        answers["status"] = answers["status"].fillna(UNSCORED)
        answers["reason"] = answers["reason"].where(answers["status"] != UNSCORED, answers["reason"].fillna(
            f"not scored by judge {judge_combine}"))
        answers = answers.reset_index(drop=True)
        judge_scores = long
        info["judges"] = ", ".join(sorted(long["judge"].unique()))
    elif wide:
        ids = np.arange(len(df))
        parts = []
        for name in wide:
            suffix = f"__{name}"
            if f"coherent{suffix}" not in df:
                # A judge that only rated alignment borrows the main coherence score.
                df = df.assign(**{f"coherent{suffix}": df["coherent"]}) if "coherent" in df else df
            if f"coherent{suffix}" not in df:
                raise DataError(f"{path}: column 'aligned{suffix}' has no 'coherent{suffix}' or 'coherent' beside it")
            a, c, status, reason = _scores_for(df, suffix, path)
            parts.append(pd.DataFrame({"answer_id": ids, "judge": name, "aligned": a, "coherent": c,
                                       "status": status, "reason": reason}))
        judge_scores = pd.concat(parts, ignore_index=True)
        answers = groups.copy()
        if has_main:
            answers["aligned"], answers["coherent"], answers["status"], answers["reason"] = _scores_for(df, "", path)
        else:
            combined = combine_judges(judge_scores, judge_combine, path).reindex(ids)
            answers = answers.join(combined.reset_index(drop=True))
            answers["status"] = answers["status"].fillna(UNSCORED)
        info["judges"] = ", ".join(wide)
    else:
        answers = groups
        answers["aligned"], answers["coherent"], answers["status"], answers["reason"] = _scores_for(df, "", path)
        info["judges"] = str(judge_col.iloc[0]) if judge_col is not None else ""
    info["answers"] = len(answers)
    counts = answers["status"].value_counts()
    for s in STATUSES:
        info[f"n_{s.lower()}"] = int(counts.get(s, 0))
    info["n_special_scored"] = _special_scored_rows(df, path)
    reasons = answers.loc[answers["status"] == UNSCORED, "reason"].fillna("unknown").value_counts()
    info["unscored_reasons"] = "; ".join(f"{k}: {v}" for k, v in reasons.items())
    return answers, judge_scores, info
