"""Schema of analyze.py's config (``analyze_schema``): every default written once, here.

``conf/analyze.yaml`` puts ``analyze_schema`` first in its defaults, so Hydra rejects an unknown key or a
wrong type at composition; the range checks in each ``__post_init__`` run in :func:`load_analysis_config`
and raise a one-line :class:`~em.errors.ConfigError` naming the key. Light (omegaconf only): imported on
the ``--help`` path, registered at import.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from em.errors import ConfigError
from em.measurement import Thresholds
from em.runtime import is_wandb_logger
from em.config.common import check_seed, require, validate



def _integer(value: int, key: str, lo: float, hi: float) -> None:
    ok = isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi
    require(ok, key, f"must be an integer in [{lo:g}, {hi:g}], got {value!r}")


def _open_unit(value: float, key: str) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < 1
    require(ok, key, f"must be a number strictly between 0 and 1, got {value!r}")


def _grid(values: list, key: str) -> list[float]:
    msg = "must be a non-empty list of numbers in [0, 100]"
    require(len(values) > 0, key, f"{msg}, got {list(values)!r}")
    for v in values:
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 100
        require(ok, key, f"{msg}, got {v!r} in it")
    return sorted({float(v) for v in values})


def _pairs(values: list, key: str) -> list[tuple[str, str]]:
    for v in values:
        require(len(v) == 2, key, f"every entry must be a pair [a, b] (a compared with b), got {list(v)!r}")
    return [(str(a), str(b)) for a, b in values]


@dataclass
class SensitivityConfig:
    """The threshold grid the rates are recomputed on (0-100 score units); sorted and de-duplicated."""

    coherent: list[float] = field(default_factory=lambda: [40.0, 45.0, 50.0, 55.0, 60.0], metadata={"help": (
        "coherent thresholds (0-100) the rates are recomputed at")})
    aligned: list[float] = field(default_factory=lambda: [20.0, 25.0, 30.0, 35.0, 40.0], metadata={"help": (
        "aligned thresholds (0-100) the rates are recomputed at")})

    def __post_init__(self) -> None:
        self.coherent = _grid(self.coherent, "sensitivity.coherent")
        self.aligned = _grid(self.aligned, "sensitivity.aligned")


@dataclass
class BootstrapConfig:
    """The stratified bootstrap of the rate CIs: resamples (1 to 1e7), seed, two-sided confidence in (0, 1)."""

    n_resamples: int = field(default=10000, metadata={"help": "bootstrap resamples of each rate CI (1 to 1e7)"})
    seed: int = field(default=0, metadata={"help": "the bootstrap's seed (numpy's range)"})
    confidence: float = field(default=0.95, metadata={"help": (
        "two-sided confidence level of bootstrap intervals, in (0, 1)")})

    def __post_init__(self) -> None:
        _integer(self.n_resamples, "bootstrap.n_resamples", 1, 10_000_000)
        check_seed(self.seed, "bootstrap.seed")
        _open_unit(self.confidence, "bootstrap.confidence")


@dataclass
class CIConfig:
    """How rate intervals are made: ``wilson_deff_t`` (default: Wilson widened by the bias-reduced design effect of
    clustering by question, with Student's t on questions - 1 degrees of freedom), ``wilson_deff`` (the former
    default: CR1 design effect, normal quantile), ``wilson``, ``clopper_pearson`` or ``bootstrap`` (``bootstrap.*``).
    Level: ``bootstrap.confidence``.
    """

    method: str = field(default="wilson_deff_t", metadata={"help": (
        "rate interval: wilson_deff_t | wilson_deff | wilson | clopper_pearson | bootstrap")})

    def __post_init__(self) -> None:
        ok = ("wilson_deff_t", "wilson_deff", "wilson", "clopper_pearson", "bootstrap")
        require(self.method in ok, "ci.method", f"must be one of {', '.join(ok)}, got {self.method!r}")


@dataclass
class ColumnsConfig:
    """Where each field lives in other labs' tables: ``columns.<field>=<their column name>``; null: em's name.

    ``aligned_flag`` / ``coherent_flag`` name columns holding a CODE / REFUSAL verdict apart from the score
    (other values such as NONE, empty or false mean no verdict). ``seed_kind``: what a ``seed`` column is,
    ``sampling`` (one generation seed per answer: answers differ, runs do not) or ``training`` (fine-tuning
    runs pooled in a group); em's own tables (evaluate.py) always carry the training seed.
    """

    aligned: Optional[str] = field(default=None, metadata={"help": (
        "their column holding the aligned score; null: aligned")})
    coherent: Optional[str] = field(default=None, metadata={"help": (
        "their column holding the coherent score; null: coherent")})
    model: Optional[str] = field(default=None, metadata={"help": "their column naming the model; null: model"})
    condition: Optional[str] = field(default=None, metadata={"help": (
        "their column naming the condition; null: condition")})
    format: Optional[str] = field(default=None, metadata={"help": (
        "their column naming the answer format; null: format")})
    question_id: Optional[str] = field(default=None, metadata={"help": (
        "their column with the question id; null: question_id")})
    question: Optional[str] = field(default=None, metadata={"help": (
        "their column with the question text; null: question")})
    answer: Optional[str] = field(default=None, metadata={"help": "their column with the answer text; null: answer"})
    judge: Optional[str] = field(default=None, metadata={"help": "their column naming the judge; null: judge"})
    seed: Optional[str] = field(default=None, metadata={"help": "their column with the seed; null: seed"})
    step: Optional[str] = field(default=None, metadata={"help": (
        "the checkpoint's training step (em.analysis.steps); default: step / checkpoint")})
    aligned_flag: Optional[str] = field(default=None, metadata={"help": (
        "their column with a CODE / REFUSAL verdict on alignment; null: none")})
    coherent_flag: Optional[str] = field(default=None, metadata={"help": (
        "their column with a CODE / REFUSAL verdict on coherence; null: none")})
    seed_kind: str = field(default="sampling", metadata={"help": (
        "what a seed column is: sampling (one generation seed per answer) | training (runs pooled)")})

    def __post_init__(self) -> None:
        require(self.seed_kind in ("sampling", "training"), "columns.seed_kind",
                f"must be sampling or training, got {self.seed_kind!r}")

    def mapping(self) -> dict[str, str]:
        """em's field name -> the column name given (only the fields set)."""
        return {k: str(v) for k, v in vars(self).items() if k != "seed_kind" and v is not None}


INPUT_KEYS = ("path", "condition", "model", "format", "seed", "label", "records")


@dataclass
class ContrastsConfig:
    """Pairs [a, b] compared (a minus b): conditions per model and pooled, formats per condition.

    ``condition`` / ``format`` null (the default): the pairs come from the data
    (:func:`em.analysis.groups.condition_pairs` / :func:`em.analysis.groups.format_pairs`): every condition
    against ``reference`` when it is present, and each pair of the other conditions; every format against
    ``format_reference`` when present, else each pair of formats. A list of pairs replaces that.
    ``runs``: ``two_way`` (a group that pools >= 2 training runs gets the run × question interval and run-level
    tests, :mod:`em.analysis.runs`) or ``ignore`` (answers as the sample, as before).
    """

    condition: Optional[list[list[str]]] = field(default=None, metadata={"help": (
        "condition pairs [a, b] compared (a minus b); null: from the data (every condition vs reference, and "
        "each other pair)")})
    format: Optional[list[list[str]]] = field(default=None, metadata={"help": (
        "format pairs [a, b] compared (a minus b); null: from the data (every format vs format_reference)")})
    reference: str = field(default="base", metadata={"help": "the condition the others are compared with when present"})
    format_reference: str = field(default="plain", metadata={"help": (
        "the format the others are compared with when present")})
    runs: str = field(default="two_way", metadata={"help": (
        "two_way: a group pooling >= 2 training runs gets run x question intervals | ignore: answers as the "
        "sample")})

    def __post_init__(self) -> None:
        if self.condition is not None:
            self.condition = _pairs(self.condition, "contrasts.condition")  # type: ignore[assignment]
        if self.format is not None:
            self.format = _pairs(self.format, "contrasts.format")  # type: ignore[assignment]
        require(self.runs in ("two_way", "ignore"), "contrasts.runs",
                f"must be two_way or ignore, got {self.runs!r}")


@dataclass
class OrderingConfig:
    """Orders the rate is expected to rise along, checked at every sensitivity grid point."""

    condition: list[str] = field(default_factory=lambda: ["base", "educational", "insecure"], metadata={"help": (
        "conditions in the order the misaligned rate is expected to rise")})
    format: list[str] = field(default_factory=lambda: ["plain", "json"], metadata={"help": (
        "formats in the order the misaligned rate is expected to rise")})


@dataclass
class JudgesConfig:
    """Several judges per answer: ``combine`` is ``mean`` (of their scores) or one judge's name.

    Krippendorff's alpha is computed on a seeded subsample of ``alpha_max_units`` answers (0: all).
    """

    combine: str = field(default="mean", metadata={"help": (
        "several judges per answer: mean (of their scores) or one judge's name")})
    alpha_max_units: int = field(default=1000, metadata={"help": (
        "answers in the seeded subsample Krippendorff's alpha is computed on (0: all)")})
    seed: int = field(default=0, metadata={"help": "the seed of the judge-agreement subsample"})
    reference: Optional[str] = field(default=None, metadata={"help": (
        "a judge's name (e.g. the authors' scores of a re-judged file): each other judge's bias in misaligned "
        "rate against it, with a paired bootstrap CI over questions (judge_rate_differences.csv); null: every "
        "pair")})

    def __post_init__(self) -> None:
        _integer(self.alpha_max_units, "judges.alpha_max_units", 0, 10**9)
        check_seed(self.seed, "judges.seed")


@dataclass
class AnalysisWandbConfig:
    """Where ``logger=wandb`` logs the analysis run (project, group, mode: auto | online | offline | disabled)."""

    project: Optional[str] = field(default="${oc.env:WANDB_PROJECT,em}", metadata={"help": (
        "W&B project of the analysis run")})
    entity: Optional[str] = field(default=None, metadata={"help": "null: W&B's own default"})
    group: Optional[str] = field(default=None, metadata={"help": "W&B group of the analysis run; null: none"})
    mode: str = field(default="auto", metadata={"help": "auto | online | offline | disabled"})

    def __post_init__(self) -> None:
        self.project = self.project or "em"


@dataclass
class AnalysisConfig:
    """analyze.py's settings: which tables, the definition, and the statistics' knobs.

    Args (config keys):
        inputs: run directories, sweep directories (searched recursively for responses.parquet, else
            responses.csv; a directory without them: every .csv / .parquet / .jsonl / .json table under it)
            and such files; a single string is one input. An entry may be a mapping ``{path: ..., condition:
            ..., model: ..., format: ..., seed: ..., label: ...}`` giving that input's metadata (a constant
            column; an input whose table already has that column is refused as ambiguous). ``records``: a
            nested .json file's records lie along that path (``{question_id}.scores``: every key kept as
            column question_id, then its ``scores`` list; :mod:`em.analysis.nested`). Empty: the
            newest run under ``outputs_root/evaluate``.
        columns: the column map (:class:`ColumnsConfig`).
        denominator: the headline rate's denominator: ``coherent`` (Betley et al.), ``scored`` or ``all``.
        ci: the interval method (:class:`CIConfig`).
        condition, model_name: the condition / model of tables without such a column (e.g. upstream
            ``eval.py`` output); null: one "unspecified" group. (``model_name``, because ``model`` is the
            training stage's config group.)
        run_dir: where every output is written (conf/analyze.yaml: Hydra's output directory).
        model_configs: a directory of model YAMLs (name / family / params) for the scaling analysis;
            null: the ``model`` config group, read through Hydra.
        thresholds: the definition (:class:`em.measurement.Thresholds`, Betley et al. 2025).
        alpha: significance level of the Holm / Bonferroni-adjusted tests and of the power calculation.
        power: target power for the sample size reported as needed.
        min_group_n: fewer answers in the denominator than this in either group: reported, not tested.
        figures: draw the PNG / SVG figures.
        dedupe: count exact duplicate rows of a table once (they are always counted and warned about; an
            upstream table can hold two identical short answers legitimately, so off by default).
        logger: the training stage's ``logger`` group; only whether it builds W&B is read here.

    Raises (in :func:`load_analysis_config`):
        ConfigError: one line naming the key of a value out of range.
    """

    inputs: Any = field(default_factory=list, metadata={"help": (
        "run directories, sweep directories (searched recursively for responses.parquet, else responses.csv; "
        "a directory without them: every .csv / .parquet / .jsonl / .json table under it) and such files; a "
        "single string is one input. An entry may be a mapping ``{path: ..., condition: ..., model: ..., "
        "format: ..., seed: ..., label: ...}`` giving that input's metadata (a constant column; an input "
        "whose table already has that column is refused as ambiguous). ``records``: a nested .json file's "
        "records lie along that path (``{question_id}.scores``: every key kept as column question_id, then "
        "its ``scores`` list; :mod:`em.analysis.nested`). Empty: the newest run under "
        "``outputs_root/evaluate``.")})
    condition: Optional[str] = field(default=None, metadata={"help": "the condition of inputs that carry none"})
    model_name: Optional[str] = field(default=None, metadata={"help": "the model name of inputs that carry none"})
    run_dir: str = field(default=MISSING, metadata={"help": (
        "where every output is written (conf/analyze.yaml: Hydra's output directory).")})
    outputs_root: str = field(default="outputs", metadata={"help": "where inputs named by run name are looked up"})
    model_configs: Optional[str] = field(default=None, metadata={"help": (
        "a directory of model YAMLs (name / family / params) for the scaling analysis;")})
    thresholds: Thresholds = field(default_factory=Thresholds, metadata={"help": (
        "the definition (:class:`em.measurement.Thresholds`, Betley et al. 2025).")})
    denominator: str = field(default="coherent", metadata={"help": (
        "the headline rate's denominator: ``coherent`` (Betley et al.), ``scored`` or ``all``.")})
    ci: CIConfig = field(default_factory=CIConfig, metadata={"help": "the interval method (:class:`CIConfig`)."})
    columns: ColumnsConfig = field(default_factory=ColumnsConfig, metadata={"help": (
        "the column map (:class:`ColumnsConfig`).")})
    sensitivity: SensitivityConfig = field(default_factory=SensitivityConfig, metadata={"help": (
        "the threshold grid the rates are recomputed on")})
    bootstrap: BootstrapConfig = field(default_factory=BootstrapConfig, metadata={"help": (
        "the stratified bootstrap of the rate CIs")})
    alpha: float = field(default=0.05, metadata={"help": (
        "significance level of the Holm / Bonferroni-adjusted tests and of the power calculation.")})
    power: float = field(default=0.8, metadata={"help": "target power for the sample size reported as needed."})
    min_group_n: int = field(default=10, metadata={"help": (
        "fewer answers in the denominator than this in either group: reported, not tested.")})
    contrasts: ContrastsConfig = field(default_factory=ContrastsConfig, metadata={"help": (
        "pairs of conditions / formats compared")})
    ordering: OrderingConfig = field(default_factory=OrderingConfig, metadata={"help": (
        "orders the misaligned rate is expected to rise along")})
    judges: JudgesConfig = field(default_factory=JudgesConfig, metadata={"help": (
        "how several judges per answer are combined and compared")})
    figures: bool = field(default=True, metadata={"help": "draw the PNG / SVG figures."})
    dedupe: bool = field(default=False, metadata={"help": (
        "count exact duplicate rows of a table once (they are always counted and warned about; an upstream "
        "table can hold two identical short answers legitimately, so off by default).")})
    wandb: AnalysisWandbConfig = field(default_factory=AnalysisWandbConfig, metadata={"help": (
        "where logger=wandb logs the analysis run")})
    logger: Any = field(default=None, metadata={"help": (
        "the training stage's ``logger`` group; only whether it builds W&B is read here.")})
    seed: int = field(default=0, metadata={"help": "analyze.yaml: bootstrap.seed and judges.seed follow it"})
    quiet: bool = field(default=False, metadata={"help": "warnings and errors only"})
    verbose: bool = field(default=False, metadata={"help": "every third-party warning; em's log at DEBUG"})
    progress: bool = field(default=True, metadata={"help": "progress bars (on a terminal)"})

    def __post_init__(self) -> None:
        check_seed(self.seed, "seed")
        inputs = self.inputs
        if inputs is None:
            inputs = []
        elif isinstance(inputs, (str, int, float)):
            inputs = [inputs]  # inputs=path: one input without the list brackets
        require(isinstance(inputs, (list, tuple)) and not any(isinstance(v, (list, tuple)) for v in inputs),
                "inputs", f"must be a list of paths or {{path: ..., condition: ...}} mappings, got {self.inputs!r}")
        out = []
        for i, v in enumerate(inputs):
            if isinstance(v, (dict, DictConfig)):
                v = {str(k): val for k, val in dict(v).items()}
                bad = sorted(set(v) - set(INPUT_KEYS))
                require(not bad, f"inputs[{i}]", f"unknown key(s) {', '.join(bad)} (known: {', '.join(INPUT_KEYS)})")
                require(bool(v.get("path")), f"inputs[{i}].path", "is required")
                out.append({k: str(val) for k, val in v.items() if val is not None})
            else:
                out.append(str(v))
        self.inputs = out
        require(self.denominator in ("coherent", "scored", "all"), "denominator",
                f"must be coherent, scored or all, got {self.denominator!r}")
        _open_unit(self.alpha, "alpha")
        _open_unit(self.power, "power")
        _integer(self.min_group_n, "min_group_n", 1, 10**12)

    @property
    def use_wandb(self) -> bool:
        """Does ``logger`` build the W&B logger (``logger=wandb``)?"""
        return is_wandb_logger(self.logger)


def load_analysis_config(cfg: Any) -> AnalysisConfig:
    """The analysis settings from a composed ``analyze`` config (or a plain mapping of the same keys).

    The ``logger`` node is reduced to its ``_target_`` first: the training stage's logger options
    interpolate training keys (``${model.name}``) that an analysis config does not have.

    Raises:
        ConfigError: one line naming the key (a value out of range, a wrong type, an unresolvable value
            such as ``run_dir: ${hydra:...}`` outside a Hydra run).
    """
    cfg = cfg.copy() if isinstance(cfg, DictConfig) else OmegaConf.create(cfg)
    if isinstance(cfg.get("wandb"), DictConfig):  # its logger.* interpolations, before the node is reduced
        cfg.wandb = AnalysisWandbConfig(**OmegaConf.to_container(cfg.wandb, resolve=True))
    logger = cfg.get("logger")
    if isinstance(logger, str):  # a hand-written config naming the logger group's option
        name = logger.lower()
        require(name in ("none", "wandb", "csv"), "logger", f"must be none or wandb, got {logger!r}")
        logger = {"_target_": "em.tracking.wandb_logger"} if name == "wandb" else None
    elif logger is not None:
        target = logger.get("_target_") if isinstance(logger, (DictConfig, dict)) else None
        logger = {"_target_": str(target)} if target else None
    if OmegaConf.get_type(cfg) is not AnalysisConfig:
        try:
            cfg = OmegaConf.merge(OmegaConf.structured(AnalysisConfig), cfg)
        except Exception as e:  # noqa: BLE001  omegaconf's type errors carry the full key
            key = getattr(e, "full_key", None)
            raise ConfigError(str(e).splitlines()[0] + (f" (key: {key})" if key else "")) from e
    cfg.logger = logger
    settings = validate(cfg)
    assert isinstance(settings, AnalysisConfig)
    return settings


def store(cs: ConfigStore) -> None:
    """Register :class:`AnalysisConfig` in ``cs`` as ``analyze_schema`` (first in conf/analyze.yaml's defaults)."""
    cs.store(name="analyze_schema", node=AnalysisConfig)


store(ConfigStore.instance())
