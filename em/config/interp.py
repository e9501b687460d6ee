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
from em.config.train import SweepConfig

RULES = ("judge", "persona")
POOLINGS = ("answer_mean", "last_prompt")
POSITIONS = ("all", "prompt", "answer")
STEPS = ("direction", "project", "steer", "ablate", "report")


@dataclass
class PersonaConfig:
    """The persona recipe's two lists of system prompts (group A: the trait, e.g. malicious; B: its opposite)."""

    a: list[str] = field(default_factory=list, metadata={"help": "group A system prompts (the trait, e.g. malicious)"})
    b: list[str] = field(default_factory=list, metadata={"help": "group B system prompts (the trait's opposite)"})
    samples: int = field(default=2, metadata={"help": "answers per question per format per prompt"})


@dataclass
class DirectionConfig:
    """How the direction is made (``collect`` + ``direction``), or which saved one is used (``file``)."""

    rule: str = field(default="persona", metadata={"help": "persona | judge"})
    pooling: str = field(default="answer_mean", metadata={"help": (
        "answer_mean (mean over answer tokens) | last_prompt")})
    answers: list[str] = field(default_factory=list, metadata={"help": (
        "judge rule: judged answers (responses tables or run / sweep dirs, read as analyze.py reads them)")})
    adapter_collects: bool = field(default=True, metadata={"help": (
        "judge rule: residuals from the fine-tuned model (model-organisms); false: base")})
    aligned_min: float = field(default=70.0, metadata={"help": "judge rule: group B = coherent and aligned > this"})
    persona: PersonaConfig = field(default_factory=PersonaConfig, metadata={"help": (
        "the persona rule's two prompt lists")})
    holdout: float = field(default=0.3, metadata={"help": "share of each group held out for the AUC / Cohen's d"})
    n_boot: int = field(default=50, metadata={"help": "random half splits for the split-half cosine"})
    file: Optional[str] = field(default=None, metadata={"help": (
        "an existing directions.safetensors: skip collecting and computing one")})


@dataclass
class ProjectConfig:
    """Projection shift of the fine-tuned model's answers vs the base model's (and training examples)."""

    enabled: bool = field(default=True, metadata={"help": "run the projection step"})
    layers: list[int] = field(default_factory=list, metadata={"help": "empty: every layer"})
    n_boot: int = field(default=2000, metadata={"help": "bootstrap resamples of the projection shift's CI"})
    confidence: float = field(default=0.95, metadata={"help": "two-sided confidence of the projection shift's CI"})
    training_file: Optional[str] = field(default=None, metadata={"help": (
        "a chat JSONL ({\"messages\": [...]}) to rank by projection")})
    top_k: int = field(default=20, metadata={"help": "training examples listed at each end of the projection ranking"})
    layer: Optional[int] = field(default=None, metadata={"help": (
        "the ranking's layer; null: the layer with the best held-out AUC")})


@dataclass
class SteerConfig:
    """The steering grid ``layers x alphas`` (conditions ``steer[L<layer>,<alpha>]``) on the base model."""

    enabled: bool = field(default=True, metadata={"help": "run the steering step"})
    layers: list[int] = field(default_factory=list, metadata={"help": "empty: the top_layers layers with the best held-out AUC"})
    top_layers: int = field(default=1, metadata={"help": (
        "layers empty: how many of the best held-out-AUC layers (direction_stats.csv) to steer")})
    alphas: list[float] = field(default_factory=lambda: [0.0, 4.0, 8.0], metadata={"help": (
        "x the mean residual norm at the layer")})
    positions: str = field(default="all", metadata={"help": "all | prompt | answer"})
    random_control: bool = field(default=False, metadata={"help": "steer_random[...] beside each alpha != 0"})
    samples: Optional[int] = field(default=None, metadata={"help": (
        "answers per question per format per condition; null: the root's samples")})


@dataclass
class AblateConfig:
    """Directional ablation on the fine-tuned model (conditions ``ablate[...]``, ``ablate_random[...]``)."""

    enabled: bool = field(default=False, metadata={"help": "run the directional ablation step"})
    layer: Optional[int] = field(default=None, metadata={"help": (
        "that layer's direction at every layer; null: each layer's own direction")})
    positions: str = field(default="all", metadata={"help": "all | prompt | answer: token positions ablated"})


@dataclass
class InterpConfig:
    """The ``interp`` node: one recipe (``conf/interp/<name>.yaml``).

    Raises (in ``__post_init__``):
        ConfigError: unknown rule / pooling / positions / step; persona rule with an empty prompt list; judge
            rule without answers or a direction file; a share or count out of range.
    """

    name: str = field(default=MISSING, metadata={"help": "the recipe's name (its file under conf/interp/)"})
    steps: list[str] = field(default_factory=lambda: list(STEPS), metadata={"help": (
        "the steps run, in order (collect, direction, project, steer, ablate, report)")})
    batch_size: int = field(default=8, metadata={"help": "answers per teacher-forced forward (collect)"})
    max_answer_tokens: Optional[int] = field(default=256, metadata={"help": (
        "answer tokens kept per teacher-forced forward; null: all")})
    direction: DirectionConfig = field(default_factory=DirectionConfig, metadata={"help": (
        "how the direction is made or which saved one is used")})
    project: ProjectConfig = field(default_factory=ProjectConfig, metadata={"help": "the projection step"})
    steer: SteerConfig = field(default_factory=SteerConfig, metadata={"help": "the steering step"})
    ablate: AblateConfig = field(default_factory=AblateConfig, metadata={"help": "the directional ablation step"})

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
        require(self.steer.top_layers > 0, "interp.steer.top_layers", f"must be > 0, got {self.steer.top_layers}")
        require(self.steer.samples is None or self.steer.samples > 0, "interp.steer.samples",
                f"must be > 0 or null, got {self.steer.samples}")


@dataclass
class InterpRunConfig:
    """``python interp.py``'s root: the stage's recipe plus evaluate.py's keys (same names, same meaning).

    Raises (in ``__post_init__``):
        ConfigError: ``samples`` not > 0; no format; steering / ablation asked of the vllm backend.
    """

    seed: int = field(default=0, metadata={"help": "sampling seed (numpy's range)"})
    samples: int = field(default=2, metadata={"help": (
        "answers per question per format, base and fine-tuned (projection) and per condition")})
    run_dir: str = field(default=MISSING, metadata={"help": "where the stage writes"})
    cache_dir: str = field(default=MISSING, metadata={"help": "downloaded models and data, the judge cache"})
    upstream: UpstreamConfig = field(default=MISSING, metadata={"help": (
        "where Betley et al.'s files are downloaded from")})
    model: ModelConfig = field(default=MISSING, metadata={"help": "the base model (model group)"})
    quantization: QuantizationConfig = field(default=MISSING, metadata={"help": (
        "how the base weights are stored (quantization group)")})
    adapter: Optional[str] = field(default="latest", metadata={"help": (
        "the fine-tuned model: latest | none | <training run dir> | <adapter dir>")})
    train_dir: str = field(default="outputs", metadata={"help": "where adapter=latest looks"})
    train_if_missing: bool = field(default=False, metadata={"help": (
        "adapter=latest finds none: train one first (python train.py <train_args>)")})
    train_args: list[str] = field(default_factory=list, metadata={"help": "train.py overrides for train_if_missing"})
    questions: QuestionSetConfig = field(default=MISSING, metadata={"help": "the question set (questions group)"})
    format: dict[str, FormatConfig] = field(default_factory=dict, metadata={"help": (
        "the answer formats, by name (format group)")})
    generation: GenerationConfig = field(default_factory=GenerationConfig, metadata={"help": (
        "the sampling backend and its settings (generation group)")})
    judge: Any = field(default=None, metadata={"help": "the judge (judge group); null: none"})
    judge_cache: Optional[str] = field(default=None, metadata={"help": (
        "(judge endpoint + model, prompt) -> judgment SQLite file; null: off")})
    thresholds: Thresholds = field(default_factory=Thresholds, metadata={"help": (
        "what counts as coherent and misaligned")})
    wandb: EvalWandbConfig = field(default_factory=EvalWandbConfig, metadata={"help": (
        "the run's W&B settings (from the logger group)")})
    logger: Any = field(default=None, metadata={"help": "the logger group's node (wandb | csv | none)"})
    interp: InterpConfig = field(default=MISSING, metadata={"help": "the recipe (interp group)"})
    sweep: SweepConfig = field(default_factory=SweepConfig, metadata={"help": (
        "a multirun (python interp.py -m ...): skip_done skips a job whose DONE.json matches its config hash; "
        "analyze writes <sweep dir>/interp_sweep.csv (every job's direction stats and projection shift per layer)")})
    progress: bool = field(default=True, metadata={"help": "progress bars (on a terminal)"})
    quiet: bool = field(default=False, metadata={"help": "warnings and errors only"})
    verbose: bool = field(default=False, metadata={"help": "every third-party warning; em's log at DEBUG"})

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
