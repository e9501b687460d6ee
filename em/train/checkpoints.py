"""Training checkpoints that survive a kill at any moment, and a resume that survives a torn one.

* :class:`AtomicCheckpointIO` (a Lightning ``CheckpointIO`` plugin) writes each checkpoint to a temp file in
  the *same* directory, fsyncs it and renames it over ``last.ckpt``; the checkpoint it replaces is kept as
  ``last.prev.ckpt`` (a hard link, so ``last.ckpt`` exists, whole, at every moment). Lightning's own
  writer streams into the final path, so a kill could leave a 0-byte or cut-off ``last.ckpt`` that made every
  rerun fail with a bare ``EOFError``.
* :func:`resume_checkpoint` picks the newest checkpoint that loads (``last.ckpt``, else ``last.prev.ckpt``); one
  that does not is moved aside (``<name>.corrupt``) with a one-line message, so training resumes from the
  previous good one (or starts over when none is left).
* Checkpoints are untrusted files: every read is ``torch.load(weights_only=True)`` (tensors and plain
  types only; a pickled object that would run code is never built). em's checkpoints hold nothing else
  (optimizer and LR-scheduler state, loop and callback state, the data module's position, the step
  history). A checkpoint that needs anything more is refused with one line naming the file
  (:class:`UnsafeCheckpoint`, exit 2), not moved aside as torn: it is whole, and someone put it there.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Optional

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from em.errors import DataError

log = logging.getLogger("em.train.run")

LAST = "last.ckpt"
PREV = "last.prev.ckpt"


class UnsafeCheckpoint(DataError):
    """A checkpoint holds objects beyond tensors and plain types (``weights_only`` loading refuses it)."""


def _is_weights_only_refusal(e: BaseException) -> bool:
    """Did ``torch.load(weights_only=True)`` refuse an object (as opposed to a torn or truncated file)?"""
    import pickle

    return isinstance(e, pickle.UnpicklingError) and "weights only load failed" in str(e).lower()


def _refusal(path: Path, e: BaseException) -> UnsafeCheckpoint:
    detail = next((ln.strip() for ln in str(e).splitlines() if "unsupported global" in ln.lower()
                   or "unsupported operand" in ln.lower()), "")
    detail = " ".join(detail.split())[:160]
    return UnsafeCheckpoint(
        f"{path}: this checkpoint holds objects beyond tensors and plain types"
        f"{f' ({detail})' if detail else ''}; em loads checkpoints with weights_only=True and will not "
        f"unpickle it (nothing in it ran); delete it (and last.prev.ckpt) to train from scratch")


def load_checkpoint_file(path, map_location: Any = "cpu", mmap: bool = False) -> dict[str, Any]:
    """``torch.load(path, weights_only=True)``: tensors and plain types only, nothing in the file runs.

    Raises:
        UnsafeCheckpoint: the file needs anything else (a pickled class, a function, a ``__reduce__``).
        Exception: what ``torch.load`` raises for a torn or truncated file (EOFError, RuntimeError, ...).
    """
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as e:
        if _is_weights_only_refusal(e):
            raise _refusal(Path(path), e) from None
        raise


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` writing through a same-directory temp file + rename, keeping the previous file
    as ``<stem>.prev.ckpt``; reading with ``weights_only=True`` whatever the caller asks (Lightning's resume
    included)."""

    def load_checkpoint(self, path, map_location: Optional[Any] = None, weights_only: Optional[bool] = None
                        ) -> dict[str, Any]:
        """Load ``path`` with ``torch.load(weights_only=True)``; a caller's ``weights_only`` flag is ignored.

        Raises:
            UnsafeCheckpoint: the file holds anything beyond tensors and plain types (one line).
        """
        return load_checkpoint_file(path, map_location=map_location or (lambda storage, loc: storage))

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Optional[Any] = None) -> None:
        """Write ``checkpoint`` to ``path`` atomically (temp file, fsync, rename); the old ``path`` becomes
        ``<stem>.prev.ckpt``."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        with open(tmp, "wb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())
        if path.exists():
            prev = path.with_name(path.stem + ".prev" + path.suffix)
            prev_tmp = prev.with_name(f".{prev.name}.tmp-{os.getpid()}")
            prev_tmp.unlink(missing_ok=True)
            try:
                os.link(path, prev_tmp)
            except OSError:  # a filesystem without hard links
                import shutil

                shutil.copy2(path, prev_tmp)
            os.replace(prev_tmp, prev)
        os.replace(tmp, path)
        _fsync_dir(path.parent)


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def checkpoint_step(path: Path) -> int:
    """The ``global_step`` a checkpoint file holds (memory-mapped: the weights are not read; ``weights_only``:
    nothing in the file runs).

    Raises:
        UnsafeCheckpoint: the file holds anything beyond tensors and plain types.
        Exception: whatever ``torch.load`` raises for a file that is not a whole checkpoint (EOFError,
            RuntimeError, pickle errors...), or KeyError when it has no ``global_step``.
    """
    ckpt = load_checkpoint_file(path, map_location="cpu", mmap=True)
    return int(ckpt["global_step"])


def resume_checkpoint(ckpt_dir: Path) -> tuple[Optional[Path], int]:
    """The checkpoint to resume from, and its step: ``last.ckpt``, else ``last.prev.ckpt``; (None, 0): none.

    A candidate that fails to load is renamed ``<name>.corrupt`` (replacing an older one) and a line says so.

    Raises:
        UnsafeCheckpoint: a candidate holds objects beyond tensors and plain types (it is left in place).
    """
    for name in (LAST, PREV):
        path = Path(ckpt_dir) / name
        if not path.is_file():
            continue
        size = path.stat().st_size
        try:
            if size == 0:
                raise EOFError("empty file")
            return path, checkpoint_step(path)
        except UnsafeCheckpoint:
            raise
        except Exception as e:  # noqa: BLE001  any unreadable file: moved aside, the previous one is tried
            aside = path.with_name(path.name + ".corrupt")
            os.replace(path, aside)
            what = f"{type(e).__name__}: {' '.join(str(e).split())[:100]}" if str(e) else type(e).__name__
            print(f"checkpoint {path} cannot be loaded ({size} bytes; {what}); moved to {aside.name}, "
                  f"resuming from the previous one")
    return None, 0


__all__ = ["AtomicCheckpointIO", "UnsafeCheckpoint", "checkpoint_step", "load_checkpoint_file", "resume_checkpoint"]
