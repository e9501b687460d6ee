"""What :func:`em.train.run.fit` does for issue 23's options, in one place (keeps the training script short).

* :func:`kl_term` -- ``trainer.kl``'s side batches (:mod:`em.dynamics.kl`), or None;
* :func:`callbacks` -- ``trainer.snapshot_every_n_steps``' :class:`~em.dynamics.snapshots.StepSnapshots`;
* :func:`training_context` -- ``trainer.ablate_direction``'s projection hooks while ``trainer.fit`` runs;
* :func:`after_fit` -- the LoRA geometry and probe projection of the step snapshots into ``metrics``, the loggers and
  ``dynamics.png``.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Optional, Sequence

from em.dynamics.ablation import ablated
from em.dynamics.figure import draw_quietly
from em.dynamics.geometry import log_geometry, write_geometry
from em.dynamics.kl import build_kl_term
from em.dynamics.probe import build_probe, log_projection, write_projection
from em.dynamics.snapshots import StepSnapshots


def kl_term(tc: Any, tokenizer) -> Optional[Any]:
    """The :class:`~em.dynamics.kl.KLTerm` of ``trainer.kl`` (None without side data)."""
    if not (tc.trainer.kl.data or tc.trainer.kl.side):
        return None

    return build_kl_term(tc, tokenizer)


def callbacks(tc: Any, run_dir: Path, tokenizer, source: Optional[str]) -> list:
    """``[StepSnapshots]`` with ``trainer.snapshot_every_n_steps`` (projecting ``trainer.probe``'s answers at
    each snapshot when set), else []."""
    n = tc.trainer.snapshot_every_n_steps
    if not n:
        return []

    (Path(run_dir) / "snapshots").mkdir(parents=True, exist_ok=True)
    return [StepSnapshots(n, Path(run_dir) / "snapshots", tokenizer, source, probe=build_probe(tc, tokenizer))]


def training_context(model, tc: Any):
    """A context manager: CAFT's hooks (``trainer.ablate_direction``) while training, else a no-op."""
    t = tc.trainer
    if not t.ablate_direction:
        return contextlib.nullcontext()

    return ablated(model, t.ablate_direction, t.ablate_layers)


def after_fit(tc: Any, run_dir: Path, loggers: list, metrics: dict, callbacks: Sequence = ()) -> None:
    """With step snapshots: write ``lora_geometry.csv`` / ``lora_changepoints.json`` and, with
    ``trainer.probe``, ``probe_projection.csv`` / ``.json`` (each recomputed from the snapshots on disk: a
    resumed run has each step once), log them, and record the paths in ``metrics``. ``callbacks``: the
    trainer's (the probe set is the step-snapshot callback's)."""
    if not tc.trainer.snapshot_every_n_steps:
        return

    path = write_geometry(run_dir)
    metrics["lora_geometry"] = str(path) if path else None
    log_geometry(loggers, run_dir)

    probe = next((cb.probe for cb in callbacks if isinstance(cb, StepSnapshots) and cb.probe is not None), None)
    if probe is not None:

        p = tc.trainer.probe
        out = write_projection(run_dir, probe, n_boot=p.n_boot, confidence=p.confidence, seed=tc.seed)
        metrics["probe_projection"] = str(out) if out else None
        log_projection(loggers, run_dir)

    draw_quietly(run_dir)  # geometry panels now; the job redraws it once the snapshots are evaluated
