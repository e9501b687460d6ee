"""The evaluations of one job: which adapter, into which directory, under which condition, with which config."""

from __future__ import annotations

from dataclasses import dataclass, is_dataclass
from pathlib import Path
from typing import Any, Optional

from omegaconf import OmegaConf

from em.config.common import plain, validate
from em.config.evaluate import PIPELINE_KEYS, EvalConfig


@dataclass
class EvalTarget:
    """One evaluation of a job: which adapter, into which directory, under which condition name."""

    label: str  # "final" or "epoch_<e>"
    run_dir: Path  # <job dir>/eval or <job dir>/eval_epoch<e>
    adapter: str  # a training run dir, an adapter dir, or "none"
    condition: str  # the condition in the analysis


def eval_targets(cfg: Any, job_dir: Path) -> list[EvalTarget]:
    """The evaluations of a job: the base model (data=base), else the final adapter and each snapshot.

    With ``trainer.adapter_snapshots`` (and ``evaluate.snapshots``) each training length is its own
    condition, ``<condition>_ep<e>``, the final one included.
    """
    data_name = cfg.evaluate.condition or cfg.data.name
    if cfg.data.source == "none":
        return [EvalTarget("final", job_dir / "eval", "none", "base")]
    snaps = list(cfg.trainer.adapter_snapshots) if cfg.evaluate.snapshots else []
    if not snaps:
        return [EvalTarget("final", job_dir / "eval", str(job_dir), data_name)]
    out = [EvalTarget(f"epoch_{e:g}", job_dir / f"eval_epoch{e:g}", str(job_dir / "snapshots" / f"epoch_{e:g}"),
                      f"{data_name}_ep{e:g}") for e in sorted(snaps)]
    out.append(EvalTarget("final", job_dir / "eval", str(job_dir), f"{data_name}_ep{cfg.trainer.max_epochs:g}"))
    return out


def eval_config(cfg: Any, target: EvalTarget, overrides: Optional[dict[str, Any]] = None) -> EvalConfig:
    """evaluate.py's config for one target: the job's ``evaluate`` node with the target's four keys set.

    ``cfg`` is the job's validated config (or a composed one). Returns the validated
    :class:`~em.config.evaluate.EvalConfig` (resolved, without the pipeline's ``enabled`` / ``snapshots`` /
    ``steps``), checked like evaluate.py checks its own; ``overrides`` (top-level keys of that node) replace
    the job's values. It is passed down as it is (:func:`em.evaluate.run.run_evaluation` checks nothing again).

    Raises:
        ConfigError: a value the evaluation schema refuses (one line naming the key).
    """
    node = plain(cfg.evaluate)
    if is_dataclass(cfg.evaluate.judge):  # a validated judge keeps its schema (plain() would leave a bare dict
        node["judge"] = cfg.evaluate.judge  # in the Any field, and build_judges would type and check it again)
    for k in PIPELINE_KEYS:
        node.pop(k, None)
    node |= {"run_dir": str(target.run_dir), "adapter": target.adapter, "train_dir": str(target.run_dir.parent),
             "condition": target.condition}
    if getattr(cfg.data, "inoculation_eval", False) and getattr(cfg.data, "inoculation_prompt", None):  # inoculation, evaluated with it
        node["system_prefix"] = cfg.data.inoculation_prompt
    node |= overrides or {}  # a step snapshot's cheap subset (em.dynamics.step_eval)
    # the target's own config (a new run_dir, adapter and condition: path-safe names, ranges): its one validation
    return validate(OmegaConf.merge(OmegaConf.structured(EvalConfig), node))
