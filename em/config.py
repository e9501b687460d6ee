"""Where the training schemas used to live: re-exports :mod:`em.schemas` for callers not moved yet.

New code imports from ``em.schemas.model`` / ``em.schemas.data`` / ``em.schemas.train`` and
``em.schemas.common`` (``require``, ``validate``). Importing this module registers every schema.
"""

from __future__ import annotations

from em.errors import ConfigError  # noqa: F401
from em.schemas import register_configs  # noqa: F401  (importing em.schemas registers everything)
from em.schemas.common import validate  # noqa: F401
from em.schemas.data import DATA_SOURCES, VARIANTS, DataConfig, UpstreamConfig  # noqa: F401
from em.schemas.model import FAMILIES, GGUFConfig, LoraConfig, ModelConfig, QuantizationConfig  # noqa: F401
from em.schemas.train import TRUNCATION, OptimizerConfig, SweepConfig, TrainConfig, TrainerConfig  # noqa: F401
