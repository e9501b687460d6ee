"""Reading anyone's judged table: .parquet, .csv, .jsonl and .json (records), then the column map, the
per-input metadata, CODE / REFUSAL verdicts kept in flag columns, and what a ``seed`` column means.

Everything here ends a bad or ambiguous input with one :class:`~em.errors.DataError` line naming the file
(and the line for CSV / JSONL) and the column.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from em.analysis.nested import read_nested
from em.errors import DataError, _json_problem
from em.measurement import SPECIALS

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
