"""Small facts and file operations every stage shares: one definition each.

* :func:`atomic_write` / :func:`atomic_write_text` / :func:`atomic_write_json` / :func:`atomic_replace_dir`
  -- a reader (or a killed writer) never sees half a file: write a temp file *in the same directory*
  (so the final ``os.replace`` is a rename on one filesystem), then rename it over the target.
* :func:`atomic_write_csv` -- every CSV em writes: each text field quoted, so ``\r`` / ``\n`` / quotes /
  commas inside an answer never split a row (round trip through :func:`em.analysis.io.read_table`).
* :func:`in_multirun` -- are we one job of a Hydra ``-m`` sweep?
* :func:`is_wandb_logger` -- does a ``logger`` config node build W&B?
* :data:`CONF_DIR` -- the packaged Hydra config root (for ``initialize_config_dir`` only; nothing opens a
  YAML under it by path).

Light on purpose (stdlib + omegaconf only): imported on the ``--help`` path.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

CONF_DIR = Path(__file__).resolve().parent / "conf"


def atomic_write(path: str | Path, write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp)`` on a unique temp path beside ``path``, then rename it onto ``path``.

    Args:
        path: the final file. Its parent directory is created.
        write: writes the whole content to the path it is given (e.g. ``df.to_parquet``).

    Returns the final path. On any exception the temp file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write`)."""
    return atomic_write(path, lambda p: p.write_text(text, encoding=encoding))


def atomic_write_json(path: str | Path, obj: Any, indent: Optional[int] = 2) -> Path:
    """Write ``obj`` as JSON atomically; values JSON cannot hold (paths, numpy scalars) go through ``str``."""
    return atomic_write_text(path, json.dumps(obj, indent=indent, default=_jsonable))


def atomic_write_csv(path: str | Path, df: Any) -> Path:
    """Write a pandas DataFrame as CSV atomically, every non-numeric field quoted (``csv.QUOTE_NONNUMERIC``).

    The csv module's minimal quoting does not quote a bare ``\r`` (only the line terminator's characters),
    and pandas' reader ends a row at one: quoting every text field keeps answers with CR, LF, NUL, quotes
    or commas in one row. Missing values are written as empty fields.
    """
    import csv

    return atomic_write(path, lambda p: df.to_csv(p, index=False, quoting=csv.QUOTE_NONNUMERIC))


def atomic_replace_dir(src: str | Path, dest: str | Path) -> Path:
    """Move a finished directory ``src`` onto ``dest`` (same filesystem), replacing an older ``dest``.

    The old ``dest`` is renamed aside first and removed only after the new one is in place, so a kill
    leaves either the old or the new directory under ``dest``, never a half-written one.
    """
    src, dest = Path(src), Path(dest)
    old = None
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old{os.getpid()}")
        os.replace(dest, old)
    os.replace(src, dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return dest


def read_json(path: str | Path) -> Optional[dict]:
    """A JSON file's content, or None when it is missing or unreadable (a torn or foreign file)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def _jsonable(x: Any) -> Any:
    if hasattr(x, "item"):  # numpy / torch scalars
        return x.item()
    return str(x)


def in_multirun() -> bool:
    """True inside a job of a Hydra multirun (``-m``); False in a single run or outside Hydra."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    except Exception:  # noqa: BLE001  outside a Hydra app (tests composing by hand): not a multirun
        return False


def is_wandb_logger(node: Optional[Mapping[str, Any]]) -> bool:
    """Does this ``logger`` config node (a ``_target_`` node, or null) build the W&B logger?"""
    if not node:
        return False
    return str(node.get("_target_") or "").endswith("wandb_logger")


_MODEL_LOADS = 0


def count_model_load() -> None:
    """Record that this process loaded a model (em.models calls it on every base-model load)."""
    global _MODEL_LOADS
    _MODEL_LOADS += 1


def model_loads() -> int:
    """Model loads in this process so far (a skipped sweep job reads 0 without importing torch)."""
    return _MODEL_LOADS


def drop_empty_run_dir() -> None:
    """A refused run leaves no trace: remove Hydra's run directory when all it holds is empty log files (a run
    directory with anything else in it, e.g. an earlier run's results, is left exactly as it was)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        if in_multirun():
            return
        d = Path(HydraConfig.get().runtime.output_dir)
    except Exception:  # noqa: BLE001 - no Hydra context (called as a library): nothing of ours to clean
        return
    files = [p for p in d.rglob("*") if p.is_file()] if d.is_dir() else []
    if d.is_dir() and all(p.suffix == ".log" and p.stat().st_size == 0 for p in files):
        logging.shutdown()  # the log handlers hold the (empty) files open
        shutil.rmtree(d, ignore_errors=True)
