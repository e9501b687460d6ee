"""Schemas of the capability stage: the ``capability`` group (a task set) and ``python -m em.capability``'s root.

Light on purpose (no torch, no lm-eval): imported on the ``--help`` path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from em.config.common import require
from em.config.model import ModelConfig, QuantizationConfig


@dataclass
class CapabilityTask:
    """One lm-evaluation-harness task and the metric the capability delta is read from.

    ``task`` is an lm-eval task or group name (``mmlu``, ``gsm8k``...), or the name of a YAML task file
    packaged in ``em/capability/tasks/`` (``tiny_choice``: a local dataset, no network). ``metric`` is
    lm-eval's ``<metric>,<filter>`` key (``acc,none``, ``exact_match,strict-match``, ``pass@1,create_test``).
    """

    task: str = field(default=MISSING, metadata={"help": "the lm-evaluation-harness task name"})
    metric: str = field(default="acc,none", metadata={"help": (
        "the lm-eval metric the capability delta is read from (metric,filter)")})
    num_fewshot: Optional[int] = field(default=None, metadata={"help": "null: the task's own default"})
    limit: Optional[int] = field(default=None, metadata={"help": (
        "first N documents of each (sub)task; null: capability.limit")})
    executes_code: bool = field(default=False, metadata={"help": (
        "the task runs model-written code (HumanEval): only with allow_code_execution")})


@dataclass
class CapabilityConfig:
    """A capability task set (``conf/capability/<name>.yaml``) and how lm-eval runs it.

    Raises (in ``__post_init__``):
        ConfigError: no task; ``limit`` / ``batch_size`` / ``bootstrap_iters`` / a task's ``limit`` not > 0;
            a metric without its ``,<filter>`` part.
    """

    name: str = field(default=MISSING, metadata={"help": "the task set's name (its file under conf/capability/)"})
    enabled: bool = field(default=False, metadata={"help": (
        "train.py: one more step of each job (after evaluate), into <eval dir>/capability.json")})
    tasks: list[CapabilityTask] = field(default_factory=list, metadata={"help": "the lm-eval tasks of the set"})
    limit: Optional[int] = field(default=None, metadata={"help": "documents per (sub)task; null: all of them"})
    batch_size: int = field(default=8, metadata={"help": "lm-eval's batch size (prompts per forward)"})
    bootstrap_iters: int = field(default=1000, metadata={"help": "lm-eval's stderr of non-mean metrics"})
    confidence: float = field(default=0.95, metadata={"help": "of the paired per-document CI of each delta"})
    allow_code_execution: bool = field(default=False, metadata={"help": (
        "Tasks that execute model-written code (executes_code, or marked unsafe_code by lm-eval) are dropped "
        "unless this is true: the models are fine-tuned on insecure code, lm-eval sandboxes nothing.")})
    apply_chat_template: bool = field(default=False, metadata={"help": (
        "lm-eval's default: raw prompts (base and adapter alike)")})

    def __post_init__(self) -> None:
        require(len(self.tasks) > 0, "capability.tasks", f"capability={self.name} lists no task")
        require(self.limit is None or self.limit > 0, "capability.limit", f"must be > 0, got {self.limit}")
        require(self.batch_size > 0, "capability.batch_size", f"must be > 0, got {self.batch_size}")
        require(self.bootstrap_iters > 0, "capability.bootstrap_iters", f"must be > 0, got {self.bootstrap_iters}")
        require(0 < self.confidence < 1, "capability.confidence", f"must be in (0, 1), got {self.confidence}")
        for i, t in enumerate(self.tasks):
            require(t.limit is None or t.limit > 0, f"capability.tasks.{i}.limit", f"must be > 0, got {t.limit}")
            require("," in t.metric, f"capability.tasks.{i}.metric",
                    f"lm-eval's '<metric>,<filter>' key (e.g. acc,none), got {t.metric!r}")


@dataclass
class CapabilityRunConfig:
    """``python -m em.capability``: one model (+ adapter, resolved as evaluate.py does) on one task set."""

    seed: int = field(default=0, metadata={"help": "lm-eval's seed (numpy's range)"})
    run_dir: str = field(default=MISSING, metadata={"help": "capability.json is written here"})
    cache_dir: str = field(default=MISSING, metadata={"help": (
        "models, and the base model's scores (<cache_dir>/capability/)")})
    model: ModelConfig = field(default=MISSING, metadata={"help": "the base model (model group)"})
    quantization: QuantizationConfig = field(default=MISSING, metadata={"help": (
        "how the base weights are stored (quantization group)")})
    adapter: Optional[str] = field(default="latest", metadata={"help": (
        "latest | none | <training run dir> | <adapter dir> (evaluate.py's rule)")})
    train_dir: str = field(default="outputs/train", metadata={"help": "where adapter=latest looks"})
    condition: Optional[str] = field(default=None, metadata={"help": "null: the training run's data name, or \"base\""})
    capability: CapabilityConfig = field(default=MISSING, metadata={"help": "the task set (capability group)"})
    progress: bool = field(default=True, metadata={"help": "progress bars (on a terminal)"})


def store(cs: ConfigStore) -> None:
    """Register ``capability/capability_schema`` and the root ``capability_run_schema`` in ``cs``."""
    cs.store(group="capability", name="capability_schema", node=CapabilityConfig)
    cs.store(name="capability_run_schema", node=CapabilityRunConfig)
