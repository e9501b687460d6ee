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

    _target_: str = field(default="lightning.pytorch.loggers.CSVLogger", metadata={"help": (
        "the logger class Hydra instantiates")})
    save_dir: str = field(default=MISSING, metadata={"help": "directory of the CSV logs"})
    name: str = field(default="csv", metadata={"help": "subdirectory under save_dir"})
    version: str = field(default="", metadata={"help": "subdirectory under name ('' : none)"})


@dataclass
class WandbLoggerConfig:
    """Arguments of :func:`em.tracking.wandb_logger` (a Lightning ``WandbLogger``, job_type ``train``).

    ``save_dir`` is not a key: the run goes under the job's ``run_dir`` (``<run_dir>/wandb``).
    """

    _target_: str = field(default="em.tracking.wandb_logger", metadata={"help": (
        "the logger factory Hydra instantiates")})
    project: str = field(default=MISSING, metadata={"help": "W&B project"})
    entity: Optional[str] = field(default=None, metadata={"help": (
        "W&B team / user; None: W&B's own default (WANDB_ENTITY, settings)")})
    group: Optional[str] = field(default=None, metadata={"help": (
        "runs of one experiment or sweep share it (W&B \"group by\")")})
    tags: list[str] = field(default_factory=list, metadata={"help": "W&B tags of the run"})
    job_type: str = field(default="train", metadata={"help": "W&B job type"})
    name: Optional[str] = field(default=None, metadata={"help": "W&B run name; null: W&B's own"})
    mode: str = field(default="auto", metadata={"help": (
        "auto | online | offline | disabled (auto: W&B's own settings where it is configured, else offline)")})
    log_adapter: bool = field(default=True, metadata={"help": (
        "the trained adapter as a W&B model artifact (evaluation runs use it: lineage)")})
    csv: Optional[CSVLoggerConfig] = field(default=None, metadata={"help": "logger=[wandb,csv]: both loggers at once"})


def store(cs: ConfigStore) -> None:
    """Register ``logger/wandb_schema`` and ``logger/csv_schema`` in ``cs``."""
    cs.store(group="logger", name="wandb_schema", node=WandbLoggerConfig)
    cs.store(group="logger", name="csv_schema", node=CSVLoggerConfig)
