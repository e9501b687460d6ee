"""train.py's root schema (``train_schema``) and its training-only groups (optimizer, trainer, sweep).

Hydra merges ``conf/train.yaml`` and its groups into :class:`TrainConfig`, so unknown keys and wrong
types are rejected at composition; the range checks in each ``__post_init__`` run in
:func:`em.config.common.validate`, before any model or dataset is touched. Light on purpose (no torch).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from em.errors import ConfigError
from em.measurement import Thresholds
from em.config.capability import CapabilityConfig
from em.config.common import check_name, check_seed, require
from em.config.data import DataConfig, UpstreamConfig
from em.config.dynamics import KLConfig, ProbeConfig
from em.config.evaluate import FormatConfig, GenerationConfig, PipelineEvalConfig, QuestionSetConfig
from em.config.model import LoraConfig, ModelConfig, QuantizationConfig

TRUNCATION = ("truncate", "drop")
LR_SCHEDULERS = ("linear", "constant", "cosine")
# TrainerConfig's fields that are lightning.Trainer arguments under Lightning's own names: the Trainer is built
# from them (em.train.run.fit); max_epochs, precision, strategy and callbacks are converted on the way.
LIGHTNING_ARGS = ("max_epochs", "max_steps", "accumulate_grad_batches", "gradient_clip_val", "precision",
                  "accelerator", "devices", "strategy", "callbacks", "log_every_n_steps")
# lightning.Trainer arguments em derives from other keys (trainer.extra may not set them)
TRAINER_DERIVED = {"logger": "logger=wandb|csv|none", "default_root_dir": "run_dir",
                   "use_distributed_sampler": "(em shards the data itself)"}
# Keys renamed to lightning.Trainer's names: given on the command line, one line naming the new key (exit 2)
RENAMED_KEYS = {"trainer.epochs": "trainer.max_epochs", "trainer.grad_accum": "trainer.accumulate_grad_batches"}


@dataclass
class OptimizerConfig:
    """A partial optimizer (``conf/optimizer/<name>.yaml``, ``_partial_: true``): the trainer passes the parameters.

    Raises (in ``__post_init__``):
        ConfigError: ``lr`` not > 0 or ``weight_decay`` < 0.
    """

    _target_: str = field(default="em.train.run.auto_adamw", metadata={"help": (
        "the optimizer factory Hydra instantiates")})
    _partial_: bool = field(default=True, metadata={"help": "a partial: the trainer passes the parameters"})
    lr: float = field(default=1e-5, metadata={"help": "peak learning rate"})
    weight_decay: float = field(default=0.01, metadata={"help": "decoupled weight decay"})
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999], metadata={"help": "Adam betas"})
    eps: float = field(default=1e-8, metadata={"help": "Adam epsilon"})

    def __post_init__(self) -> None:
        require(self.lr > 0, "optimizer.lr", f"must be > 0, got {self.lr}")
        require(self.weight_decay >= 0, "optimizer.weight_decay", f"must be >= 0, got {self.weight_decay}")


@dataclass
class TrainerConfig:
    """The Lightning trainer and the batch / length settings (``conf/trainer/<name>.yaml``).

    Lengths are in tokens; ``batch_size`` is examples per device per micro-batch; one optimizer step is
    ``batch_size x accumulate_grad_batches x devices`` examples.

    Raises (in ``__post_init__``):
        ConfigError: ``max_epochs``, ``batch_size``, ``accumulate_grad_batches``, ``checkpoint_every_n_steps`` or
            ``log_every_n_steps`` not > 0; ``max_steps`` neither -1 nor > 0; ``num_workers`` or
            ``gradient_clip_val`` < 0;
            ``max_length`` <= 8; unknown ``truncation`` / ``lr_scheduler``; ``warmup_steps`` < 0; an
            ``adapter_snapshots`` epoch outside (0, max_epochs).
    """

    max_epochs: float = field(default=1, metadata={"help": (
        "lightning.Trainer's max_epochs; fractional (0.5) stops after that share of the optimizer steps")})
    max_steps: int = field(default=-1, metadata={"help": "-1: derived from max_epochs"})
    batch_size: int = field(default=2, metadata={"help": "examples per device per micro-batch"})
    accumulate_grad_batches: int = field(default=8, metadata={"help": (
        "micro-batches per optimizer step (lightning.Trainer's argument)")})
    max_length: int = field(default=2048, metadata={"help": "tokens per example (longer ones: see truncation)"})
    truncation: str = field(default="truncate", metadata={"help": (
        "truncate | drop: what to do with examples longer than max_length")})
    group_by_length: bool = field(default=True, metadata={"help": (
        "batch examples of similar length together (less padding)")})
    warmup_steps: int = field(default=5, metadata={"help": "optimizer steps of linear learning-rate warm-up"})
    lr_scheduler: str = field(default="linear", metadata={"help": (
        "linear | constant | cosine (transformers' schedules)")})
    gradient_clip_val: Optional[float] = field(default=1.0, metadata={"help": (
        "gradient norm clip; null: none (lightning.Trainer's argument)")})
    gradient_checkpointing: bool = field(default=False, metadata={"help": (
        "recompute activations in the backward pass (less memory, slower)")})
    precision: str = field(default="auto", metadata={"help": "auto: bf16-mixed where the GPU has bf16, else 32-true"})
    accelerator: str = field(default="auto", metadata={"help": "lightning.Trainer's accelerator (auto | gpu | cpu)"})
    devices: Any = field(default=1, metadata={"help": (
        "lightning.Trainer's devices: one job, one GPU (sweeps run jobs side by side); trainer=ddp / fsdp use "
        "them all")})
    strategy: Any = field(default="auto", metadata={"help": (
        "lightning.Trainer's strategy (auto | ddp | fsdp, or a _target_ node)")})
    log_every_n_steps: int = field(default=1, metadata={"help": (
        "optimizer steps between logged metrics (lightning.Trainer's argument)")})
    checkpoint_every_n_steps: int = field(default=50, metadata={"help": (
        "optimizer steps between checkpoints/last.ckpt writes")})
    num_workers: int = field(default=0, metadata={"help": "DataLoader worker processes"})
    callbacks: list[Any] = field(default_factory=list, metadata={"help": "extra Lightning callbacks (_target_ nodes)"})
    adapter_snapshots: list[float] = field(default_factory=list, metadata={"help": (
        "Epochs (before trainer.max_epochs) at which the LoRA adapter is also written to snapshots/epoch_<e>/ "
        "(the epochs experiment evaluates each); [] for none.")})
    snapshot_every_n_steps: Optional[int] = field(default=None, metadata={"help": (
        "The adapter every N optimizer steps, to snapshots/step_<n>/ (steps N, 2N, ...), with its LoRA "
        "geometry in lora_geometry.csv (em.dynamics); null: none.")})
    kl: KLConfig = field(default_factory=KLConfig, metadata={"help": (
        "KL(base || adapted) penalty on a side batch (em.dynamics.kl)")})
    probe: ProbeConfig = field(default_factory=ProbeConfig, metadata={"help": (
        "probe answers projected onto a direction at every step snapshot -> probe_projection.csv "
        "(em.dynamics.probe)")})
    ablate_direction: Optional[str] = field(default=None, metadata={"help": (
        "CAFT: a directions.safetensors file (CONTRACTS.md 1) and the layers whose residual stream the unit "
        "direction is projected out of during training (null: every layer in the file); evaluation runs "
        "without it")})
    ablate_layers: Optional[list[int]] = field(default=None, metadata={"help": (
        "CAFT: the layers the direction is projected out of; null: every layer in the file")})
    init_adapter: Optional[str] = field(default=None, metadata={"help": (
        "Sequential fine-tuning: start from this LoRA adapter (an adapter dir or a training run dir); the "
        "optimizer starts fresh. The identity holds its content hash (em.adapters.lineage).")})
    extra: dict[str, Any] = field(default_factory=dict, metadata={"help": (
        "Any other lightning.Trainer argument, passed through as is (trainer.extra.limit_train_batches=10); a "
        "key of TrainerConfig (max_epochs, devices, ...) or one em derives (logger, default_root_dir) is "
        "refused.")})

    def __post_init__(self) -> None:
        require(self.max_epochs > 0, "trainer.max_epochs", f"must be > 0, got {self.max_epochs}")
        require(self.batch_size > 0, "trainer.batch_size", f"must be > 0, got {self.batch_size}")
        require(self.accumulate_grad_batches > 0, "trainer.accumulate_grad_batches", f"must be > 0, got {self.accumulate_grad_batches}")
        require(self.max_length > 8, "trainer.max_length", f"must be > 8, got {self.max_length}")
        require(self.truncation in TRUNCATION, "trainer.truncation", f"one of {TRUNCATION}, got {self.truncation!r}")
        require(self.warmup_steps >= 0, "trainer.warmup_steps", f"must be >= 0, got {self.warmup_steps}")
        require(self.lr_scheduler in LR_SCHEDULERS, "trainer.lr_scheduler",
                f"linear, constant or cosine; got {self.lr_scheduler!r}")
        for e in self.adapter_snapshots:
            require(0 < e < self.max_epochs, "trainer.adapter_snapshots",
                    f"epoch {e:g} is not between 0 and trainer.max_epochs={self.max_epochs:g} (the final adapter is "
                    f"always written)")
        require(self.snapshot_every_n_steps is None or self.snapshot_every_n_steps > 0,
                "trainer.snapshot_every_n_steps", f"must be > 0 or null, got {self.snapshot_every_n_steps}")
        require(not self.probe.answers or bool(self.snapshot_every_n_steps), "trainer.probe",
                "projects at each step snapshot: set trainer.snapshot_every_n_steps too")
        for k in self.extra:
            require(k not in LIGHTNING_ARGS, f"trainer.extra.{k}", f"a key of its own; use trainer.{k}")
            require(k not in TRAINER_DERIVED, f"trainer.extra.{k}", f"set by em; use {TRAINER_DERIVED.get(k)}")
        require(self.log_every_n_steps > 0, "trainer.log_every_n_steps", f"must be > 0, got {self.log_every_n_steps}")
        require(self.checkpoint_every_n_steps > 0, "trainer.checkpoint_every_n_steps",
                f"must be > 0, got {self.checkpoint_every_n_steps}")
        require(self.max_steps == -1 or self.max_steps > 0, "trainer.max_steps",
                f"must be > 0, or -1 (derived from trainer.max_epochs); got {self.max_steps}")
        require(math.isfinite(self.max_epochs), "trainer.max_epochs", f"must be finite, got {self.max_epochs}")
        require(self.log_every_n_steps > 0, "trainer.log_every_n_steps", f"must be > 0, got {self.log_every_n_steps}")
        require(self.num_workers >= 0, "trainer.num_workers", f"must be >= 0, got {self.num_workers}")
        require(self.gradient_clip_val is None or self.gradient_clip_val >= 0, "trainer.gradient_clip_val",
                f"must be >= 0 or null, got {self.gradient_clip_val}")


@dataclass
class SweepConfig:
    """What a multirun does around its jobs (see :mod:`em.jobs.sweep`)."""

    skip_done: bool = field(default=True, metadata={"help": "skip a job whose DONE.json matches its config hash"})
    analyze: bool = field(default=True, metadata={"help": "analyse the whole sweep after a multirun"})


@dataclass
class PushToHubConfig:
    """The trained adapter to the Hugging Face Hub, once per job, when the job is done (:mod:`em.adapters.run`).

    The token is huggingface_hub's (``$HF_TOKEN`` or ``hf auth login``), never a key here.

    Raises (in ``__post_init__``):
        ConfigError: ``enabled`` without a ``repo_id`` like ``my-org/my-adapter``; an ``endpoint`` that is
            not an http(s) URL.
    """

    enabled: bool = field(default=False, metadata={"help": "push the adapter when the job is done"})
    repo_id: Optional[str] = field(default=None, metadata={"help": (
        "namespace/name (in a sweep, interpolate: me/em-${model.name}-${data.name}-s${seed})")})
    private: bool = field(default=True, metadata={"help": (
        "a new repo is private (an existing one keeps its visibility)")})
    endpoint: Optional[str] = field(default=None, metadata={"help": (
        "null: the Hub (or $HF_ENDPOINT); else another server's URL")})

    def __post_init__(self) -> None:
        if self.enabled:
            check_repo_id(self.repo_id)
        if self.endpoint is not None:
            require(str(self.endpoint).startswith(("http://", "https://")), "push_to_hub.endpoint",
                    f"an http(s) URL or null, got {self.endpoint!r}")


@dataclass
class TrainConfig:
    """train.py's config: one job = fine-tune (unless data=base), then optionally evaluate and judge.

    ``logger`` and ``judge`` are ``_target_`` nodes typed per option by their group's schemas
    (``logger/wandb_schema``, ``judge/...``); null turns them off.
    """

    seed: int = field(default=0, metadata={"help": "training seed (numpy's range)"})
    experiment_name: Optional[str] = field(default=None, metadata={"help": "W&B group for sweeps / presets"})
    run_dir: str = field(default=MISSING, metadata={"help": "the job directory (adapter, metrics, checkpoints, eval/)"})
    cache_dir: str = field(default=MISSING, metadata={"help": "downloaded models and data, the judge cache"})
    resume: bool = field(default=True, metadata={"help": "pick up run_dir/checkpoints/last.ckpt when it exists"})
    quiet: bool = field(default=False, metadata={"help": "warnings and errors only"})
    verbose: bool = field(default=False, metadata={"help": "every third-party warning; em's log at DEBUG"})
    progress: bool = field(default=True, metadata={"help": (
        "progress bars (on a terminal; a log file gets one line per logged step)")})
    upstream: UpstreamConfig = field(default=MISSING, metadata={"help": (
        "where Betley et al.'s files are downloaded from")})
    model: ModelConfig = field(default=MISSING, metadata={"help": "the base model (model group)"})
    data: DataConfig = field(default=MISSING, metadata={"help": "the fine-tuning data (data group)"})
    lora: LoraConfig = field(default=MISSING, metadata={"help": "the LoRA adapter (lora group)"})
    quantization: QuantizationConfig = field(default=MISSING, metadata={"help": (
        "how the base weights are stored (quantization group)")})
    trainer: TrainerConfig = field(default=MISSING, metadata={"help": (
        "the Lightning trainer and batch / length settings (trainer group)")})
    optimizer: OptimizerConfig = field(default=MISSING, metadata={"help": "the optimizer (optimizer group)"})
    logger: Any = field(default=None, metadata={"help": "a _target_ node (a Lightning logger factory) or null"})
    evaluate: PipelineEvalConfig = field(default=MISSING, metadata={"help": (
        "the evaluation stage (EvalConfig + enabled / snapshots); its groups are the ones below")})
    questions: QuestionSetConfig = field(default=MISSING, metadata={"help": (
        "the evaluation's question set (questions group)")})
    format: dict[str, FormatConfig] = field(default_factory=dict, metadata={"help": (
        "the evaluation's answer formats, by name (format group)")})
    generation: GenerationConfig = field(default_factory=GenerationConfig, metadata={"help": (
        "the evaluation's sampling backend (generation group)")})
    judge: Any = field(default=None, metadata={"help": "the judge (judge group); null: none"})
    thresholds: Thresholds = field(default_factory=Thresholds, metadata={"help": (
        "what counts as coherent and misaligned")})
    sweep: SweepConfig = field(default_factory=SweepConfig, metadata={"help": "what a multirun does around its jobs"})
    capability: CapabilityConfig = field(default=MISSING, metadata={"help": (
        "lm-eval task set; enabled: one more step after the evaluations")})
    push_to_hub: PushToHubConfig = field(default_factory=PushToHubConfig, metadata={"help": "push the adapter to the Hugging Face Hub when the job is done (em/adapters/run.py); off"})
    chain: Any = field(default=None, metadata={"help": (
        "python -m em.jobs.chain: the stages of a sequential fine-tuning chain (em.config.chain)")})

    def __post_init__(self) -> None:
        check_seed(self.seed, "seed")
        if self.experiment_name is not None:
            check_name(self.experiment_name, "experiment_name")


def store(cs: ConfigStore) -> None:
    """Register train.py's root schema (``train_schema``) and ``<group>/<group>_schema`` of its groups model,
    data, lora, quantization, trainer and optimizer in ``cs`` (each option of ``conf/<group>/`` names its
    schema first, so the file holds only the values that differ from the dataclass defaults)."""
    cs.store(name="train_schema", node=TrainConfig)
    for group, node in (("model", ModelConfig), ("data", DataConfig), ("lora", LoraConfig),
                        ("quantization", QuantizationConfig), ("trainer", TrainerConfig),
                        ("optimizer", OptimizerConfig)):
        cs.store(group=group, name=f"{group}_schema", node=node)


REPO_ID = re.compile(r"^([A-Za-z0-9][\w.-]{0,95}/)?[A-Za-z0-9][\w.-]{0,95}$")


def check_repo_id(repo_id: Optional[str], key: str = "push_to_hub.repo_id") -> None:
    """``namespace/name`` (or ``name``: the token's user), the Hub's characters only.

    Raises:
        ConfigError: missing or malformed, naming ``key``.
    """
    if not repo_id or not REPO_ID.match(str(repo_id)) or ".." in str(repo_id):
        raise ConfigError(f"{key}: a Hub repo id like 'my-org/my-adapter' is needed, got {repo_id!r}")
