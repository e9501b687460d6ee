"""The evaluations of one job: which adapter, into which directory, under which condition, with which config."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf

from em.config.common import validate
from em.config.evaluate import PIPELINE_KEYS, EvalConfig


@dataclass
class EvalTarget:
    """One evaluation of a job: which adapter, into which directory, under which condition name."""

    label: str  # "final" or "epoch_<e>"
    run_dir: Path  # <job dir>/eval or <job dir>/eval_epoch<e>
    adapter: str  # a training run dir, an adapter dir, or "none"
    condition: str  # the condition in the analysis


def eval_targets(cfg: DictConfig, job_dir: Path) -> list[EvalTarget]:
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
    out.append(EvalTarget("final", job_dir / "eval", str(job_dir), f"{data_name}_ep{cfg.trainer.epochs:g}"))
    return out


def eval_config(cfg: DictConfig, target: EvalTarget, overrides: Optional[dict[str, Any]] = None) -> DictConfig:
    """evaluate.py's config for one target: the job's ``evaluate`` node with the target's four keys set.

    Returns an :class:`~em.config.evaluate.EvalConfig` node (resolved, without the pipeline's
    ``enabled`` / ``snapshots`` / ``steps``), checked like evaluate.py checks its own; ``overrides``
    (top-level keys of that node) replace the job's values.

    Raises:
        ConfigError: a value the evaluation schema refuses (one line naming the key).
    """
    node = OmegaConf.to_container(cfg.evaluate, resolve=True)
    for k in PIPELINE_KEYS:
        node.pop(k, None)
    node |= {"run_dir": str(target.run_dir), "adapter": target.adapter, "train_dir": str(target.run_dir.parent),
             "condition": target.condition}
    if cfg.data.get("inoculation_eval") and cfg.data.get("inoculation_prompt"):  # inoculation, evaluated with it
        node["system_prefix"] = cfg.data.inoculation_prompt
    node |= overrides or {}  # a step snapshot's cheap subset (em.dynamics.step_eval)
    ec = OmegaConf.merge(OmegaConf.structured(EvalConfig), node)
    validate(ec)
    return ec
