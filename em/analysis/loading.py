"""Loading every responses table of an analysis into one :class:`~em.analysis.io.Responses`.

Per table: read (:mod:`em.analysis.readers`), map columns and metadata, warn about exact duplicate rows,
normalise (:func:`em.analysis.io.normalise`); across tables: identical sweep jobs read once and swept keys
appended to the model name (:mod:`em.analysis.inputs`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional, Sequence

import pandas as pd

from em.analysis import readers
from em.analysis.inputs import TableInput, swept_labels
from em.analysis.io import (_EXCLUDE_SPECIAL, KEEP_COLUMNS, TRIGGER_TAG, UNSPECIFIED, Responses, normalise,
                            read_table)
from em.errors import ConfigError, DataError

log = logging.getLogger("em.analysis")


def load_responses(tables: Sequence[TableInput | Path], *, condition: Optional[str] = None,
                   model: Optional[str] = None, judge_combine: str = "mean", columns: Optional[dict] = None,
                   seed_kind: str = "sampling", exclude_special: bool = False,
                   dedupe: bool = False) -> Responses:
    """Read and normalise every table into one :class:`Responses`.

    Each table goes through :func:`em.analysis.readers.prepare` (column map ``columns``, its input's
    metadata, flag columns, ``seed_kind``). Tables found by scanning a folder that have no score column
    are skipped (listed in the notes); tables of identical sweep jobs (same hash) are read once; keys a
    sweep varied beyond model / data / seed are appended to the model name (``model[optimizer.lr=1e-05]``),
    so they group the rates and appear in every table.

    Exact duplicate rows of a table are warned about (and dropped with ``dedupe``). ``exclude_special``: ``thresholds.exclude_special`` (the paper's exclusion of CODE / REFUSAL top tokens
    with scores; default off, the reference judge's rule: :func:`em.measurement.answer_status`).

    Exact duplicate rows of a table are counted (``duplicates`` in the inputs table), warned about and,
    with ``dedupe``, counted once.

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
        df = readers.read_records(t.path, records) if records else read_table(t.path)
        dup = df.astype("string").duplicated(keep="first").to_numpy()
        if dup.any():
            what = "dropped (dedupe=true)" if dedupe else "counted as they are (dedupe=true counts them once)"
            log.warning("%s: %d exact duplicate row(s), %s", t.path, int(dup.sum()), what)
            notes.append(f"{t.path}: {int(dup.sum())} exact duplicate row(s), {what}.")
            if dedupe:
                df = df[~dup].reset_index(drop=True)
        if t.scanned and not readers.has_scores(df.rename(columns={v: k for k, v in (columns or {}).items()})):
            skipped.append(str(t.path))
            continue
        df = readers.prepare(df, t.path, meta, columns or {}, seed_kind)
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
