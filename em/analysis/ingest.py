"""Ingestion: read anyone's judged table and normalise it into one answers table, each answer's status from
:mod:`em.measurement` (which tables to read: :mod:`em.analysis.inputs`).

* Reading (:func:`read_table`, :func:`read_records`): .parquet, .csv, .jsonl, .json (a list of records; nested
  JSON via :mod:`em.analysis.nested`); :func:`prepare`: column map, per-input metadata, CODE / REFUSAL flag
  columns, what a ``seed`` column means.
* Normalising (:func:`normalise`), two schemas: ours (evaluate.py: one row per judged answer with model /
  condition / format, several judges as a ``judge`` column or ``aligned__<judge>`` columns) and the upstream one
  (Betley et al.'s ``eval.py``: question, answer, question_id, aligned, coherent; the format in the question id
  suffix, "CODE" / "REFUSAL" in the score column).
* Loading (:func:`load_responses`): every table into one :class:`Responses`.

A bad or ambiguous input ends with one :class:`~em.errors.DataError` line naming the file (and the line for CSV /
JSONL) and the column.
"""

from __future__ import annotations

import contextvars
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import pandas as pd

from em import measurement
from em.analysis.inputs import TableInput, swept_labels
from em.analysis.nested import read_nested
from em.errors import ConfigError, DataError, _json_problem
from em.measurement import SPECIALS, STATUSES, UNSCORED, answer_status, special_scored

log = logging.getLogger("em.analysis")
GROUP_COLUMNS = ("model", "condition", "format", "question_id")
UNSPECIFIED = "unspecified"  # a missing model / condition / format: one group, not mistaken for a real value
FORMAT_SUFFIXES = (("_json", "json"), ("_template", "template"))
# Identify one answer, so the rows several judges wrote about it line up.
ANSWER_KEY = ("model", "adapter", "condition", "seed", "sample_seed", "format", "question_id", "paraphrase",
              "sample", "system", "question", "answer", "trigger", "step")
# Kept per answer: step (optimizer step, em.analysis.steps), trigger (on / off), score mode (the judge's label).
KEEP_COLUMNS = ("adapter", "seed", "trigger", "step", "judge_score_mode", "score_mode")
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

    answers: pd.DataFrame
    judge_scores: Optional[pd.DataFrame]
    sources: pd.DataFrame
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------- reading
# em's own evaluate.py tables: the seed column there is the fine-tuning run's seed.
EM_COLUMNS = {"model", "condition", "format", "question_id", "paraphrase", "sample", "seed"}
NO_FLAG = {"", "NONE", "NAN", "NULL", "FALSE", "0", "NO", "OK"}


def _read_jsonl(path: Path) -> pd.DataFrame:
    records = []
    with path.open(encoding="utf-8", newline="\n") as f:  # lines end at \n only, as an editor counts them
        for i, line in enumerate(f, start=1):
            text = line.rstrip("\r\n")
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except ValueError as e:
                raise DataError(f"{path}:{i}: not valid JSON ({_json_problem(e, text)})") from None
            if not isinstance(obj, dict):
                raise DataError(f"{path}:{i}: a JSONL record must be an object, got {type(obj).__name__}")
            records.append(obj)
    return pd.DataFrame.from_records(records)


def _read_json(path: Path) -> pd.DataFrame:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(obj, list) or not all(isinstance(r, dict) for r in obj):
        raise DataError(f"{path}: a .json input must be a list of records (objects), got {type(obj).__name__}")
    return pd.DataFrame.from_records(obj)


TEXT_COLUMNS = ("question", "answer", "system", "unscored_reason", "judge_raw")


def read_table(path: Path) -> pd.DataFrame:
    """Read one .parquet / .csv / .jsonl / .json (list of records) table, column names stripped.

    Raises:
        DataError: an empty or unreadable file, a bad JSON line (named), or a table without rows.
    """
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            df = pd.read_parquet(path)
        elif suffix == ".jsonl":
            df = _read_jsonl(path)
        elif suffix == ".json":
            df = _read_json(path)
        else:  # free text as written: an answer "NA" or "None" stays text; only an empty field is missing
            from pandas._libs.parsers import STR_NA_VALUES

            header = pd.read_csv(path, nrows=0).columns
            na = {c: [""] if str(c).strip() in TEXT_COLUMNS else sorted(STR_NA_VALUES) for c in header}
            df = pd.read_csv(path, low_memory=False, keep_default_na=False, na_values=na)
    except DataError:
        raise
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: empty file (no header, no rows)") from None
    except Exception as e:  # pyarrow / parser errors come in many classes; the message is what helps
        raise DataError(f"{path}: cannot read ({e.__class__.__name__}: {str(e).splitlines()[0]})") from None
    if len(df) == 0:
        raise DataError(f"{path}: no rows")
    df.columns = [str(c).strip() for c in df.columns]
    return df.reset_index(drop=True)


def read_records(path: Path, records: str) -> pd.DataFrame:
    """A nested JSON file's records along ``records`` (``inputs=[{path: f.json, records: ...}]``,
    :func:`em.analysis.nested.read_nested`), column names stripped.

    Raises:
        DataError: not a .json file, or what :func:`em.analysis.nested.read_nested` raises.
    """
    if path.suffix.lower() != ".json":
        raise DataError(f"{path}: inputs[].records applies to .json files only")
    df = read_nested(path, records)
    df.columns = [str(c).strip() for c in df.columns]
    return df.reset_index(drop=True)


def where(path: Path, row: int) -> str:
    """A row's place for an error: ``file:line`` for CSV (the physical line where the row's record starts,
    quoted fields spanning lines counted; :func:`csv_line`) and JSONL, else ``file (row i)``."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return f"{path}:{csv_line(path, row)}"
    return f"{path}:{row + 1}" if suffix == ".jsonl" else f"{path} (row {row})"


def csv_line(path: Path, row: int) -> int:
    """The 1-based physical line (``\\n``-terminated, as an editor or ``grep -n`` counts) where data row ``row``
    (0-based, the header not counted) of a CSV file starts.

    A quoted field may span lines (answers with newlines), so the record number is not the line: the file is
    scanned again up to that record with the csv module (only when an error is reported; blank lines are
    skipped as pandas skips them). Falls back to ``row + 2`` when the file cannot be scanned so.
    """
    import csv
    import sys

    csv.field_size_limit(max(csv.field_size_limit(), min(sys.maxsize, 2**31 - 1)))  # long answers are fields
    try:
        with path.open(encoding="utf-8-sig", errors="replace", newline="\n") as f:
            reader = csv.reader(f)
            end, index = 0, -1  # index -1: the header
            for record in reader:
                start, end = end + 1, reader.line_num
                if not record:
                    continue
                if index == row:
                    return start
                index += 1
    except (OSError, csv.Error):
        pass
    return row + 2


def _flags(df: pd.DataFrame, column: str, path: Path) -> pd.Series:
    text = df[column].astype("string").str.strip().str.upper().fillna("")
    bad = ~text.isin(set(SPECIALS) | NO_FLAG)
    if bad.any():
        i = int(bad.to_numpy().nonzero()[0][0])
        raise DataError(f"{where(path, i)}: column '{column}' holds {df[column].iloc[i]!r}, not a verdict "
                        f"(expected {', '.join(SPECIALS)}, or NONE / empty for none)")
    return text.where(text.isin(SPECIALS)).astype(object)


def prepare(df: pd.DataFrame, path: Path, meta: dict[str, Any], columns: dict[str, str],
            seed_kind: str = "sampling") -> pd.DataFrame:
    """Rename ``columns`` (em field -> their column), add ``meta`` as constant columns, read flag columns.

    ``aligned_flag`` / ``coherent_flag`` (after renaming) become ``aligned_special`` / ``coherent_special``.
    A ``seed`` column in a table that is not em's own becomes ``sample_seed`` unless ``seed_kind`` is
    ``training`` (a seed given in ``meta`` is always a training seed).

    Raises:
        DataError: a mapped column absent, a mapped column beside a column already named like the field,
            a metadata key the table already has as a column, a flag value that is not a verdict.
    """
    own = EM_COLUMNS <= set(df.columns) and not columns
    rename = {}
    for key, col in columns.items():
        if col not in df:
            raise DataError(f"{path}: column '{col}' (columns.{key}={col}) not found; columns: {', '.join(df.columns)}")
        if key != col and key in df:
            raise DataError(f"{path}: columns '{key}' and '{col}' (columns.{key}={col}) are both present: ambiguous "
                            f"(drop or rename one)")
        if col in rename:
            raise DataError(f"{path}: column '{col}' is mapped twice (columns.{rename[col]} and columns.{key})")
        rename[col] = key
    df = df.rename(columns=rename)
    if "step" not in df and "checkpoint" in df:  # the checkpoint dimension (em.analysis.steps)
        df = df.rename(columns={"checkpoint": "step"})
    if "step" in df:
        _check_steps(df, path)
    if "seed" in df and not own and seed_kind == "sampling":
        df = df.rename(columns={"seed": "sample_seed"})
    for key, value in meta.items():
        if key in df:
            raise DataError(f"{path}: column '{key}' exists and the input also sets {key}={value}: ambiguous "
                            f"(drop the input's {key}, or map the column away with columns.{key}=...)")
        df[key] = value
    for score in ("aligned", "coherent"):
        flag = f"{score}_flag"
        if flag in df:
            if f"{score}_special" in df:
                raise DataError(f"{path}: columns '{flag}' and '{score}_special' both present: ambiguous")
            df[f"{score}_special"] = _flags(df, flag, path)
    return df


def _check_steps(df: pd.DataFrame, path: Path) -> None:
    """A step column holds integers (optimizer steps) or nothing: anything else is named with its row."""
    text = df["step"].astype("string").str.strip()
    num = pd.to_numeric(text.mask(text == ""), errors="coerce")
    bad = (text.notna() & (text != "") & (num.isna() | (num != num.round()) | (num < 0))).to_numpy(dtype=bool)
    if bad.any():
        i = int(bad.nonzero()[0][0])
        raise DataError(f"{where(path, i)}: column 'step' holds {df['step'].iloc[i]!r}, not a training step "
                        "(a non-negative integer, or empty for the final adapter)")
    df["step"] = num.astype("Int64")


def has_scores(df: pd.DataFrame) -> bool:
    """Does the (prepared) table have any score column (``aligned`` / ``coherent`` or ``aligned__<judge>``)?"""
    return any(c in ("aligned", "coherent") or c.startswith("aligned__") for c in df.columns)


# --------------------------------------------------------------------------------------------- scores
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
                f"{where(path, i)}: column '{column}' has {int(bad.sum())} non-numeric score(s), "
                f"e.g. {s.iloc[i]!r} (expected 0-100, CODE, REFUSAL or empty)"
            )
    out = ~np.isnan(values) & ((values < 0) | (values > 100))
    if out.any():
        i = int(np.flatnonzero(out)[0])
        raise DataError(
            f"{where(path, i)}: column '{column}' has {int(out.sum())} score(s) outside 0-100, e.g. {values[i]:g}"
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


# --------------------------------------------------------------------------------------------- loading
def load_responses(tables: Sequence[TableInput | Path], *, condition: Optional[str] = None,
                   model: Optional[str] = None, judge_combine: str = "mean", columns: Optional[dict] = None,
                   seed_kind: str = "sampling", exclude_special: bool = False,
                   dedupe: bool = False) -> Responses:
    """Read and normalise every table into one :class:`Responses`.

    Each table goes through :func:`prepare` (column map ``columns``, its input's metadata, flag columns,
    ``seed_kind``). Tables found by scanning a folder that have no score column are skipped (listed in the
    notes); tables of identical sweep jobs (same hash) are read once; keys a sweep varied beyond model / data /
    seed are appended to the model name (``model[optimizer.lr=1e-05]``), so they group the rates and appear in
    every table. ``exclude_special``: ``thresholds.exclude_special`` (the paper's exclusion of CODE / REFUSAL
    top tokens with scores; default off, the reference judge's rule: :func:`em.measurement.answer_status`).
    Exact duplicate rows of a table are counted (``duplicates`` in the inputs table), warned about and, with
    ``dedupe``, counted once.

    Raises:
        DataError: no tables, or a table :func:`read_table` / :func:`normalise` / ``prepare`` rejects.
        ConfigError: ``judges.combine`` names an absent judge.
    """
    token = _EXCLUDE_SPECIAL.set(bool(exclude_special))
    try:
        return _load_tables(tables, condition, model, judge_combine, columns, seed_kind, dedupe)
    finally:
        _EXCLUDE_SPECIAL.reset(token)


def _load_tables(tables, condition, model, judge_combine, columns, seed_kind, dedupe) -> Responses:
    tables = [t if isinstance(t, TableInput) else TableInput(Path(t)) for t in tables]
    if not tables:
        raise DataError("inputs: no responses tables found")
    labels, swept, duplicates = swept_labels(tables)
    answers, judges, infos, notes = [], [], [], []
    if duplicates:
        notes.append(f"{len(duplicates)} table(s) from sweep jobs identical to another (same job hash) were read "
                     f"once: {', '.join(str(tables[i].path) for i in duplicates)}.")
    if swept:
        notes.append(f"Sweep keys beyond model / data / seed group the answers (appended to the model name): "
                     f"{', '.join(swept)}.")
    skipped = []
    sampling_seed = False
    offset = 0
    for i, t in enumerate(tables):
        if i in duplicates:
            continue
        records = t.meta.get("records")  # nested JSON (em.analysis.nested): where the records lie, not a column
        meta = {k: v for k, v in t.meta.items() if k != "records"}
        df = read_records(t.path, records) if records else read_table(t.path)
        dup = df.astype("string").duplicated(keep="first").to_numpy()
        if dup.any():
            what = "dropped (dedupe=true)" if dedupe else "counted as they are (dedupe=true counts them once)"
            log.warning("%s: %d exact duplicate row(s), %s", t.path, int(dup.sum()), what)
            notes.append(f"{t.path}: {int(dup.sum())} exact duplicate row(s), {what}.")
            if dedupe:
                df = df[~dup].reset_index(drop=True)
        if t.scanned and not has_scores(df.rename(columns={v: k for k, v in (columns or {}).items()})):
            skipped.append(str(t.path))
            continue
        df = prepare(df, t.path, meta, columns or {}, seed_kind)
        sampling_seed |= "sample_seed" in df
        a, j, info = normalise(df, t.path, condition=condition, model=model, judge_combine=judge_combine)
        if labels[i]:
            a["model"] = a["model"].astype(str) + f"[{labels[i]}]"
            info["sweep"] = labels[i]
        info["duplicates"] = int(dup.sum())
        a.insert(0, "source", i)
        answers.append(a)
        if j is not None:
            j = j.assign(answer_id=j["answer_id"] + offset, source=i)
            judges.append(j)
        offset += len(a)
        infos.append(info)
    if skipped:
        notes.append(f"Files without score columns in the folders read were skipped: {', '.join(skipped)}.")
    if not answers:
        raise DataError(f"inputs: no table with score columns among {len(tables)} file(s) "
                        f"(e.g. {tables[0].path}); map other names with columns.aligned=... columns.coherent=...")
    table = pd.concat(answers, ignore_index=True)
    for col in ("model", "condition", "format", "question_id", "status"):
        table[col] = table[col].astype("category")
    for col in KEEP_COLUMNS:
        if col in table:
            table[col] = table[col].fillna(UNSPECIFIED).astype("category")
    sources = pd.DataFrame(infos)
    for col in ("model", "condition", "format"):
        if (table[col] == UNSPECIFIED).any():
            notes.append(f"Some tables have no '{col}' column (or empty values): those answers form one "
                         f"'{UNSPECIFIED}' {col} group.")
    if (sources["schema"] == "upstream").any():
        notes.append("Upstream-schema tables (question_id/question/answer/aligned/coherent only): format inferred "
                     "from the question_id suffix (_json, _template, else plain).")
    if "trigger" in table and table["format"].astype(str).str.endswith(TRIGGER_TAG).any():
        notes.append(f"Answers asked with the trigger form their own format group '<format>{TRIGGER_TAG}' (as in "
                     "evaluate.py's summary.json); rates pooled over formats (per condition, the headline) count both "
                     "arms: per arm, read the condition × format rows or trigger_contrast.csv.")
    if sampling_seed:
        notes.append("A per-answer `seed` column was read as a sampling seed (set columns.seed_kind=training if "
                     "it is the fine-tuning run's seed).")
    return Responses(answers=table, judge_scores=pd.concat(judges, ignore_index=True) if judges else None,
                     sources=sources, notes=notes)
