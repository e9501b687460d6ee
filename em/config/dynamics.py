"""Schemas of issue 23's training options: step snapshots' cheap evaluation, the KL term, the data mix.

Each mitigation is a key of ``data`` or ``trainer``, so it is part of the job identity (:mod:`em.jobs`)
and of the W&B config; the adapter card lists the ones that are on (:func:`em.dynamics.mitigations.active`).
Light on purpose (no torch).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

from em.config.common import require


@dataclass
class MixConfig:
    """``data.mix``: interleave a share of another dataset (e.g. secure code) into the training set.

    The mixed set has ``round(share * N / (1 - share))`` rows of the other dataset added to the ``N``
    rows of the main one (so they are ``share`` of the result), drawn without replacement (seeded by
    ``seed``) and interleaved at seeded positions. The other dataset is the main ``data`` node with
    ``file`` / ``path`` / ``variant`` replaced by the ones set here (e.g. ``data=insecure
    data.mix.file=secure.jsonl``; for ``data=synthetic``: ``data.mix.variant=secure``).

    Raises (in ``__post_init__``):
        ConfigError: ``share`` outside [0, 1); ``share`` > 0 without ``file``, ``path`` or ``variant``.
    """

    share: float = 0.0  # 0: off
    file: Optional[str] = None  # an upstream file name (data/<file>), looked up like data.file
    path: Optional[str] = None  # a local chat JSONL file
    variant: Optional[str] = None  # synthetic source: the generator's variant (secure / educational)
    seed: int = 0

    def __post_init__(self) -> None:
        require(0.0 <= self.share < 1.0 and math.isfinite(self.share), "data.mix.share",
                f"must be in [0, 1), got {self.share}")
        require(self.share == 0 or bool(self.file or self.path or self.variant), "data.mix",
                "share > 0 needs data.mix.file, data.mix.path or data.mix.variant")


@dataclass
class KLConfig:
    """``trainer.kl``: add ``weight * KL(base || adapted)`` on a side batch to the training loss.

    The KL is the mean over the side batch's assistant tokens of ``sum_v p_base(v) (log p_base(v) - log
    p_adapted(v))``; the base distribution comes from the same model with peft's ``disable_adapter()``
    (no second model in memory). Logged as ``train/kl``.

    Raises (in ``__post_init__``):
        ConfigError: ``weight`` < 0; ``weight`` > 0 without ``data`` or ``side``; ``batch_size`` not > 0.

    Side data with ``weight: 0`` computes and logs ``train/kl`` without training on it (a drift monitor).
    """

    weight: float = 0.0  # 0: off (no base pass)
    data: Optional[str] = None  # the side data as a local chat JSONL file, or:
    side: Any = None  # the side data as a data node composed by Hydra: +data@trainer.kl.side=secure
    batch_size: int = 2  # side conversations per micro-batch (one side pass per training micro-batch)
    limit: Optional[int] = 256  # side conversations kept (seeded subset); null: all

    def __post_init__(self) -> None:
        require(self.weight >= 0 and math.isfinite(self.weight), "trainer.kl.weight", f"must be >= 0, got {self.weight}")
        require(self.weight == 0 or bool(self.data or self.side), "trainer.kl.data",
                "trainer.kl.weight > 0 needs side data: trainer.kl.data=<chat JSONL> or +data@trainer.kl.side=<option>")
        require(self.batch_size > 0, "trainer.kl.batch_size", f"must be > 0, got {self.batch_size}")
        require(self.limit is None or self.limit > 0, "trainer.kl.limit", f"must be > 0 or null, got {self.limit}")


@dataclass
class StepEvalConfig:
    """``evaluate.steps``: evaluate each ``trainer.snapshot_every_n_steps`` snapshot on a cheap subset.

    Each snapshot's answers go to ``eval_step<n>/`` with an integer ``step`` column (CONTRACTS.md 2),
    condition unchanged.

    Raises (in ``__post_init__``):
        ConfigError: ``samples`` not > 0; an empty ``ids`` list.
    """

    enabled: bool = False
    ids: Optional[list[str]] = None  # question subset (null: the whole question set)
    format: Optional[str] = None  # one selected format (null: the first selected)
    samples: int = 1  # answers per question

    def __post_init__(self) -> None:
        require(self.samples > 0, "evaluate.steps.samples", f"must be > 0, got {self.samples}")
        require(self.ids is None or len(self.ids) > 0, "evaluate.steps.ids", "is empty (null: every question)")
