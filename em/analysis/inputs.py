"""Finding the tables an analysis reads: files, run and sweep directories, folders of other labs' files, or
the newest run; with each table its metadata (``inputs=[{path: ..., condition: ...}]``) and, inside a sweep,
the keys its job overrode and its job hash (``em_job.json`` / ``DONE.json``).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from em.errors import DataError

log = logging.getLogger(__name__)

TABLE_NAMES = ("responses.parquet", "responses.csv")  # evaluate.py's outputs; parquet wins in one directory
SUFFIXES = (".parquet", ".csv", ".jsonl", ".json")
# Files em itself writes beside its tables that are not answers.
NOT_TABLES = {"summary.json", "DONE.json", "em_job.json", "metrics.json", "plan.json"}
JOB_FILES = ("em_job.json", "DONE.json")


@dataclass
class TableInput:
    """One table to read.

    Attributes:
        path: the file.
        meta: constant columns from the input's mapping (condition, model, format, seed).
        scanned: found by scanning a folder of arbitrary files (a file without score columns is skipped).
        overrides: the Hydra overrides of the sweep job it belongs to (``key -> value``), else empty.
        job_hash: that job's identity hash (``em_job.json`` / ``DONE.json``), else None.
    """

    path: Path
    meta: dict[str, str] = field(default_factory=dict)
    scanned: bool = False
    overrides: dict[str, str] = field(default_factory=dict)
    job_hash: Optional[str] = None


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


def data_files_under(directory: Path) -> list[Path]:
    """Every .csv / .parquet / .jsonl / .json file below ``directory`` (sorted; hidden and wandb folders skipped)."""
    found = []
    for root, dirs, files in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "wandb")
        found += [Path(root) / f for f in sorted(files)
                  if Path(f).suffix.lower() in SUFFIXES and f not in NOT_TABLES and not f.startswith(".")]
    return found


def job_record(table: Path, root: Path) -> tuple[dict[str, str], Optional[str]]:
    """(Hydra overrides, identity hash) of the sweep job holding ``table``: the nearest ``.hydra/overrides.yaml``
    and ``em_job.json`` / ``DONE.json`` between the table's folder and ``root``; empty / None when absent.
    """
    overrides: dict[str, str] = {}
    identity: dict[str, str] = {}
    job_hash = None
    here = table.parent.resolve()
    top = root.resolve()
    while True:
        hydra = here / ".hydra" / "overrides.yaml"
        if not overrides and hydra.is_file():
            import yaml

            for item in yaml.safe_load(hydra.read_text()) or []:
                key, _, value = str(item).partition("=")
                overrides[key.lstrip("+~")] = value
        for name in JOB_FILES:
            if job_hash is None and (here / name).is_file():
                try:
                    record = json.loads((here / name).read_text())
                    job_hash = record.get("hash")
                    identity = _flatten(record.get("identity") or {})
                except (OSError, ValueError, AttributeError):
                    job_hash = None
        if here == top or here.parent == here or top not in here.parents:
            break
        here = here.parent
    # Without Hydra's record, the job identity (em_job.json) stands in: its differing leaves are what was swept.
    return overrides or {k: v for k, v in identity.items() if not set(k.split(".")) & set(NOT_SWEPT[:3])}, job_hash


def _flatten(d: dict, prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = json.dumps(v, sort_keys=True) if isinstance(v, list) else str(v)
    return out


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


def find_tables(inputs: Sequence[Any], outputs_root: Path) -> list[TableInput]:
    """The tables ``inputs`` name (paths, or mappings with ``path`` and metadata), duplicates dropped.

    A file is read as given (.parquet / .csv / .jsonl / .json). A directory is searched recursively for
    evaluate.py's responses tables; without any, every data file under it is read (:func:`data_files_under`).
    No inputs: :func:`latest_run_tables`.

    Raises:
        DataError: an input that does not exist, a file of another type, a directory without a table.
    """
    if not inputs:
        return [TableInput(p) for p in latest_run_tables(outputs_root)]
    found: list[TableInput] = []
    for i, item in enumerate(inputs):
        meta = dict(item) if isinstance(item, dict) else {"path": str(item)}
        raw = meta.pop("path")
        path = Path(raw).expanduser()
        if not path.exists():
            raise DataError(f"{raw}: input not found (inputs=[...] takes directories and "
                            f"{' / '.join(SUFFIXES)} files)")
        if path.is_file():
            if path.suffix.lower() not in SUFFIXES:
                raise DataError(f"{path}: not a {', '.join(SUFFIXES)} file")
            found.append(TableInput(path, meta))
            continue
        tables = tables_under(path)
        scanned = not tables
        if scanned:
            tables = data_files_under(path)
        if not tables:
            raise DataError(f"{path}: no responses table and no {' / '.join(SUFFIXES)} file under this directory")
        for t in tables:
            overrides, job_hash = job_record(t, path)
            found.append(TableInput(t, dict(meta), scanned, overrides, job_hash))
    unique: dict[Path, TableInput] = {}
    for t in found:
        unique.setdefault(t.path.resolve(), t)
    return list(unique.values())


# Keys a sweep varies that already are analysis dimensions (model, condition via data, seed) or say where a
# job runs rather than what it computes.
NOT_SWEPT = ("model", "data", "seed", "experiment", "hydra", "logger", "judge", "run_dir", "outputs_root",
             # columns of the answers table already (format; trigger as the <format>+trigger label), or settings
             # that change how a run goes, not what it measures
             "format", "trigger", "samples", "cache_dir", "wandb", "progress", "quiet", "verbose", "dry_run")


# model.* keys that change what the model is asked (not which model it is): swept, they label the groups
SWEPT_ANYWAY = ("model.default_system_prompt",)


def swept_labels(tables: list[TableInput]) -> tuple[list[str], list[str], list[int]]:
    """What each table's job swept beyond model / data / seed, and which tables repeat an identical job.

    Returns:
        (label per table such as ``optimizer.lr=1e-05`` ('' when nothing else was swept), the swept keys,
        the indices of tables whose job hash an earlier table already had: identical jobs, counted once).
    """
    keys = sorted({k for t in tables for k in t.overrides if k.split(".")[0] not in NOT_SWEPT or k in SWEPT_ANYWAY})
    swept = [k for k in keys if len({t.overrides.get(k) for t in tables}) > 1]
    labels = [",".join(f"{k}={t.overrides.get(k, '(default)')}" for k in swept) for t in tables]
    seen: set[str] = set()
    duplicates = []
    for i, t in enumerate(tables):
        if t.job_hash is not None:
            if t.job_hash in seen:
                duplicates.append(i)
            seen.add(t.job_hash)
    return labels, swept, duplicates
