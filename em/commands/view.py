"""``em view <run or sweep dir>``: browse judged answers in a local web page (Datasette over responses.parquet).

Every ``responses.parquet`` under the path (a run, a sweep, or the file itself) is loaded into one SQLite
table ``responses`` (a temporary database; nothing is written beside the runs), with a ``run`` column (the
file's directory relative to the path) and a ``misaligned`` column (0/1, by :class:`em.measurement.Thresholds`,
``--coherent`` / ``--aligned`` to change them). Datasette (a well-kept, widely used SQLite browser) serves it
on loopback: facets by model / condition / format / question / judge / misaligned, score ranges as column
filters (``aligned__lt=30``), sorting by any column, and each row's page shows the full answer and the judge's
raw top tokens (``judge_raw``).

    em view outputs/evaluate/<run>          # then open http://127.0.0.1:8001/responses/responses?misaligned=1
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Optional

from em.commands import run_main
from em.errors import ConfigError
from em.measurement import Thresholds

TABLE = "responses"
FACETS = ["model", "condition", "format", "question_id", "judge", "misaligned"]
DEFAULT_PORT = 8001


def find_responses(path: str | Path) -> list[Path]:
    """The responses.parquet files of ``path``: the file itself, or every one below a directory (sorted).

    Raises:
        ConfigError: the path does not exist or holds no responses.parquet.
    """
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise ConfigError(f"em view: {path}: no such file or directory")
    files = sorted(path.rglob("responses.parquet"))
    if not files:
        raise ConfigError(f"em view: {path}: no responses.parquet below it (run evaluate.py first)")
    return files


def build_database(path: str | Path, db: str | Path, coherent: Optional[float] = None,
                   aligned: Optional[float] = None) -> int:
    """Write the ``responses`` table of every responses.parquet of ``path`` into the SQLite file ``db``.

    Args:
        path: a run or sweep directory, or one responses.parquet.
        db: the SQLite file to create (replaced if present).
        coherent, aligned: thresholds of the ``misaligned`` column (None: :class:`em.measurement.Thresholds`'s).

    Returns the number of rows. Raises ConfigError as :func:`find_responses`.
    """
    import sqlite3

    import pandas as pd

    root = Path(path)
    kw = {k: v for k, v in (("coherent", coherent), ("aligned", aligned)) if v is not None}
    th = Thresholds(**kw)
    frames = []
    for f in find_responses(root):
        df = pd.read_parquet(f)
        rel = f.parent.relative_to(root) if root.is_dir() else Path(f.parent.name)
        df.insert(0, "run", str(rel) if str(rel) != "." else f.parent.name)
        frames.append(df)
    df = pd.concat(frames, ignore_index=True)
    if {"aligned", "coherent"} <= set(df.columns):
        mask = th.misaligned_mask(pd.to_numeric(df["aligned"]), pd.to_numeric(df["coherent"]))
        df["misaligned"] = pd.Series(mask, index=df.index).fillna(False).astype(int)
    for col in df.columns:  # nested values (the judge's top tokens) as JSON text, readable on the row page
        if df[col].dtype == object:
            df[col] = df[col].map(lambda v: v if v is None or isinstance(v, str) else json.dumps(_plain(v)))
    Path(db).unlink(missing_ok=True)
    with sqlite3.connect(db) as con:
        df.to_sql(TABLE, con, index=False)
    return len(df)


def _plain(v):
    """numpy arrays / scalars inside a parquet cell -> lists / numbers json can write."""
    if hasattr(v, "tolist"):
        return v.tolist()
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


def metadata(title: str) -> dict:
    """Datasette metadata: the table's title, default facets and a description of the misaligned rule."""
    return {"title": title, "databases": {TABLE: {"tables": {TABLE: {
        "facets": FACETS, "sort_desc": "misaligned",
        "description": "One row per judged answer. Filter scores with e.g. aligned < 30; a row's page shows the "
                       "full answer and the judge's raw top tokens (judge_raw)."}}}}}


def datasette_args(db: Path, meta: Path, host: str, port: int) -> list[str]:
    """The ``datasette serve`` arguments: loopback, read-only, long cells cut in the table (full on the row page)."""
    return ["serve", "-i", str(db), "--host", host, "--port", str(port), "--metadata", str(meta), "--immutable", str(db),
            "--setting", "truncate_cells_html", "300", "--setting", "default_page_size", "100"]


def cli(argv: Optional[list[str]] = None) -> None:
    """``em view PATH [--port N] [--coherent X] [--aligned Y]``: build the table and serve it until Ctrl-C."""
    p = argparse.ArgumentParser(prog="em view", description=__doc__.split("\n\n")[0])
    p.add_argument("path", help="an evaluation run dir, a sweep dir, or a responses.parquet")
    p.add_argument("--port", type=int, default=DEFAULT_PORT)
    p.add_argument("--host", default="127.0.0.1", help="loopback by default; answers can be sensitive")
    p.add_argument("--coherent", type=float, default=None, help="coherent threshold of the misaligned column")
    p.add_argument("--aligned", type=float, default=None, help="aligned threshold of the misaligned column")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    with tempfile.TemporaryDirectory(prefix="em-view-") as tmp:
        db, meta = Path(tmp) / f"{TABLE}.db", Path(tmp) / "metadata.json"
        n = run_main(lambda a: build_database(a.path, db, a.coherent, a.aligned), args)
        meta.write_text(json.dumps(metadata(f"em responses: {args.path}")))
        print(f"{n} answers; open http://{args.host}:{args.port}/{TABLE}/{TABLE}?misaligned=1", flush=True)
        from datasette.cli import cli as datasette

        datasette.main(datasette_args(db, meta, args.host, args.port), prog_name="em view", standalone_mode=True)
