"""``trainer.snapshot_every_n_steps=N``: the LoRA adapter every N optimizer steps, in ``snapshots/step_<n>/``.

The step-resolved twin of :class:`em.train.run.AdapterSnapshots` (epochs): the model-organisms-for-EM
phase-transition study saves its adapters every 5 steps and reads the step at which the LoRA B vector
rotates. Each snapshot appears atomically (temp directory, then rename); a resumed run keeps the
snapshots it already wrote and writes each missing one once (a step is a snapshot step or not, whatever
the process), so ``snapshots/`` never holds a step twice.
"""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path
from typing import Optional

import lightning as L

from em.adapters.check import save_adapter
from em.dynamics.ablation import check_fits
from em.runtime import atomic_replace_dir

log = logging.getLogger("em.dynamics")

STEP_DIR = re.compile(r"^step_(\d+)$")


def step_dir(snapshots: Path, step: int) -> Path:
    """``<snapshots>/step_<step>`` (no zero padding: sort with :func:`step_snapshots`)."""
    return Path(snapshots) / f"step_{int(step)}"


def step_snapshots(run_dir: Path) -> list[tuple[int, Path]]:
    """The finished step snapshots of a training run, ``[(step, dir)]`` sorted by step.

    A directory counts when its name is ``step_<n>`` and it holds ``adapter_model.safetensors``
    (temp directories of a killed run, ``step_<n>.tmp``, do not match)."""
    d = Path(run_dir) / "snapshots"
    if not d.is_dir():
        return []
    out = []
    for p in d.iterdir():
        m = STEP_DIR.match(p.name)
        if m and p.is_dir() and (p / "adapter_model.safetensors").is_file():
            out.append((int(m.group(1)), p))
    return sorted(out)


class StepSnapshots(L.Callback):
    """Writes the LoRA adapter after every ``every_n_steps``-th optimizer step (steps N, 2N, ...).

    Args:
        every_n_steps: N (> 0), in optimizer steps (``trainer.global_step`` after the step).
        dirpath: ``<run_dir>/snapshots``.
        tokenizer: saved beside each adapter, so each snapshot is a complete adapter directory.
        source: the base checkpoint (``em.train.models.model_dir``), keys the saved adapter
            (:func:`em.adapters.check.save_adapter`).
        probe: ``trainer.probe``'s :class:`~em.dynamics.probe.ProbeSet`: its projections at the step are
            written into the snapshot (``probe.parquet``) before it appears; None: none.

    Rank 0 alone writes (the LoRA weights are the same on every rank under DDP). ``written`` lists the
    steps this process wrote (tests, logs).
    """

    def __init__(self, every_n_steps: int, dirpath: Path, tokenizer, source: Optional[str] = None, probe=None):
        if every_n_steps <= 0:
            raise ValueError(f"every_n_steps must be > 0, got {every_n_steps}")
        self.every_n_steps, self.dirpath, self.tokenizer, self.source = every_n_steps, Path(dirpath), tokenizer, source
        self.probe = probe
        self.written: list[int] = []
        self._last_seen = -1

    def on_fit_start(self, trainer, pl_module) -> None:
        """A probe direction that does not fit the model fails here, before the first step (ConfigError)."""
        if self.probe is not None:

            check_fits(pl_module.model, self.probe.directions, "trainer.probe.direction")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        """After a micro-batch: when it completed optimizer step k*N, write ``step_<k*N>`` unless it exists."""
        step = trainer.global_step
        # with gradient accumulation this hook runs once per micro-batch; global_step moves once per window
        if step == self._last_seen or step == 0 or step % self.every_n_steps or not trainer.is_global_zero:
            self._last_seen = step
            return
        self._last_seen = step
        path = step_dir(self.dirpath, step)
        if path.exists():  # a resumed run: written before the interruption
            return

        tmp = path.with_name(path.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)  # left by a killed run
        save_adapter(pl_module.model, tmp, self.source)
        self.tokenizer.save_pretrained(tmp)
        if self.probe is not None:  # inside the temp dir: the projection appears with its snapshot, or neither
            self.probe.write_step(tmp, pl_module.model, step)
        atomic_replace_dir(tmp, path)
        self.written.append(step)
        log.info("step snapshot at step %d: %s", step, path)


__all__ = ["StepSnapshots", "step_dir", "step_snapshots"]
