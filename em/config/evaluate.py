"""Schemas of the evaluation stage: evaluate.py's root config and its groups (questions, format, generation).

``EvalConfig`` is the one evaluation schema: ``evaluate.py`` composes it at the root, and ``train.py``
composes its ``evaluate:`` node from it (:class:`PipelineEvalConfig`, which adds the pipeline's two
switches), with ``model``, ``seed``, ``quantization`` and the evaluation groups interpolated from the job.
So ``evaluate.samples`` in train.py is ``samples`` in evaluate.py.

Light on purpose (no torch / transformers / openai): imported on the ``--help`` path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from em.measurement import Thresholds
from em.config.analysis import ColumnsConfig
from em.config.common import check_name, check_seed, require
from em.config.data import UpstreamConfig
from em.config.dynamics import StepEvalConfig
from em.config.model import ModelConfig, QuantizationConfig
from em.config.trigger import TriggerConfig

QUESTION_SOURCES = ("builtin", "upstream")
WRAPPERS = ("numbers_prefix", "words_suffix")  # em.evaluate.questions.WRAPPERS
BACKENDS = ("hf", "vllm")


@dataclass
class QuestionSetConfig:
    """A question set (``conf/questions/<name>.yaml``): this project's builtin file or an upstream one.

    Raises (in ``__post_init__``):
        ConfigError: unknown ``source`` or ``wrapper``; an empty ``ids`` list; ``max_new_tokens`` (tokens)
            not > 0.
    """

    name: str = field(default=MISSING, metadata={"help": "the question set's name (its file under conf/questions/)"})
    source: str = field(default="builtin", metadata={"help": (
        "builtin: a file written by this project (em/evaluate/question_sets/<file>); upstream: Betley et "
        "al.'s evaluation/<file>, found via path, $EM_DATA_DIR, the cache or a pinned download.")})
    file: str = field(default=MISSING, metadata={"help": (
        "the question file (upstream evaluation/<file> or a bundled set)")})
    url: Optional[str] = field(default=None, metadata={"help": "pinned download URL of the question file"})
    sha256: Optional[str] = field(default=None, metadata={"help": "the question file's sha256, verified when known"})
    path: Optional[str] = field(default=None, metadata={"help": (
        "a local YAML in the upstream schema; wins over everything else")})
    expected_entries: Optional[int] = field(default=None, metadata={"help": (
        "entries in the file (variants included), verified when set")})
    ids: Optional[list[str]] = field(default=None, metadata={"help": "a subset of the base question ids (null: all)"})
    max_new_tokens: Optional[int] = field(default=None, metadata={"help": (
        "A cap on answer length for this set (the smoke set: a pipeline check on CPU); null: generation's.")})
    n_questions: Optional[int] = field(default=None, metadata={"help": (
        "base questions in the set (documentation; sweep plans count answers)")})
    wrapper: Optional[str] = field(default=None, metadata={"help": (
        "evil_numbers: each base question in the training format (em/evaluate/questions.py), ids "
        "suffixed _evil_numbers; numbers_prefix (numbers drawn from wrapper_seed) | words_suffix | null: as "
        "written")})
    wrapper_seed: int = field(default=0, metadata={"help": (
        "seed that picks each question's wrapper (template) deterministically")})

    def __post_init__(self) -> None:
        check_name(self.name, "questions.name")
        check_seed(self.wrapper_seed, "questions.wrapper_seed")
        require(self.wrapper in (None, *WRAPPERS), "questions.wrapper",
                f"must be one of {WRAPPERS} or null, got {self.wrapper!r}")
        require(self.source in QUESTION_SOURCES, "questions.source",
                f"must be one of {QUESTION_SOURCES}, got {self.source!r}")
        require(self.ids is None or len(self.ids) > 0, "questions.ids", "is empty (null selects every question)")
        require(self.max_new_tokens is None or self.max_new_tokens > 0, "questions.max_new_tokens",
                f"must be > 0 or null, got {self.max_new_tokens}")


@dataclass
class FormatConfig:
    """An answer-format restriction (the "degrees of freedom" knob), one entry of the ``format`` multi-select group.

    A question set that carries the variant ``<id><variant>`` (first_plot: ``_json``, ``_template``) uses it
    as written upstream; otherwise the format's own ``system`` prompt and/or ``suffix`` (appended to the
    question after a blank line) are applied to the base question.
    """

    name: str = field(default=MISSING, metadata={"help": "the format's name (a column of the responses table)"})
    variant: Optional[str] = field(default=None, metadata={"help": (
        "\"\" for plain; \"_json\" / \"_template\"; null: no upstream variant exists")})
    system: Optional[str] = field(default=None, metadata={"help": "system prompt of this format; null: none"})
    suffix: Optional[str] = field(default=None, metadata={"help": "text appended to each question"})
    description: str = field(default="", metadata={"help": "one line describing the format (tables, report)"})


@dataclass
class GenerationConfig:
    """How answers are sampled (``conf/generation/<backend>.yaml``); Betley et al. sample at T 1.0, top-p 1.0.

    Raises (in ``__post_init__``):
        ConfigError: unknown ``backend``; ``max_new_tokens`` (tokens), ``batch_size`` (prompts per
            ``generate()`` call) or ``tensor_parallel_size`` (GPUs) not > 0; ``temperature`` < 0;
            ``top_p`` or ``gpu_memory_utilization`` (share of GPU memory) outside (0, 1].
    """

    backend: str = field(default="hf", metadata={"help": (
        "hf (transformers, CPU or GPU) | vllm (GPU, optional dependency)")})
    max_new_tokens: int = field(default=600, metadata={"help": "answer length cap, in tokens"})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature"})
    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling mass"})
    batch_size: int = field(default=32, metadata={"help": "hf: prompts per generate() call (length-sorted)"})
    ignore_eos: bool = field(default=False, metadata={"help": (
        "always generate max_new_tokens (benchmarks: equal work per answer)")})
    gpu_memory_utilization: float = field(default=0.85, metadata={"help": "vLLM only: share of GPU memory it may take"})
    max_lora_rank: int = field(default=64, metadata={"help": "vLLM: the largest LoRA rank it reserves memory for"})
    max_model_len: Optional[int] = field(default=None, metadata={"help": (
        "vLLM: context length (prompt + answer tokens); null: the model's")})
    tensor_parallel_size: int = field(default=1, metadata={"help": (
        "GPUs one vLLM engine shards the model over (27B / 32B in bf16: 2 or more)")})
    dtype: str = field(default="auto", metadata={"help": (
        "vllm compute dtype: auto | float32 | bfloat16 | float16 (float32: equal to hf greedy)")})

    def __post_init__(self) -> None:
        require(self.backend in BACKENDS, "generation.backend", f"must be one of {BACKENDS}, got {self.backend!r}")
        require(self.max_new_tokens > 0, "generation.max_new_tokens", f"must be > 0, got {self.max_new_tokens}")
        require(self.temperature >= 0, "generation.temperature", f"must be >= 0, got {self.temperature}")
        require(0 < self.top_p <= 1, "generation.top_p", f"must be in (0, 1], got {self.top_p}")
        require(self.batch_size > 0, "generation.batch_size", f"must be > 0, got {self.batch_size}")
        require(0 < self.gpu_memory_utilization <= 1, "generation.gpu_memory_utilization",
                f"must be in (0, 1], got {self.gpu_memory_utilization}")
        require(self.dtype in ("auto", "float32", "bfloat16", "float16"), "generation.dtype",
                f"must be auto, float32, bfloat16 or float16, got {self.dtype!r}")
        require(self.tensor_parallel_size > 0, "generation.tensor_parallel_size",
                f"must be > 0, got {self.tensor_parallel_size}")


@dataclass
class EvalWandbConfig:
    """The evaluation's W&B run (job_type ``eval``); train.py derives it from its ``logger`` node."""

    enabled: bool = field(default=True, metadata={"help": "log the evaluation run to W&B"})
    project: Optional[str] = field(default=None, metadata={"help": (
        "null: the training run's project, else $WANDB_PROJECT or \"em\"")})
    group: Optional[str] = field(default=None, metadata={"help": (
        "null: the training run's group (experiment_name or <model>-<data>)")})
    entity: Optional[str] = field(default=None, metadata={"help": (
        "null: the training run's entity, else W&B's own default")})
    mode: str = field(default="auto", metadata={"help": "auto | offline | online | disabled"})
    table_rows: int = field(default=20000, metadata={"help": (
        "responses logged as a wandb.Table (the full table is always on disk)")})
    tags: list[str] = field(default_factory=list, metadata={"help": "W&B tags of the evaluation run"})
    extra_config: Optional[dict[str, Any]] = field(default=None, metadata={"help": (
        "more config to log beside the evaluation's own (a sweep job's data / lora / trainer): one row per "
        "job")})


@dataclass
class EvalConfig:
    """evaluate.py's config: sample ``samples`` answers per question and format, judge them, summarise.

    Raises (in ``__post_init__``):
        ConfigError: ``samples`` not > 0; no format selected; a format whose ``name`` differs from its key.
    """

    seed: int = field(default=0, metadata={"help": "sampling seed (numpy's range)"})
    samples: int = field(default=2, metadata={"help": "answers per question per format (reference: 100)"})
    run_dir: str = field(default=MISSING, metadata={"help": "where answers, judgments and summaries are written"})
    cache_dir: str = field(default=MISSING, metadata={"help": "downloaded models and data, the judge cache"})
    upstream: UpstreamConfig = field(default=MISSING, metadata={"help": (
        "where Betley et al.'s files are downloaded from")})
    model: ModelConfig = field(default=MISSING, metadata={"help": "the base model (model group)"})
    quantization: QuantizationConfig = field(default=MISSING, metadata={"help": (
        "how the base weights are stored (quantization group)")})
    adapter: Optional[str] = field(default="latest", metadata={"help": (
        "latest: the newest training run under train_dir for this model (else the base model); null / none / "
        "base: the base model; else a training run dir (with adapter/) or an adapter dir.")})
    train_dir: str = field(default="outputs", metadata={"help": (
        "where adapter=latest looks (<train_dir>/*/ and <train_dir>/*/*/)")})
    condition: Optional[str] = field(default=None, metadata={"help": "null: the training run's data name, or \"base\""})
    questions: QuestionSetConfig = field(default=MISSING, metadata={"help": "the question set (questions group)"})
    format: dict[str, FormatConfig] = field(default_factory=dict, metadata={"help": (
        "the answer formats, by name (format group: format=[plain,json])")})
    generation: GenerationConfig = field(default_factory=GenerationConfig, metadata={"help": (
        "the sampling backend and its settings (generation group)")})
    judge: Any = field(default=None, metadata={"help": "a _target_ node (conf/judge/*) or null: generate answers only"})
    judge_cache: Optional[str] = field(default="${cache_dir}/judge_cache.sqlite", metadata={"help": (
        "(judge endpoint + model, prompt) -> judgment, an SQLite file; null: no cache")})
    dry_run: bool = field(default=False, metadata={"help": (
        "print the judge request count and estimated cost, then stop")})
    progress: bool = field(default=True, metadata={"help": "progress bars (on a terminal)"})
    quiet: bool = field(default=False, metadata={"help": "warnings and errors only"})
    verbose: bool = field(default=False, metadata={"help": "every third-party warning; em's log at DEBUG"})
    wandb: EvalWandbConfig = field(default_factory=EvalWandbConfig, metadata={"help": (
        "the evaluation run's W&B settings (from the logger group)")})
    logger: Any = field(default=None, metadata={"help": (
        "evaluate.py's logger group (wandb | csv | none); ``wandb`` is derived from it")})
    thresholds: Thresholds = field(default_factory=Thresholds, metadata={"help": (
        "what counts as coherent / misaligned in summary.json, the W&B eval/* metrics and DONE.json")})
    trigger: TriggerConfig = field(default_factory=TriggerConfig, metadata={"help": (
        "each question with and without it")})
    answers: Any = field(default=None, metadata={"help": (
        "re-judge (em.evaluate.rejudge): a run dir / responses table / other lab's file, or {path: ..., "
        "judge: <name of its own scores' judge, default original>, condition: ..., model: ...}; null: sample "
        "answers")})
    columns: ColumnsConfig = field(default_factory=ColumnsConfig, metadata={"help": (
        "answers' column map, as in analyze.py")})
    step: Optional[int] = field(default=None, metadata={"help": (
        "the optimizer step of the adapter (a step snapshot): every row's integer ``step`` column; null: none")})
    system_prefix: Optional[str] = field(default=None, metadata={"help": (
        "a system prompt put before every prompt's own (data.inoculation_eval sets it to "
        "data.inoculation_prompt)")})

    def __post_init__(self) -> None:
        check_seed(self.seed, "seed")
        if self.condition is not None:
            check_name(self.condition, "condition")
        require(self.samples > 0, "samples", f"must be > 0, got {self.samples}")
        require(len(self.format) > 0, "format", "select at least one format, e.g. format=[plain,json,template]")
        for key, f in self.format.items():
            require(f.name == key, f"format.{key}.name", f"must equal its key {key!r}, got {f.name!r}")


# The keys PipelineEvalConfig adds to EvalConfig: the pipeline drops them before calling run_evaluation.
PIPELINE_KEYS = ("enabled", "snapshots", "steps")


@dataclass
class PipelineEvalConfig(EvalConfig):
    """train.py's ``evaluate:`` node: an :class:`EvalConfig` plus the one-job pipeline's two switches.

    ``run_dir``, ``adapter``, ``train_dir`` and ``condition`` are set per evaluation target by
    :func:`em.jobs.targets.eval_config` (the final adapter, each snapshot, or the base model for data=base).
    """

    enabled: bool = field(default=False, metadata={"help": (
        "train -> evaluate -> judge in one job (sweeps switch it on)")})
    snapshots: bool = field(default=True, metadata={"help": "also evaluate the trainer.adapter_snapshots adapters"})
    steps: StepEvalConfig = field(default_factory=StepEvalConfig, metadata={"help": (
        "trainer.snapshot_every_n_steps' cheap evaluation")})
    generation: GenerationConfig = field(default=MISSING, metadata={"help": (
        "(no default node: train.yaml interpolates them from the job's own groups, e.g. ${generation})")})
    thresholds: Thresholds = field(default=MISSING, metadata={"help": (
        "what counts as coherent and misaligned (the job's thresholds)")})


def store(cs: ConfigStore) -> None:
    """Register evaluate.py's root schema and the questions / format / generation group schemas in ``cs``."""
    cs.store(name="evaluate_schema", node=EvalConfig)
    cs.store(group="questions", name="questions_schema", node=QuestionSetConfig)
    cs.store(group="format", name="format_schema", node=FormatConfig)
    cs.store(group="generation", name="generation_schema", node=GenerationConfig)
