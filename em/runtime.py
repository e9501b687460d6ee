"""Small facts and file operations every stage shares: one definition each.

* :func:`atomic_write` / :func:`atomic_write_text` / :func:`atomic_write_json` / :func:`atomic_replace_dir`
  -- a reader (or a killed writer) never sees half a file: write a temp file *in the same directory*
  (so the final ``os.replace`` is a rename on one filesystem), then rename it over the target.
* Every file they publish has the mode ``open()`` would give it (0666 less the umask; :func:`honour_umask`):
  a temp file's 0600 would survive the rename, and a labmate could not read the results.
* :func:`atomic_write_csv` -- every CSV em writes: each text field quoted, so ``\r`` / ``\n`` / quotes /
  commas inside an answer never split a row (round trip through :func:`em.analysis.ingest.read_table`).
* :func:`in_multirun` -- are we one job of a Hydra ``-m`` sweep?
* :func:`is_wandb_logger` -- does a ``logger`` config node build W&B?

Light on purpose (stdlib + omegaconf only): imported on the ``--help`` path.

**Storage faults.** Out of space, over quota or a read-only output directory: one line naming the file and what it held, exit 1.

A full disk is a fault of the machine, not of the input, so its exit status is **1** (bad input is 2,
:mod:`em.errors`), the same in ``train.py``, ``evaluate.py`` and ``analyze.py``. Nothing is lost by it: every
file em writes is either written to a temp file and renamed (:func:`em.runtime.atomic_write`), appended
line by line and trimmed back to the last whole line on resume (the answer store), or a SQLite transaction
(the judge cache); the line says so and how many answers are kept, and a rerun after freeing space resumes.

:func:`storage_fault` recognises the fault however it surfaces: ``OSError`` with ``ENOSPC`` / ``EDQUOT`` /
``EROFS`` / ``EACCES`` / ``EPERM`` / ``EFBIG`` (Python's own writes, pyarrow's ``ParquetWriter`` -- an
``OSError`` whose message carries ``[errno 28]``), ``sqlite3.OperationalError`` ("database or disk is
full", "attempt to write a readonly database"), torch's "file write failed", anywhere in the exception's
cause / context chain (a fault while a failed job writes its ``error.log`` is the same fault). The file is
the one the writer named (:func:`note_path`), the ``OSError``'s own ``filename``, the SQLite database the
failing connection had open, or a path-like local of the innermost frame that has one.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import sqlite3
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Callable, Mapping, Optional

from em.errors import EMError



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
        note_path(e, path)  # a full / read-only disk names the file (em.runtime.storage_fault)
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


# --- storage faults: a full or read-only disk is one line naming the file, exit 1 ---

# errno -> what the line says
REASONS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large for the file system",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
}
_ERRNO_IN_TEXT = re.compile(r"\[errno (\d+)\]", re.IGNORECASE)
_SQLITE_TEXT = {"database or disk is full": errno.ENOSPC, "readonly database": errno.EROFS}
_TORCH_TEXT = ("file write failed", "unexpected pos")  # torch.save's PytorchStreamWriter on a full disk
_PATH_LOCALS = ("path", "tmp", "filepath", "file_path", "filename", "dest", "target")
# file name (or suffix) -> what it holds, for the line
WHAT = (
    ("answers.jsonl", "the answers (append-only store)"),
    ("answers.meta.json", "the answers' identity record"),
    ("judge_cache.sqlite", "the judge cache"),
    ("responses.parquet", "the responses table"),
    ("responses.csv", "the responses table"),
    ("summary.json", "the run summary"),
    ("em_job.json", "the job record"),
    ("DONE.json", "the job's done record"),
    ("adapter_model.safetensors", "the adapter weights"),
    ("adapter_config.json", "the adapter config"),
    ("metrics.json", "the training metrics"),
    ("config.yaml", "the run's config record"),
    ("resolved_config.yaml", "the run's config record"),
    ("report.md", "the analysis report"),
    ("report.html", "the analysis report"),
    (".ckpt", "a training checkpoint"),
    (".sqlite", "a SQLite database"),
    (".log", "the log file"),
    (".png", "a figure"),
    (".csv", "a results table"),
    (".parquet", "a results table"),
    (".json", "a JSON record"),
    (".em.lock", "the directory's lock file"),
)


class StorageError(EMError):
    """The disk refused a write (full, over quota, read-only, not permitted). Exit status 1, not 2: the input
    was fine. The message: ``<path>: <reason> while writing <what>; <what is kept>; <what to do>``."""

    exit_status = 1


def note_path(exc: BaseException, path: str | os.PathLike) -> None:
    """Attach the file a writer was writing to ``exc`` (kept when something further up wraps it); the first
    (innermost) writer to note a path wins."""
    if getattr(exc, "em_path", None) is None:
        try:
            exc.em_path = str(path)  # type: ignore[attr-defined]
        except (AttributeError, TypeError):  # an exception type with __slots__: the traceback walk still finds it
            pass


def _chain(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _code(exc: BaseException) -> Optional[int]:
    """The storage errno of one exception (not its chain), or None when it is not a storage fault."""
    if isinstance(exc, sqlite3.OperationalError):
        text = str(exc).lower()
        return next((code for t, code in _SQLITE_TEXT.items() if t in text), None)
    if isinstance(exc, OSError):
        if exc.errno in REASONS:
            return exc.errno
        m = _ERRNO_IN_TEXT.search(str(exc))  # pyarrow: "OSError: [errno 28] No space left on device"
        if m and int(m.group(1)) in REASONS:
            return int(m.group(1))
        return None
    if isinstance(exc, RuntimeError) and any(t in str(exc) for t in _TORCH_TEXT):
        return errno.ENOSPC
    return None


def _sqlite_file(tb: Optional[TracebackType]) -> Optional[str]:
    """The main database file of a ``sqlite3.Connection`` held by a frame of the traceback (or by ``self``)."""
    while tb is not None:
        for value in list(tb.tb_frame.f_locals.values()):
            cands = [value] + [getattr(value, a, None) for a in ("conn", "_conn", "con", "db")]
            for c in cands:
                if isinstance(c, sqlite3.Connection):
                    try:
                        rows = c.execute("PRAGMA database_list").fetchall()
                    except sqlite3.Error:
                        continue
                    for _, name, file in rows:
                        if name == "main" and file:
                            return file
        tb = tb.tb_next
    return None


def _frame_path(tb: Optional[TracebackType]) -> Optional[str]:
    """A path-like local of the innermost frame that has one (a writer's ``path`` / ``tmp`` argument, or the
    ``path`` of the ``self`` it runs for)."""
    frames = []
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    for frame in reversed(frames):
        owner = frame.f_locals.get("self")  # a writer object's own file (the lock's, the store's)
        values = [frame.f_locals.get(name) for name in _PATH_LOCALS] + [getattr(owner, "path", None)]
        for value in values:
            if isinstance(value, Path) or (isinstance(value, str) and os.sep in value and len(value) < 4096):
                return str(value)
    return None


def describe(path: str) -> str:
    """What a file em writes holds (``answers.jsonl`` -> ``the answers (append-only store)``)."""
    p = Path(path)
    if p.name.startswith(".") and p.name.endswith(".tmp"):  # atomic_write's temp file: name the target
        p = p.with_name(p.name[1:].rsplit(".", 2)[0])
    if ".hydra" in p.parts:
        return "Hydra's config records (.hydra/)"
    for key, what in WHAT:
        if p.name == key or (key.startswith(".") and p.name.endswith(key)):
            return what
    return "a directory" if not p.suffix else "a file"


def _kept(path: Optional[str]) -> str:
    """What is safe on disk: the answers already in the run directory's store, and the rule for the rest."""
    kept = "everything written before is kept (files are replaced whole or appended line by line)"
    if path:
        for d in (Path(path).parent, Path(path).parent.parent):
            store = d / "answers.jsonl"
            try:
                with open(store, "rb") as f:
                    n = sum(1 for line in f if line.endswith(b"\n"))
            except OSError:
                continue
            return f"{n} answers kept in {store}; {kept}"
    return kept


def storage_fault(exc: BaseException) -> Optional[StorageError]:
    """The :class:`StorageError` for ``exc`` when it (or an exception in its cause / context chain) is a disk
    fault, else None. Of several faults in the chain (a failed job's ``error.log`` on the same full disk),
    the first whose file is known is named. Never raises."""
    try:
        first: Optional[tuple[int, Optional[str]]] = None
        for e in _chain(exc):
            code = _code(e)
            if code is None:
                continue
            path = (getattr(e, "em_path", None)
                    or (getattr(e, "filename", None) if isinstance(e, OSError) else None))
            if path is None and isinstance(e, sqlite3.Error):
                path = _sqlite_file(e.__traceback__)
            if path is None:
                path = _frame_path(e.__traceback__)
            if first is None or (first[1] is None and path is not None):
                first = (code, os.fsdecode(path) if path is not None else None)
            if first[1] is not None:
                break
        if first is None:
            return None
        code, path = first
        what = describe(path) if path else "its outputs"
        where = f"{path}: " if path else ""
        todo = ("free space (or set the output directory elsewhere) and rerun the same command: it resumes"
                if code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) else
                "make the directory writable (or set the output directory elsewhere) and rerun the same command")
        return StorageError(f"{where}{REASONS[code]} [errno {code}] while writing {what}; {_kept(path)}; {todo}")
    except Exception:  # noqa: BLE001  describing a fault must never raise a second one
        return None


def quiet_log_file_faults(handler: logging.Handler) -> None:
    """Make ``handler`` drop a disk fault of its own file silently (logging prints a traceback per record on a
    full disk); the run's own writer reports the fault in its one line. Other logging errors keep logging's
    report. Idempotent."""
    if getattr(handler, "_em_quiet_disk", False):
        return
    original = handler.handleError

    def handle_error(record: logging.LogRecord, _orig: Any = original) -> None:
        import sys

        exc = sys.exc_info()[1]
        if exc is not None and storage_fault(exc) is not None:
            return
        _orig(record)

    handler.handleError = handle_error  # type: ignore[method-assign]
    handler._em_quiet_disk = True  # type: ignore[attr-defined]


def check_output_dir(cfg: Any, multirun: bool = False) -> None:
    """Before Hydra creates the run (or sweep) directory: the nearest existing directory above it must be
    writable, else one line naming it (Hydra's own report of a read-only output directory is a traceback).

    Args:
        cfg: the composed config with its ``hydra`` node (``hydra.run.dir`` / ``hydra.sweep.dir``).
        multirun: ``-m`` (the sweep directory is created).

    Raises:
        StorageError: ``hydra.run.dir: <dir> ... read-only file system [errno 30]`` (exit 1). A directory that
            cannot be resolved before the run starts is not checked here.
    """
    from omegaconf import OmegaConf

    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    try:
        target = OmegaConf.select(cfg, key, throw_on_missing=True)
    except Exception:  # noqa: BLE001  an interpolation only a running Hydra resolves
        return
    if not isinstance(target, str) or not target:
        return
    p = Path(target).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    if not p.is_dir() or os.access(p, os.W_OK):
        return
    code = errno.EROFS if _read_only(p) else errno.EACCES
    raise StorageError(f"{key}: {p} is not writable ({REASONS[code]} [errno {code}]), so {target} cannot be "
                       f"created; nothing was written; choose another directory ({key}=...) or make it writable")


def _read_only(p: Path) -> bool:
    try:
        return bool(os.statvfs(p).f_flag & os.ST_RDONLY)
    except OSError:
        return False
