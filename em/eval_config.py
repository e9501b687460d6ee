"""Where the evaluation schemas used to live: re-exports :mod:`em.schemas.evaluate` for callers not moved yet.

New code imports from ``em.schemas.evaluate`` and ``em.schemas.common``. Importing this module registers
every schema.
"""

from __future__ import annotations

from em.schemas import register_configs  # noqa: F401  (importing em.schemas registers everything)
from em.schemas.common import validate  # noqa: F401
from em.schemas.data import UpstreamConfig  # noqa: F401
from em.schemas.evaluate import (BACKENDS, QUESTION_SOURCES, EvalConfig, EvalWandbConfig, FormatConfig,  # noqa: F401
                                 GenerationConfig, QuestionSetConfig)
from em.schemas.model import ModelConfig, QuantizationConfig  # noqa: F401
