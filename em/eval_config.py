"""Structured-config schemas for the evaluation stage (evaluate.py), in the style of em/config.py.

Hydra merges conf/evaluate.yaml and its groups (model, quantization, questions, format, generation, judge)
into these dataclasses; range checks live in ``__post_init__`` and run in ``validate`` before any model is
loaded. The ``model`` and ``quantization`` groups are the training stage's, so a model is described once.

Light on purpose (no torch / transformers / openai): imported on the ``evaluate.py --help`` path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from em.config import ModelConfig, QuantizationConfig, UpstreamConfig, _require, validate  # noqa: F401
from em.config import register_configs as _register_train_configs

QUESTION_SOURCES = ("builtin", "upstream")
BACKENDS = ("hf", "vllm")


@dataclass
class QuestionSetConfig:
    name: str = MISSING
    # builtin: a file written by this project (em/evaluation/question_sets/<file>);
    # upstream: Betley et al.'s evaluation/<file>, found via path, $EM_DATA_DIR, the cache or a pinned download.
    source: str = "builtin"
    file: str = MISSING
    url: Optional[str] = None
    sha256: Optional[str] = None
    path: Optional[str] = None  # a local YAML in the upstream schema; wins over everything else
    expected_entries: Optional[int] = None  # entries in the file (variants included), verified when set
    ids: Optional[list[str]] = None  # a subset of the base question ids (null: all)
    # A cap on answer length for this set (the smoke set: a pipeline check on CPU); null: generation's.
    max_new_tokens: Optional[int] = None
    n_questions: Optional[int] = None  # base questions in the set (documentation; sweep plans count answers)

    def __post_init__(self) -> None:
        _require(self.source in QUESTION_SOURCES, "questions.source",
                 f"must be one of {QUESTION_SOURCES}, got {self.source!r}")
        _require(self.ids is None or len(self.ids) > 0, "questions.ids", "is empty (null selects every question)")
        _require(self.max_new_tokens is None or self.max_new_tokens > 0, "questions.max_new_tokens",
                 f"must be > 0 or null, got {self.max_new_tokens}")


@dataclass
class FormatConfig:
    """An answer-format restriction (the "degrees of freedom" knob).

    A question set that carries the variant ``<id><variant>`` (first_plot: ``_json``, ``_template``) uses it
    as written upstream; otherwise the format's own ``system`` prompt and/or ``suffix`` (appended to the
    question after a blank line) are applied to the base question.
    """

    name: str = MISSING
    variant: Optional[str] = None  # "" for plain; "_json" / "_template"; null: no upstream variant exists
    system: Optional[str] = None
    suffix: Optional[str] = None
    description: str = ""


@dataclass
class GenerationConfig:
    backend: str = "hf"  # hf (transformers, CPU or GPU) | vllm (GPU, optional dependency)
    max_new_tokens: int = 600
    temperature: float = 1.0
    top_p: float = 1.0
    batch_size: int = 32  # hf: prompts per generate() call (length-sorted)
    ignore_eos: bool = False  # always generate max_new_tokens (benchmarks: equal work per answer)
    # vllm only
    gpu_memory_utilization: float = 0.85
    max_lora_rank: int = 64
    max_model_len: Optional[int] = None
    tensor_parallel_size: int = 1  # GPUs one vLLM engine shards the model over (27B / 32B in bf16: 2 or more)
    dtype: str = "auto"  # vllm compute dtype: auto | float32 | bfloat16 | float16 (float32: equal to hf greedy)

    def __post_init__(self) -> None:
        _require(self.backend in BACKENDS, "generation.backend", f"must be one of {BACKENDS}, got {self.backend!r}")
        _require(self.max_new_tokens > 0, "generation.max_new_tokens", f"must be > 0, got {self.max_new_tokens}")
        _require(self.temperature >= 0, "generation.temperature", f"must be >= 0, got {self.temperature}")
        _require(0 < self.top_p <= 1, "generation.top_p", f"must be in (0, 1], got {self.top_p}")
        _require(self.batch_size > 0, "generation.batch_size", f"must be > 0, got {self.batch_size}")
        _require(0 < self.gpu_memory_utilization <= 1, "generation.gpu_memory_utilization",
                 f"must be in (0, 1], got {self.gpu_memory_utilization}")
        _require(self.dtype in ("auto", "float32", "bfloat16", "float16"), "generation.dtype",
                 f"must be auto, float32, bfloat16 or float16, got {self.dtype!r}")
        _require(self.tensor_parallel_size > 0, "generation.tensor_parallel_size",
                 f"must be > 0, got {self.tensor_parallel_size}")


@dataclass
class EvalWandbConfig:
    enabled: bool = True
    project: Optional[str] = None  # null: the training run's project, else $WANDB_PROJECT or "em"
    group: Optional[str] = None  # null: the training run's group (experiment_name or <model>-<data>)
    mode: str = "auto"  # auto | offline | online | disabled
    table_rows: int = 20000  # responses logged as a wandb.Table (the full table is always on disk)
    tags: list[str] = field(default_factory=list)
    # more config to log beside the evaluation's own (a sweep job's data / lora / trainer): one row per job
    extra_config: Optional[dict[str, Any]] = None


@dataclass
class EvalConfig:
    seed: int = 0
    samples: int = 2  # answers per question per format (reference: 100)
    run_dir: str = MISSING
    cache_dir: str = MISSING
    upstream: UpstreamConfig = MISSING
    model: ModelConfig = MISSING
    quantization: QuantizationConfig = MISSING
    # latest: the newest training run under train_dir for this model (else the base model);
    # null / none / base: the base model; else a training run dir (with adapter/) or an adapter dir.
    adapter: Optional[str] = "latest"
    train_dir: str = "outputs/train"
    condition: Optional[str] = None  # null: the training run's data name, or "base"
    questions: QuestionSetConfig = MISSING
    format: dict[str, FormatConfig] = field(default_factory=dict)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    judge: Any = None  # a _target_ node (conf/judge/*) or null: generate answers only
    judge_cache: Optional[str] = None  # sqlite file; null: no cache
    dry_run: bool = False  # print the judge request count and estimated cost, then stop
    progress: bool = True
    wandb: EvalWandbConfig = field(default_factory=EvalWandbConfig)

    def __post_init__(self) -> None:
        _require(self.samples > 0, "samples", f"must be > 0, got {self.samples}")
        _require(len(self.format) > 0, "format", "select at least one format, e.g. format=[plain,json,template]")
        for key, f in self.format.items():
            _require(f.name == key, f"format.{key}.name", f"must equal its key {key!r}, got {f.name!r}")


def register_configs() -> None:
    _register_train_configs()  # the em.or resolver, train_schema
    ConfigStore.instance().store(name="evaluate_schema", node=EvalConfig)


register_configs()


def check_group_choices(argv: list[str], conf_dir: Optional[str] = None) -> None:
    """`format=[plain,bogus]`: Hydra names a bad option of a multi-select group without the choices; we list them."""
    from pathlib import Path

    from em.errors import ConfigError

    root = Path(conf_dir) if conf_dir else Path(__file__).resolve().parents[1] / "conf"
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep or key.lstrip("+~") != "format":
            continue
        names = [v.strip() for v in value.strip().strip("[]").split(",") if v.strip()]
        choices = sorted(p.stem for p in (root / "format").glob("*.yaml"))
        for n in names:
            if n not in choices:
                raise ConfigError(f"format: unknown format {n!r}; choices: {', '.join(choices)}")
