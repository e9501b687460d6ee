"""What :func:`em.train.run.fit` does for issue 23's options, in one place (keeps the training script short).

* :func:`kl_term` -- ``trainer.kl``'s side batches (:mod:`em.dynamics.kl`), or None;
* :func:`callbacks` -- ``trainer.snapshot_every_n_steps``' :class:`~em.dynamics.snapshots.StepSnapshots`;
* :func:`training_context` -- ``trainer.ablate_direction``'s projection hooks while ``trainer.fit`` runs;
* :func:`after_fit` -- the LoRA geometry of the step snapshots into ``metrics``, the loggers and
  ``dynamics.png``.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Optional

from em.dynamics.ablation import ablated
from em.dynamics.figure import draw_quietly
from em.dynamics.geometry import log_geometry, write_geometry
from em.dynamics.kl import build_kl_term
from em.dynamics.snapshots import StepSnapshots


def kl_term(tc: Any, tokenizer) -> Optional[Any]:
    """The :class:`~em.dynamics.kl.KLTerm` of ``trainer.kl`` (None without side data)."""
    if not (tc.trainer.kl.data or tc.trainer.kl.side):
        return None

    return build_kl_term(tc, tokenizer)


def callbacks(tc: Any, run_dir: Path, tokenizer, source: Optional[str]) -> list:
    """``[StepSnapshots]`` with ``trainer.snapshot_every_n_steps``, else []."""
    n = tc.trainer.snapshot_every_n_steps
    if not n:
        return []

    (Path(run_dir) / "snapshots").mkdir(parents=True, exist_ok=True)
    return [StepSnapshots(n, Path(run_dir) / "snapshots", tokenizer, source)]


def training_context(model, tc: Any):
    """A context manager: CAFT's hooks (``trainer.ablate_direction``) while training, else a no-op."""
    t = tc.trainer
    if not t.ablate_direction:
        return contextlib.nullcontext()

    return ablated(model, t.ablate_direction, t.ablate_layers)


def after_fit(tc: Any, run_dir: Path, loggers: list, metrics: dict) -> None:
    """With step snapshots: write ``lora_geometry.csv`` / ``lora_changepoints.json`` (recomputed from the
    snapshots on disk: a resumed run has each step once), log them, and record the path in ``metrics``."""
    if not tc.trainer.snapshot_every_n_steps:
        return

    path = write_geometry(run_dir)
    metrics["lora_geometry"] = str(path) if path else None
    log_geometry(loggers, run_dir)

    draw_quietly(run_dir)  # geometry panels now; the job redraws it once the snapshots are evaluated
