"""Schemas of the ``logger`` group (the training run's experiment tracker): one per option.

``conf/logger/<name>.yaml`` starts from ``<name>_schema``, so a typo (``logger.projct=x``) fails when
Hydra composes; ``logger=none`` is null. Several at once: ``logger=[wandb,csv]`` (Hydra's list of group
options): ``csv.yaml`` is packaged at ``logger.csv``, so the W&B keys stay ``logger.project`` / ``entity`` /
``group`` / ``mode`` and the CSV logger is the ``logger.csv`` sub-node (alone: ``logger=csv``). Light on purpose (no lightning / wandb imports).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


@dataclass
class CSVLoggerConfig:
    """Arguments of Lightning's ``CSVLogger``: metrics as ``<save_dir>/<name>/<version>/metrics.csv``."""

    _target_: str = "lightning.pytorch.loggers.CSVLogger"
    save_dir: str = MISSING
    name: str = "csv"
    version: str = ""


@dataclass
class WandbLoggerConfig:
    """Arguments of :func:`em.tracking.wandb_logger` (a Lightning ``WandbLogger``, job_type ``train``).

    ``save_dir`` is not a key: the run goes under the job's ``run_dir`` (``<run_dir>/wandb``).
    """

    _target_: str = "em.tracking.wandb_logger"
    project: str = MISSING
    entity: Optional[str] = None  # W&B team / user; None: W&B's own default (WANDB_ENTITY, settings)
    group: Optional[str] = None  # runs of one experiment or sweep share it (W&B "group by")
    tags: list[str] = field(default_factory=list)
    job_type: str = "train"
    name: Optional[str] = None
    mode: str = "auto"  # auto | online | offline | disabled (auto: W&B's own settings where it is configured, else offline)
    log_adapter: bool = True  # the trained adapter as a W&B model artifact (evaluation runs use it: lineage)
    csv: Optional[CSVLoggerConfig] = None  # logger=[wandb,csv]: both loggers at once


def store(cs: ConfigStore) -> None:
    """Register ``logger/wandb_schema`` and ``logger/csv_schema`` in ``cs``."""
    cs.store(group="logger", name="wandb_schema", node=WandbLoggerConfig)
    cs.store(group="logger", name="csv_schema", node=CSVLoggerConfig)
