"""The cheap evaluation of step snapshots (``evaluate.steps``): one target per ``snapshots/step_<n>/``.

Each snapshot is evaluated on a question subset (``evaluate.steps.ids``), one format
(``evaluate.steps.format``) and ``evaluate.steps.samples`` answers per question, into
``<job dir>/eval_step<n>/``, under the job's own condition; the responses table carries an integer
``step`` column (CONTRACTS.md 2), which the analysis groups by.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from em.jobs.targets import EvalTarget, eval_config
from em.dynamics.snapshots import step_snapshots
from em.errors import ConfigError
from em.config.common import plain


def step_targets(cfg: Any, job_dir: Path) -> list[tuple["EvalTarget", DictConfig]]:
    """``[(target, evaluation config)]`` for each step snapshot on disk (after training), sorted by step;
    [] unless ``evaluate.enabled`` and ``evaluate.steps.enabled``.

    Raises:
        ConfigError: ``evaluate.steps.format`` not among the selected formats.
    """
    steps = getattr(cfg.evaluate, "steps", None)  # (the job's validated config, or a composed one)
    if not (cfg.evaluate.enabled and steps is not None and steps.enabled and getattr(cfg.trainer, "snapshot_every_n_steps", None)):
        return []
    condition = cfg.evaluate.condition or cfg.data.name
    out = []
    for step, path in step_snapshots(job_dir):
        t = EvalTarget(f"step_{step}", job_dir / f"eval_step{step}", str(path), condition)
        out.append((t, cheap_config(cfg, t, step)))
    return out


def cheap_config(cfg: Any, target: "EvalTarget", step: int) -> DictConfig:
    """:func:`em.jobs.targets.eval_config` of ``target`` restricted to ``evaluate.steps``' subset, with ``step``."""
    steps = cfg.evaluate.steps
    formats = list(cfg.evaluate.format)
    fmt = steps.format or (formats[0] if formats else None)
    if fmt not in formats:
        raise ConfigError(f"evaluate.steps.format: {fmt!r} is not a selected format ({', '.join(formats)})")
    over = {"samples": int(steps.samples), "step": int(step),
            "format": {fmt: plain(cfg.evaluate.format[fmt])}}
    if steps.ids is not None:
        over["questions"] = plain(cfg.evaluate.questions) | {"ids": list(steps.ids)}
    ec = eval_config(cfg, target, over)
    return ec
