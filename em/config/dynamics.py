"""Schemas of issue 23's training options: step snapshots' cheap evaluation, the KL term, the data mix.

Each mitigation is a key of ``data`` or ``trainer``, so it is part of the job identity (:mod:`em.jobs`)
and of the W&B config; the adapter card lists the ones that are on (:func:`em.dynamics.mitigations.active`).
Light on purpose (no torch).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
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

    share: float = field(default=0.0, metadata={"help": "share of the training set taken from the mixed-in data; 0: off"})
    file: Optional[str] = field(default=None, metadata={"help": (
        "an upstream file name (data/<file>), looked up like data.file")})
    path: Optional[str] = field(default=None, metadata={"help": "a local chat JSONL file"})
    variant: Optional[str] = field(default=None, metadata={"help": (
        "synthetic source: the generator's variant (secure / educational)")})
    seed: int = field(default=0, metadata={"help": "seed of the mixed-in subset and its interleaving"})

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

    weight: float = field(default=0.0, metadata={"help": "weight of KL(base || adapted) in the loss; 0: off (no base pass)"})
    data: Optional[str] = field(default=None, metadata={"help": "the side data as a local chat JSONL file (or side, below)"})
    side: Any = field(default=None, metadata={"help": (
        "the side data as a data node composed by Hydra: +data@trainer.kl.side=secure")})
    batch_size: int = field(default=2, metadata={"help": (
        "side conversations per micro-batch (one side pass per training micro-batch)")})
    limit: Optional[int] = field(default=256, metadata={"help": "side conversations kept (seeded subset); null: all"})

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

    enabled: bool = field(default=False, metadata={"help": "evaluate each step snapshot on the cheap subset"})
    ids: Optional[list[str]] = field(default=None, metadata={"help": "question subset (null: the whole question set)"})
    format: Optional[str] = field(default=None, metadata={"help": "one selected format (null: the first selected)"})
    samples: int = field(default=1, metadata={"help": "answers per question"})

    def __post_init__(self) -> None:
        require(self.samples > 0, "evaluate.steps.samples", f"must be > 0, got {self.samples}")
        require(self.ids is None or len(self.ids) > 0, "evaluate.steps.ids", "is empty (null: every question)")


@dataclass
class ProbeConfig:
    """``trainer.probe``: fixed probe answers projected onto a saved direction at every step snapshot.

    At each ``trainer.snapshot_every_n_steps`` snapshot the model reads every probe answer teacher-forced
    (em.interp.collect: the chat-rendered question, then the answer's tokens); the residual stream after
    each listed decoder layer, averaged over the answer's tokens, is projected onto that layer's unit
    direction (``unit.L`` of a ``directions.safetensors``, em.interp). Per step and layer the mean over
    answers with a percentile bootstrap interval goes to ``probe_projection.csv`` (em.dynamics.probe): a
    judge-free burn-in proxy, also usable by ``ProxyEarlyStopping`` (``proxy: em.dynamics.probe:proxy``).

    Raises (in ``__post_init__``):
        ConfigError: ``answers`` without ``direction`` or the reverse; ``batch_size``, ``limit``,
            ``max_answer_tokens`` or ``n_boot`` not > 0; ``confidence`` outside (0, 1); ``layer`` not in
            ``layers``.
    """

    answers: Optional[str] = field(default=None, metadata={"help": 'responses table (parquet / csv / jsonl: question, answer[, system]) or a run dir'})
    direction: Optional[str] = field(default=None, metadata={"help": "directions.safetensors (unit.L per layer), as em's interp stage writes it"})
    layers: Optional[list[int]] = field(default=None, metadata={"help": 'layers projected (null: every layer in the file)'})
    layer: Optional[int] = field(default=None, metadata={"help": 'the headline / proxy layer (null: best held-out AUC beside the file, else middle)'})
    limit: Optional[int] = field(default=64, metadata={"help": 'probe answers kept (a seeded subset of the distinct ones); null: all'})
    batch_size: int = field(default=8, metadata={"help": 'answers per forward pass'})
    max_answer_tokens: Optional[int] = field(default=64, metadata={"help": 'answers cut at this many tokens'})
    n_boot: int = field(default=1000, metadata={"help": 'bootstrap resamples of the probe answers (interval of each mean)'})
    confidence: float = field(default=0.95, metadata={"help": "the bootstrap interval's confidence level"})

    def __post_init__(self) -> None:
        require(bool(self.answers) == bool(self.direction), "trainer.probe",
                "needs both trainer.probe.answers and trainer.probe.direction (or neither)")
        require(self.batch_size > 0, "trainer.probe.batch_size", f"must be > 0, got {self.batch_size}")
        require(self.limit is None or self.limit > 0, "trainer.probe.limit", f"must be > 0 or null, got {self.limit}")
        require(self.max_answer_tokens is None or self.max_answer_tokens > 0, "trainer.probe.max_answer_tokens",
                f"must be > 0 or null, got {self.max_answer_tokens}")
        require(self.n_boot > 0, "trainer.probe.n_boot", f"must be > 0, got {self.n_boot}")
        require(0 < self.confidence < 1, "trainer.probe.confidence", f"must be in (0, 1), got {self.confidence}")
        require(self.layer is None or self.layers is None or self.layer in self.layers, "trainer.probe.layer",
                f"{self.layer} is not among trainer.probe.layers {self.layers}")
