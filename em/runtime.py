"""Small facts and file operations every stage shares: one definition each.

* :func:`atomic_write` / :func:`atomic_write_text` / :func:`atomic_write_json` / :func:`atomic_replace_dir`
  -- a reader (or a killed writer) never sees half a file: write a temp file *in the same directory*
  (so the final ``os.replace`` is a rename on one filesystem), then rename it over the target.
* Every file they publish has the mode ``open()`` would give it (0666 less the umask; :func:`honour_umask`):
  a temp file's 0600 would survive the rename, and a labmate could not read the results.
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
import time
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
        # mkstemp creates 0600 and the mode survives the rename: give the file the mode open() would have
        # (0666 less the umask), so labmates on shared storage can read the results
        _chmod_for_umask(tmp, 0o777 if tmp.is_dir() else 0o666)
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        from em.disk import note_path

        note_path(e, path)  # a full / read-only disk names the file (em.disk.storage_fault)
        raise
    return path


def current_umask() -> int:
    """The process's umask: Linux's ``/proc/self/status`` (no side effect, thread-safe), else read by setting
    and restoring it."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _chmod_for_umask(path: Path, base: int) -> None:
    """``chmod(path, base & ~umask)``: what a plain ``open()`` / ``mkdir()`` would have given it."""
    try:
        os.chmod(path, base & ~current_umask())
    except FileNotFoundError:  # the writer wrote nothing (it chose not to): os.replace reports it
        pass


def honour_umask(root: str | Path) -> None:
    """Give ``root`` and everything under it the modes ``open()`` / ``mkdir()`` would (0666 / 0777 less the
    umask): for directories em fills with writers that create private files (safetensors' ``save_file``
    writes 0600), before they are published. Call only on a directory this process just wrote."""
    root = Path(root)
    mask = current_umask()
    for p in [root, *root.rglob("*")]:
        if p.is_symlink():
            continue
        try:
            os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~mask)
        except FileNotFoundError:
            pass


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
    honour_umask(src)  # safetensors writes its files 0600: colleagues on shared storage could not read the adapter
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
    """Record that this process loaded a model (em.train.models calls it on every base-model load)."""
    global _MODEL_LOADS
    _MODEL_LOADS += 1


def model_loads() -> int:
    """Model loads in this process so far (a skipped sweep job reads 0 without importing torch)."""
    return _MODEL_LOADS


PROCESS_STARTED = time.time()  # (imported first thing by every entry point: before Hydra writes anything)


def drop_empty_run_dir(log_sizes: Optional[Mapping[str, int]] = None) -> None:
    """A refused run leaves no trace: remove Hydra's run directory when all it holds is what this run made --
    log files that were empty when the run started (``log_sizes``: path -> size at the start; without it, only
    empty ones), Hydra's ``.hydra/`` records written by this process, and an empty (released) ``.em.lock``.
    A run directory with anything else in it (an earlier run's results, its log lines) is left as it was."""
    try:
        from hydra.core.hydra_config import HydraConfig

        if in_multirun():
            return
        d = Path(HydraConfig.get().runtime.output_dir)
    except Exception:  # noqa: BLE001 - no Hydra context (called as a library): nothing of ours to clean
        return
    if not d.is_dir():
        return
    sizes = {str(Path(k).resolve()): v for k, v in (log_sizes or {}).items()}

    def ours(p: Path) -> bool:
        st = p.stat()
        if p.suffix == ".log":
            return st.st_size == 0 or sizes.get(str(p.resolve()), -1) == 0
        if p.name == ".em.lock":
            return st.st_size == 0  # released: no holder
        return ".hydra" in p.relative_to(d).parts and st.st_mtime >= PROCESS_STARTED - 1

    files = [p for p in d.rglob("*") if p.is_file()]
    if all(ours(p) for p in files):
        logging.shutdown()  # the log handlers hold the files open
        shutil.rmtree(d, ignore_errors=True)
        _drop_empty_parents(d)


def _drop_empty_parents(d: Path) -> None:
    """Remove the parents Hydra made for a refused run (``outputs/evaluate/`` of ``outputs/evaluate/<time>``) when
    they are empty now and were changed by this process, up to (never including) the directory it was started in;
    ``os.rmdir`` refuses a non-empty one, so a parent holding anything else (an earlier run) stays."""
    try:
        from hydra.core.hydra_config import HydraConfig

        top = Path(HydraConfig.get().runtime.cwd).resolve()
    except Exception:  # noqa: BLE001 - no Hydra context: nothing of ours above the run directory
        return
    p = d.resolve().parent
    while p != top and top in p.parents:
        try:
            if p.stat().st_mtime < PROCESS_STARTED - 1:
                return  # not touched by this run
            os.rmdir(p)
        except OSError:  # not empty, gone, or not ours to remove
            return
        p = p.parent
