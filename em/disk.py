"""Out of space, over quota or a read-only output directory: one line naming the file and what it held, exit 1.

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

Light on purpose (stdlib only): :func:`em.commands.run_main` imports it on every run.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import sqlite3
from pathlib import Path
from types import TracebackType
from typing import Any, Optional

from em.errors import EMError

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
