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


def register() -> None:
    """Register ``em.or``, ``em.sweep_name`` and ``em.is_wandb`` (idempotent: replaces earlier registrations)."""
    OmegaConf.register_new_resolver("em.or", first_set, replace=True)
    OmegaConf.register_new_resolver("em.sweep_name", sweep_name, replace=True)
    OmegaConf.register_new_resolver("em.is_wandb", is_wandb, replace=True)
