"""Training checkpoints that survive a kill at any moment, and a resume that survives a torn one.

* :class:`AtomicCheckpointIO` (a Lightning ``CheckpointIO`` plugin) writes each checkpoint to a temp file in
  the *same* directory, fsyncs it and renames it over ``last.ckpt``; the checkpoint it replaces is kept as
  ``last.prev.ckpt`` (a hard link, so ``last.ckpt`` exists, whole, at every moment). Lightning's own
  writer streams into the final path, so a kill could leave a 0-byte or cut-off ``last.ckpt`` that made every
  rerun fail with a bare ``EOFError``.
* :func:`resume_checkpoint` picks the newest checkpoint that loads (``last.ckpt``, else ``last.prev.ckpt``); one
  that does not is moved aside (``<name>.corrupt``) with a one-line message, so training resumes from the
  previous good one (or starts over when none is left).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Optional

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

log = logging.getLogger("em.training")

LAST = "last.ckpt"
PREV = "last.prev.ckpt"


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` writing through a same-directory temp file + rename, keeping the previous file
    as ``<stem>.prev.ckpt``."""

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
    """The ``global_step`` a checkpoint file holds (memory-mapped: the weights are not read).

    Raises:
        Exception: whatever ``torch.load`` raises for a file that is not a whole checkpoint (EOFError,
            RuntimeError, pickle errors...), or KeyError when it has no ``global_step``.
    """
    ckpt = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    return int(ckpt["global_step"])


def resume_checkpoint(ckpt_dir: Path) -> tuple[Optional[Path], int]:
    """The checkpoint to resume from, and its step: ``last.ckpt``, else ``last.prev.ckpt``; (None, 0): none.

    A candidate that fails to load is renamed ``<name>.corrupt`` (replacing an older one) and a line says so.
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
        except Exception as e:  # noqa: BLE001  any unreadable file: moved aside, the previous one is tried
            aside = path.with_name(path.name + ".corrupt")
            os.replace(path, aside)
            what = f"{type(e).__name__}: {' '.join(str(e).split())[:100]}" if str(e) else type(e).__name__
            print(f"checkpoint {path} cannot be loaded ({size} bytes; {what}); moved to {aside.name}, "
                  f"resuming from the previous one")
    return None, 0


__all__ = ["AtomicCheckpointIO", "checkpoint_step", "resume_checkpoint"]
