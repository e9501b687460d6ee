"""Finding the responses tables an analysis reads: files, run and sweep directories, or the newest run."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Sequence

from em.errors import DataError

log = logging.getLogger(__name__)

TABLE_NAMES = ("responses.parquet", "responses.csv")  # evaluate.py's outputs; parquet wins in one directory


def tables_under(directory: Path) -> list[Path]:
    """Every run directory below `directory` (itself included) with a responses table; parquet wins."""
    found = []
    for root, dirs, files in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "wandb")
        for name in TABLE_NAMES:
            if name in files:
                found.append(Path(root) / name)
                break
    return found


def latest_run_tables(outputs_root: Path) -> list[Path]:
    """The responses tables of the newest run under ``<outputs_root>/evaluate`` (by table mtime).

    Raises:
        DataError: no evaluation run with a responses table there.
    """
    evaluate = outputs_root / "evaluate"
    runs = []
    if evaluate.is_dir():
        for run in evaluate.iterdir():
            if run.is_dir() and not run.name.startswith("."):
                tables = tables_under(run)
                if tables:
                    runs.append((max(t.stat().st_mtime for t in tables), run.name, tables))
    if not runs:
        raise DataError(
            f"{evaluate}: no evaluation run with a responses table; run evaluate.py first or pass inputs=[...]"
        )
    _, name, tables = max(runs)
    log.info("no inputs given: analysing the latest evaluation run %s", evaluate / name)
    return tables


def find_tables(inputs: Sequence[str], outputs_root: Path) -> list[Path]:
    """The responses tables ``inputs`` name: files as given, directories searched recursively
    (:func:`tables_under`); no inputs: :func:`latest_run_tables`. Duplicates are dropped.

    Raises:
        DataError: an input that does not exist, a file that is not .parquet / .csv, a directory without
            a responses table.
    """
    if not inputs:
        return latest_run_tables(outputs_root)
    found: list[Path] = []
    for raw in inputs:
        path = Path(raw).expanduser()
        if not path.exists():
            raise DataError(f"{raw}: input not found (inputs=[...] takes run directories and .parquet/.csv files)")
        if path.is_file():
            if path.suffix.lower() not in (".parquet", ".csv"):
                raise DataError(f"{path}: not a .parquet or .csv file")
            found.append(path)
            continue
        tables = tables_under(path)
        if not tables:
            raise DataError(f"{path}: no responses.parquet or responses.csv under this directory")
        found.extend(tables)
    unique: dict[Path, Path] = {}
    for p in found:
        unique.setdefault(p.resolve(), p)
    return list(unique.values())
