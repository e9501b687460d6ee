"""The ``em.*`` OmegaConf resolvers the YAML files under ``conf/`` use."""

from __future__ import annotations

from typing import Any, Optional

from omegaconf import OmegaConf

from em.runtime import in_multirun, is_wandb_logger


def first_set(*values: Any) -> Any:
    """``${em.or:a,b,...}``: the first value that is not null (``oc.select`` treats an explicit null as set)."""
    return next((v for v in values if v is not None), None)


def sweep_name() -> Optional[str]:
    """``${em.sweep_name:}``: the sweep directory's name inside a multirun (an ad-hoc sweep's W&B group), else null."""
    if not in_multirun():
        return None
    from hydra.core.hydra_config import HydraConfig

    return str(HydraConfig.get().sweep.dir).rstrip("/").rsplit("/", 1)[-1]


def is_wandb(node: Any) -> bool:
    """``${em.is_wandb:${logger}}``: does this logger node build W&B (see :func:`em.runtime.is_wandb_logger`)?"""
    return is_wandb_logger(node)


def join(*parts: Any) -> Optional[str]:
    """``${em.join:a,b,...}``: the parts joined by ``-``, or null when one is null (a key the script lacks)."""
    return None if any(p is None for p in parts) else "-".join(str(p) for p in parts)


def run_tags(model: Any, data: Any, lora_r: Any, quantization: Any) -> list[str]:
    """``${em.run_tags:model,data,lora_r,quantization}``: the W&B tags of a run, null parts left out."""
    parts = (model, data, None if lora_r is None else f"lora-r{lora_r}", quantization)
    return [str(p) for p in parts if p is not None]


def register() -> None:
    """Register ``em.or``, ``em.sweep_name``, ``em.is_wandb``, ``em.join`` and ``em.run_tags`` (idempotent)."""
    OmegaConf.register_new_resolver("em.or", first_set, replace=True)
    OmegaConf.register_new_resolver("em.sweep_name", sweep_name, replace=True)
    OmegaConf.register_new_resolver("em.is_wandb", is_wandb, replace=True)
    OmegaConf.register_new_resolver("em.join", join, replace=True)
    OmegaConf.register_new_resolver("em.run_tags", run_tags, replace=True)
