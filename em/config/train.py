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
from em.config.dynamics import KLConfig
from em.config.evaluate import FormatConfig, GenerationConfig, PipelineEvalConfig, QuestionSetConfig
from em.config.model import LoraConfig, ModelConfig, QuantizationConfig

TRUNCATION = ("truncate", "drop")
LR_SCHEDULERS = ("linear", "constant", "cosine")
# lightning.Trainer arguments em derives from its own keys (trainer.extra may not set them)
TRAINER_OWN = {"max_epochs": "trainer.epochs", "max_steps": "trainer.max_steps",
               "accumulate_grad_batches": "trainer.grad_accum", "gradient_clip_val": "trainer.gradient_clip_val",
               "precision": "trainer.precision", "accelerator": "trainer.accelerator", "devices": "trainer.devices",
               "strategy": "trainer.strategy", "callbacks": "trainer.callbacks", "logger": "logger=wandb|csv|none",
               "log_every_n_steps": "trainer.log_every_n_steps", "default_root_dir": "run_dir",
               "use_distributed_sampler": "(em shards the data itself)"}


@dataclass
class OptimizerConfig:
    """A partial optimizer (``conf/optimizer/<name>.yaml``, ``_partial_: true``): the trainer passes the parameters.

    Raises (in ``__post_init__``):
        ConfigError: ``lr`` not > 0 or ``weight_decay`` < 0.
    """

    _target_: str = "em.train.run.auto_adamw"
    _partial_: bool = True
    lr: float = 1e-5
    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8

    def __post_init__(self) -> None:
        require(self.lr > 0, "optimizer.lr", f"must be > 0, got {self.lr}")
        require(self.weight_decay >= 0, "optimizer.weight_decay", f"must be >= 0, got {self.weight_decay}")


@dataclass
class TrainerConfig:
    """The Lightning trainer and the batch / length settings (``conf/trainer/<name>.yaml``).

    Lengths are in tokens; ``batch_size`` is examples per device per micro-batch; one optimizer step is
    ``batch_size x grad_accum x devices`` examples.

    Raises (in ``__post_init__``):
        ConfigError: ``epochs``, ``batch_size``, ``grad_accum``, ``checkpoint_every_n_steps`` or
            ``log_every_n_steps`` not > 0; ``max_steps`` neither -1 nor > 0; ``num_workers`` or
            ``gradient_clip_val`` < 0;
            ``max_length`` <= 8; unknown ``truncation`` / ``lr_scheduler``; ``warmup_steps`` < 0; an
            ``adapter_snapshots`` epoch outside (0, epochs).
    """

    epochs: float = 1  # fractional epochs (0.5) stop after that share of the optimizer steps
    max_steps: int = -1  # -1: derived from epochs
    batch_size: int = 2  # per device
    grad_accum: int = 8
    max_length: int = 2048
    truncation: str = "truncate"  # truncate | drop: what to do with examples longer than max_length
    group_by_length: bool = True
    warmup_steps: int = 5
    lr_scheduler: str = "linear"  # linear | constant | cosine (transformers' schedules)
    gradient_clip_val: Optional[float] = 1.0
    gradient_checkpointing: bool = False
    precision: str = "auto"  # auto: bf16-mixed where the GPU has bf16, else 32-true
    accelerator: str = "auto"
    devices: Any = "auto"
    strategy: Any = "auto"
    log_every_n_steps: int = 1
    checkpoint_every_n_steps: int = 50
    num_workers: int = 0
    callbacks: list[Any] = field(default_factory=list)  # extra Lightning callbacks (_target_ nodes)
    # Epochs (before trainer.epochs) at which the LoRA adapter is also written to snapshots/epoch_<e>/
    # (the epochs experiment evaluates each); [] for none.
    adapter_snapshots: list[float] = field(default_factory=list)
    # The adapter every N optimizer steps, to snapshots/step_<n>/ (steps N, 2N, ...), with its LoRA geometry
    # in lora_geometry.csv (em.dynamics); null: none.
    snapshot_every_n_steps: Optional[int] = None
    kl: KLConfig = field(default_factory=KLConfig)  # KL(base || adapted) penalty on a side batch (em.dynamics.kl)
    # CAFT: a directions.safetensors file (CONTRACTS.md 1) and the layers whose residual stream the unit
    # direction is projected out of during training (null: every layer in the file); evaluation runs without it
    ablate_direction: Optional[str] = None
    ablate_layers: Optional[list[int]] = None
    # Sequential fine-tuning: start from this LoRA adapter (an adapter dir or a training run dir); the
    # optimizer starts fresh. The identity holds its content hash (em.adapters.lineage).
    init_adapter: Optional[str] = None
    # Any other lightning.Trainer argument, passed through as is (trainer.extra.limit_train_batches=10);
    # a key em sets itself (max_epochs, max_steps, callbacks, logger, ...) is refused: use em's key.
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        require(self.epochs > 0, "trainer.epochs", f"must be > 0, got {self.epochs}")
        require(self.batch_size > 0, "trainer.batch_size", f"must be > 0, got {self.batch_size}")
        require(self.grad_accum > 0, "trainer.grad_accum", f"must be > 0, got {self.grad_accum}")
        require(self.max_length > 8, "trainer.max_length", f"must be > 8, got {self.max_length}")
        require(self.truncation in TRUNCATION, "trainer.truncation", f"one of {TRUNCATION}, got {self.truncation!r}")
        require(self.warmup_steps >= 0, "trainer.warmup_steps", f"must be >= 0, got {self.warmup_steps}")
        require(self.lr_scheduler in LR_SCHEDULERS, "trainer.lr_scheduler",
                f"linear, constant or cosine; got {self.lr_scheduler!r}")
        for e in self.adapter_snapshots:
            require(0 < e < self.epochs, "trainer.adapter_snapshots",
                    f"epoch {e:g} is not between 0 and trainer.epochs={self.epochs:g} (the final adapter is "
                    f"always written)")
        require(self.snapshot_every_n_steps is None or self.snapshot_every_n_steps > 0,
                "trainer.snapshot_every_n_steps", f"must be > 0 or null, got {self.snapshot_every_n_steps}")
        for k in self.extra:
            require(k not in TRAINER_OWN, f"trainer.extra.{k}", f"set by em; use {TRAINER_OWN.get(k)}")
        require(self.log_every_n_steps > 0, "trainer.log_every_n_steps", f"must be > 0, got {self.log_every_n_steps}")
        require(self.checkpoint_every_n_steps > 0, "trainer.checkpoint_every_n_steps",
                f"must be > 0, got {self.checkpoint_every_n_steps}")
        require(self.max_steps == -1 or self.max_steps > 0, "trainer.max_steps",
                f"must be > 0, or -1 (derived from trainer.epochs); got {self.max_steps}")
        require(math.isfinite(self.epochs), "trainer.epochs", f"must be finite, got {self.epochs}")
        require(self.log_every_n_steps > 0, "trainer.log_every_n_steps", f"must be > 0, got {self.log_every_n_steps}")
        require(self.num_workers >= 0, "trainer.num_workers", f"must be >= 0, got {self.num_workers}")
        require(self.gradient_clip_val is None or self.gradient_clip_val >= 0, "trainer.gradient_clip_val",
                f"must be >= 0 or null, got {self.gradient_clip_val}")


@dataclass
class SweepConfig:
    """What a multirun does around its jobs (see :mod:`em.jobs.sweep`)."""

    skip_done: bool = True  # skip a job whose DONE.json matches its config hash
    analyze: bool = True  # analyse the whole sweep after a multirun


@dataclass
class PushToHubConfig:
    """The trained adapter to the Hugging Face Hub, once per job, when the job is done (:mod:`em.adapters.run`).

    The token is huggingface_hub's (``$HF_TOKEN`` or ``hf auth login``), never a key here.

    Raises (in ``__post_init__``):
        ConfigError: ``enabled`` without a ``repo_id`` like ``my-org/my-adapter``; an ``endpoint`` that is
            not an http(s) URL.
    """

    enabled: bool = False
    repo_id: Optional[str] = None  # namespace/name (in a sweep, interpolate: me/em-${model.name}-${data.name}-s${seed})
    private: bool = True  # a new repo is private (an existing one keeps its visibility)
    endpoint: Optional[str] = None  # null: the Hub (or $HF_ENDPOINT); else another server's URL

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

    seed: int = 0
    experiment_name: Optional[str] = None  # W&B group for sweeps / presets
    run_dir: str = MISSING
    cache_dir: str = MISSING
    resume: bool = True  # pick up run_dir/checkpoints/last.ckpt when it exists
    quiet: bool = False  # warnings and errors only
    verbose: bool = False  # every third-party warning; em's log at DEBUG
    progress: bool = True  # progress bars (on a terminal; a log file gets one line per logged step)
    upstream: UpstreamConfig = MISSING
    model: ModelConfig = MISSING
    data: DataConfig = MISSING
    lora: LoraConfig = MISSING
    quantization: QuantizationConfig = MISSING
    trainer: TrainerConfig = MISSING
    optimizer: OptimizerConfig = MISSING
    logger: Any = None  # a _target_ node (a Lightning logger factory) or null
    # the evaluation stage (EvalConfig + enabled / snapshots); its groups are the ones below
    evaluate: PipelineEvalConfig = MISSING
    questions: QuestionSetConfig = MISSING
    format: dict[str, FormatConfig] = field(default_factory=dict)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    judge: Any = None
    thresholds: Thresholds = field(default_factory=Thresholds)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    capability: CapabilityConfig = MISSING  # lm-eval task set; enabled: one more step after the evaluations
    push_to_hub: PushToHubConfig = field(default_factory=PushToHubConfig)  # off; em/adapters/run.py
    chain: Any = None  # python -m em.jobs.chain: the stages of a sequential fine-tuning chain (em.config.chain)

    def __post_init__(self) -> None:
        check_seed(self.seed, "seed")
        if self.experiment_name is not None:
            check_name(self.experiment_name, "experiment_name")


def store(cs: ConfigStore) -> None:
    """Register train.py's root schema (``train_schema``) in ``cs``."""
    cs.store(name="train_schema", node=TrainConfig)


REPO_ID = re.compile(r"^([A-Za-z0-9][\w.-]{0,95}/)?[A-Za-z0-9][\w.-]{0,95}$")


def check_repo_id(repo_id: Optional[str], key: str = "push_to_hub.repo_id") -> None:
    """``namespace/name`` (or ``name``: the token's user), the Hub's characters only.

    Raises:
        ConfigError: missing or malformed, naming ``key``.
    """
    if not repo_id or not REPO_ID.match(str(repo_id)) or ".." in str(repo_id):
        raise ConfigError(f"{key}: a Hub repo id like 'my-org/my-adapter' is needed, got {repo_id!r}")
