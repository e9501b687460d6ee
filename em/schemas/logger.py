"""Schemas of the ``logger`` group (the training run's experiment tracker): one per option.

``conf/logger/<name>.yaml`` starts from ``<name>_schema``, so a typo (``logger.projct=x``) fails when
Hydra composes; ``logger=none`` is null. Light on purpose (no lightning / wandb imports).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


@dataclass
class WandbLoggerConfig:
    """Arguments of :func:`em.tracking.wandb_logger` (a Lightning ``WandbLogger``, job_type ``train``).

    ``save_dir`` is not a key: the run goes under the job's ``run_dir`` (``<run_dir>/wandb``).
    """

    _target_: str = "em.tracking.wandb_logger"
    project: str = MISSING
    group: Optional[str] = None  # runs of one experiment or sweep share it (W&B "group by")
    tags: list[str] = field(default_factory=list)
    job_type: str = "train"
    name: Optional[str] = None
    mode: str = "auto"  # auto | online | offline | disabled (auto: online only where W&B is configured)


@dataclass
class CSVLoggerConfig:
    """Arguments of Lightning's ``CSVLogger``: metrics as ``<save_dir>/<name>/<version>/metrics.csv``."""

    _target_: str = "lightning.pytorch.loggers.CSVLogger"
    save_dir: str = MISSING
    name: str = "csv"
    version: str = ""


def store(cs: ConfigStore) -> None:
    """Register ``logger/wandb_schema`` and ``logger/csv_schema`` in ``cs``."""
    cs.store(group="logger", name="wandb_schema", node=WandbLoggerConfig)
    cs.store(group="logger", name="csv_schema", node=CSVLoggerConfig)
