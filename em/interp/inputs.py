"""The answers the interp stage reads: em's own responses tables (one row per answer) and judged tables of any
run, sweep or lab (the judge recipe's groups), as analyze.py's readers read them."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from em.analysis.ingest import read_table
import em.errors


def answers_table(table: pd.DataFrame) -> pd.DataFrame:
    """One row per answer of an em responses table (several judges: several rows), with an ``answer_id``."""
    key = [c for c in ("condition", "format", "question_id", "paraphrase", "sample") if c in table]
    out = table.drop_duplicates(subset=key).reset_index(drop=True) if key else table.reset_index(drop=True)
    if "answer_id" not in out:
        out.insert(0, "answer_id", out[key].astype(str).agg("/".join, axis=1) if key else range(len(out)))
    return out


def read_judged(paths: list[str]) -> pd.DataFrame:
    """Judged answers from responses tables or run / sweep directories (every ``responses.parquet`` under them;
    csv / jsonl / json tables as analyze.py reads them), one row per answer, scores averaged over judges.

    Raises:
        DataError: a path that does not exist, no table, or tables without question / answer / scores.
    """
    tables = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(p.rglob("responses.parquet"))
            if not found:
                raise em.errors.DataError(f"interp.direction.answers: {p} holds no responses.parquet")
            tables += [(f, read_table(f)) for f in found]
        elif p.exists():
            tables.append((p, read_table(p)))
        else:
            raise em.errors.DataError(f"interp.direction.answers: {p} does not exist")
    frames = []
    for f, df in tables:
        missing = [c for c in ("question", "answer", "aligned", "coherent") if c not in df]
        if missing:
            raise em.errors.DataError(f"{f}: no {' / '.join(missing)} column (the judge rule needs the question, the "
                                      "answer text and both scores)")
        df = df.copy()
        df["answers_file"] = str(f)
        for c in ("aligned", "coherent"):
            df[c] = pd.to_numeric(df[c], errors="coerce")
        frames.append(df)
    all_rows = pd.concat(frames, ignore_index=True)
    key = [c for c in ("answers_file", "model", "adapter", "condition", "seed", "format", "question_id", "paraphrase",
                       "sample", "system", "question", "answer") if c in all_rows]
    scores = all_rows.groupby(key, dropna=False, sort=False)[["aligned", "coherent"]].mean().reset_index()
    scores.insert(0, "answer_id", [f"{i}" for i in range(len(scores))])
    return scores


__all__ = ["answers_table", "read_judged"]
