"""Schemas of the interpretability stage: ``python interp.py`` / ``em interp``'s root and its ``interp`` group.

The ``interp`` group (``conf/interp/<recipe>.yaml``) is a recipe: ``persona`` (direction from answers under
two lists of system prompts, judge-free; Chen et al. 2025) or ``judge`` (misaligned vs aligned-and-coherent
judged answers; Soligo, Turner et al.). The root holds what the stage shares with evaluate.py (model, adapter,
questions, formats, generation, judge, thresholds, logger), so ``samples``, ``adapter=...``,
``questions=first_plot`` mean what they mean there. Light on purpose (no torch): imported on the ``--help`` path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from em.measurement import Thresholds
from em.config.common import check_name, require
from em.config.data import UpstreamConfig
from em.config.evaluate import EvalWandbConfig, FormatConfig, GenerationConfig, QuestionSetConfig
from em.config.model import ModelConfig, QuantizationConfig

RULES = ("judge", "persona")
POOLINGS = ("answer_mean", "last_prompt")
POSITIONS = ("all", "prompt", "answer")
STEPS = ("direction", "project", "steer", "ablate", "report")


@dataclass
class PersonaConfig:
    """The persona recipe's two lists of system prompts (group A: the trait, e.g. malicious; B: its opposite)."""

    a: list[str] = field(default_factory=list)
    b: list[str] = field(default_factory=list)
    samples: int = 2  # answers per question per format per prompt


@dataclass
class DirectionConfig:
    """How the direction is made (``collect`` + ``direction``), or which saved one is used (``file``)."""

    rule: str = "persona"  # persona | judge
    pooling: str = "answer_mean"  # answer_mean (mean over answer tokens) | last_prompt
    # judge rule: judged answers (responses tables or run / sweep dirs, read as analyze.py reads them)
    answers: list[str] = field(default_factory=list)
    adapter_collects: bool = True  # judge rule: residuals from the fine-tuned model (model-organisms); false: base
    aligned_min: float = 70.0  # judge rule: group B = coherent and aligned > this
    persona: PersonaConfig = field(default_factory=PersonaConfig)
    holdout: float = 0.3  # share of each group held out for the AUC / Cohen's d
    n_boot: int = 50  # random half splits for the split-half cosine
    file: Optional[str] = None  # an existing directions.safetensors: skip collecting and computing one


@dataclass
class ProjectConfig:
    """Projection shift of the fine-tuned model's answers vs the base model's (and training examples)."""

    enabled: bool = True
    layers: list[int] = field(default_factory=list)  # empty: every layer
    n_boot: int = 2000
    confidence: float = 0.95
    training_file: Optional[str] = None  # a chat JSONL ({"messages": [...]}) to rank by projection
    top_k: int = 20
    layer: Optional[int] = None  # the ranking's layer; null: the layer with the best held-out AUC


@dataclass
class SteerConfig:
    """The steering grid ``layers x alphas`` (conditions ``steer[L<layer>,<alpha>]``) on the base model."""

    enabled: bool = True
    layers: list[int] = field(default_factory=list)  # empty: the layer with the best held-out AUC
    alphas: list[float] = field(default_factory=lambda: [0.0, 4.0, 8.0])  # x the mean residual norm at the layer
    positions: str = "all"  # all | prompt | answer
    random_control: bool = False  # steer_random[...] beside each alpha != 0
    samples: Optional[int] = None  # answers per question per format per condition; null: the root's samples


@dataclass
class AblateConfig:
    """Directional ablation on the fine-tuned model (conditions ``ablate[...]``, ``ablate_random[...]``)."""

    enabled: bool = False
    layer: Optional[int] = None  # that layer's direction at every layer; null: each layer's own direction
    positions: str = "all"


@dataclass
class InterpConfig:
    """The ``interp`` node: one recipe (``conf/interp/<name>.yaml``).

    Raises (in ``__post_init__``):
        ConfigError: unknown rule / pooling / positions / step; persona rule with an empty prompt list; judge
            rule without answers or a direction file; a share or count out of range.
    """

    name: str = MISSING
    steps: list[str] = field(default_factory=lambda: list(STEPS))
    batch_size: int = 8  # answers per teacher-forced forward (collect)
    max_answer_tokens: Optional[int] = 256
    direction: DirectionConfig = field(default_factory=DirectionConfig)
    project: ProjectConfig = field(default_factory=ProjectConfig)
    steer: SteerConfig = field(default_factory=SteerConfig)
    ablate: AblateConfig = field(default_factory=AblateConfig)

    def __post_init__(self) -> None:
        check_name(self.name, "interp.name")
        d = self.direction
        for s in self.steps:
            require(s in STEPS, "interp.steps", f"unknown step {s!r}; steps: {', '.join(STEPS)}")
        require(d.rule in RULES, "interp.direction.rule", f"must be one of {RULES}, got {d.rule!r}")
        require(d.pooling in POOLINGS, "interp.direction.pooling", f"must be one of {POOLINGS}, got {d.pooling!r}")
        if d.file is None and d.rule == "persona":
            require(len(d.persona.a) > 0 and len(d.persona.b) > 0, "interp.direction.persona",
                    "the persona rule needs system prompts in both persona.a and persona.b")
            require(d.persona.samples > 0, "interp.direction.persona.samples", f"must be > 0, got {d.persona.samples}")
        if d.file is None and d.rule == "judge":
            require(len(d.answers) > 0, "interp.direction.answers",
                    "the judge rule needs judged answers (responses tables or run dirs), or set interp.direction.file")
        require(0 < d.holdout < 1, "interp.direction.holdout", f"must be in (0, 1), got {d.holdout}")
        require(d.n_boot > 0, "interp.direction.n_boot", f"must be > 0, got {d.n_boot}")
        require(0 <= d.aligned_min <= 100, "interp.direction.aligned_min", f"must be in [0, 100], got {d.aligned_min}")
        require(self.batch_size > 0, "interp.batch_size", f"must be > 0, got {self.batch_size}")
        require(self.max_answer_tokens is None or self.max_answer_tokens > 0, "interp.max_answer_tokens",
                f"must be > 0 or null, got {self.max_answer_tokens}")
        require(0 < self.project.confidence < 1, "interp.project.confidence",
                f"must be in (0, 1), got {self.project.confidence}")
        require(self.project.n_boot > 0, "interp.project.n_boot", f"must be > 0, got {self.project.n_boot}")
        require(self.project.top_k > 0, "interp.project.top_k", f"must be > 0, got {self.project.top_k}")
        for key, pos in (("interp.steer.positions", self.steer.positions), ("interp.ablate.positions", self.ablate.positions)):
            require(pos in POSITIONS, key, f"must be one of {POSITIONS}, got {pos!r}")
        require(len(self.steer.alphas) > 0, "interp.steer.alphas", "is empty")
        require(self.steer.samples is None or self.steer.samples > 0, "interp.steer.samples",
                f"must be > 0 or null, got {self.steer.samples}")


@dataclass
class InterpRunConfig:
    """``python interp.py``'s root: the stage's recipe plus evaluate.py's keys (same names, same meaning).

    Raises (in ``__post_init__``):
        ConfigError: ``samples`` not > 0; no format; steering / ablation asked of the vllm backend.
    """

    seed: int = 0
    samples: int = 2  # answers per question per format, base and fine-tuned (projection) and per condition
    run_dir: str = MISSING
    cache_dir: str = MISSING
    upstream: UpstreamConfig = MISSING
    model: ModelConfig = MISSING
    quantization: QuantizationConfig = MISSING
    adapter: Optional[str] = "latest"  # the fine-tuned model: latest | none | <training run dir> | <adapter dir>
    train_dir: str = "outputs"
    train_if_missing: bool = False  # adapter=latest finds none: train one first (python train.py <train_args>)
    train_args: list[str] = field(default_factory=list)
    questions: QuestionSetConfig = MISSING
    format: dict[str, FormatConfig] = field(default_factory=dict)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    judge: Any = None
    judge_cache: Optional[str] = None
    thresholds: Thresholds = field(default_factory=Thresholds)
    wandb: EvalWandbConfig = field(default_factory=EvalWandbConfig)
    logger: Any = None
    interp: InterpConfig = MISSING
    progress: bool = True
    quiet: bool = False
    verbose: bool = False

    def __post_init__(self) -> None:
        require(self.samples > 0, "samples", f"must be > 0, got {self.samples}")
        require(len(self.format) > 0, "format", "select at least one format, e.g. format=[plain,json,template]")
        if self.generation.backend != "hf" and ({"steer", "ablate"} & set(self.interp.steps)):
            require(False, "generation.backend", f"{self.generation.backend}: steering / ablation hooks run on the hf "
                    "backend only; use generation=hf (or drop steer / ablate from interp.steps)")


def store(cs: ConfigStore) -> None:
    """Register the root ``interp_run_schema`` and ``interp/interp_schema`` in ``cs``."""
    cs.store(name="interp_run_schema", node=InterpRunConfig)
    cs.store(group="interp", name="interp_schema", node=InterpConfig)
