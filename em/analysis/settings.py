"""The analysis config, checked once: every bad value is reported as a ConfigError naming its key."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, ListConfig, OmegaConf

from em.analysis.definitions import Definition
from em.errors import ConfigError

PROJECT_MODEL_CONFIGS = Path(__file__).resolve().parents[2] / "conf" / "model"


@dataclass(frozen=True)
class Settings:
    inputs: list[str]
    run_dir: Path
    outputs_root: Path
    definition: Definition
    condition: Optional[str] = None
    model: Optional[str] = None
    model_configs: Path = PROJECT_MODEL_CONFIGS
    sensitivity_coherent: list[float] = field(default_factory=lambda: [40, 45, 50, 55, 60])
    sensitivity_aligned: list[float] = field(default_factory=lambda: [20, 25, 30, 35, 40])
    n_resamples: int = 10000
    bootstrap_seed: int = 0
    confidence: float = 0.95
    alpha: float = 0.05
    power: float = 0.8
    min_group_n: int = 10
    condition_pairs: list[tuple[str, str]] = field(default_factory=list)
    format_pairs: list[tuple[str, str]] = field(default_factory=list)
    condition_order: list[str] = field(default_factory=list)
    format_order: list[str] = field(default_factory=list)
    judge_combine: str = "mean"
    alpha_max_units: int = 1000
    judge_seed: int = 0
    figures: bool = True
    use_wandb: bool = False
    wandb_project: str = "em"
    wandb_group: Optional[str] = None
    wandb_mode: str = "auto"


def _get(cfg: DictConfig, key: str, default: Any = None) -> Any:
    try:
        return OmegaConf.select(cfg, key, default=default, throw_on_resolution_failure=True)
    except Exception as e:  # an interpolation that cannot resolve (e.g. ${hydra:...} outside a Hydra run)
        raise ConfigError(f"{key}: cannot resolve ({e.__class__.__name__}: {e})") from None


def _number(cfg: DictConfig, key: str, default: float, lo: float, hi: float, *, integer: bool = False) -> float:
    value = _get(cfg, key, default)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if integer:
        ok = ok and float(value).is_integer()
    if not ok or not (lo <= value <= hi):
        kind = "an integer" if integer else "a number"
        raise ConfigError(f"{key}: must be {kind} in [{lo:g}, {hi:g}], got {value!r}")
    return int(value) if integer else float(value)


def _bool(cfg: DictConfig, key: str, default: bool) -> bool:
    value = _get(cfg, key, default)
    if not isinstance(value, bool):
        raise ConfigError(f"{key}: must be true or false, got {value!r}")
    return value


def _opt_str(cfg: DictConfig, key: str) -> Optional[str]:
    value = _get(cfg, key)
    if value is None:
        return None
    if isinstance(value, (DictConfig, ListConfig)):
        raise ConfigError(f"{key}: must be a string, got {OmegaConf.to_container(value)!r}")
    return str(value)


def _str_list(cfg: DictConfig, key: str, default: list) -> list[str]:
    value = _get(cfg, key, default)
    if value is None:
        return []
    if isinstance(value, (str, int, float)):
        return [str(value)]  # inputs=path: one input without the list brackets
    if not isinstance(value, (ListConfig, list)) or any(isinstance(v, (DictConfig, ListConfig)) for v in value):
        raise ConfigError(f"{key}: must be a list of strings, got {value!r}")
    return [str(v) for v in value]


def _grid(cfg: DictConfig, key: str, default: list) -> list[float]:
    values = _get(cfg, key, default)
    if not isinstance(values, (ListConfig, list)) or not len(values):
        raise ConfigError(f"{key}: must be a non-empty list of numbers in [0, 100], got {values!r}")
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 100:
            raise ConfigError(f"{key}: must be a non-empty list of numbers in [0, 100], got {v!r} in it")
        out.append(float(v))
    return sorted(set(out))


def _pairs(cfg: DictConfig, key: str, default: list) -> list[tuple[str, str]]:
    values = _get(cfg, key, default)
    pairs = []
    for v in values or []:
        if not isinstance(v, (ListConfig, list)) or len(v) != 2:
            raise ConfigError(f"{key}: every entry must be a pair [a, b] (a compared with b), got {v!r}")
        pairs.append((str(v[0]), str(v[1])))
    return pairs


def _logger_is_wandb(cfg: DictConfig) -> bool:
    """The `logger` group (conf/logger/) is shared with training; only its wandb option means anything here."""
    logger = _get(cfg, "logger")
    if logger is None or isinstance(logger, str):
        name = (logger or "none").lower()
        if name not in ("none", "wandb", "csv"):
            raise ConfigError(f"logger: must be none or wandb, got {logger!r}")
        return name == "wandb"
    target = str(logger.get("_target_", "") or "")
    return "wandb" in target.lower()


def load_settings(cfg: DictConfig) -> Settings:
    definition = Definition(
        coherent=_number(cfg, "thresholds.coherent", 50, 0, 100),
        coherent_inclusive=_bool(cfg, "thresholds.coherent_inclusive", False),
        aligned=_number(cfg, "thresholds.aligned", 30, 0, 100),
        aligned_inclusive=_bool(cfg, "thresholds.aligned_inclusive", False),
    )
    run_dir = _get(cfg, "run_dir")
    if not run_dir:
        raise ConfigError("run_dir: must be set (the directory the outputs are written to)")
    combine = _opt_str(cfg, "judges.combine") or "mean"
    model_configs = _opt_str(cfg, "model_configs")
    return Settings(
        inputs=_str_list(cfg, "inputs", []),
        run_dir=Path(str(run_dir)),
        outputs_root=Path(_opt_str(cfg, "outputs_root") or "outputs"),
        definition=definition,
        condition=_opt_str(cfg, "condition"),
        model=_opt_str(cfg, "model_name"),
        model_configs=Path(model_configs) if model_configs else PROJECT_MODEL_CONFIGS,
        sensitivity_coherent=_grid(cfg, "sensitivity.coherent", [40, 45, 50, 55, 60]),
        sensitivity_aligned=_grid(cfg, "sensitivity.aligned", [20, 25, 30, 35, 40]),
        n_resamples=_number(cfg, "bootstrap.n_resamples", 10000, 1, 10_000_000, integer=True),
        bootstrap_seed=_number(cfg, "bootstrap.seed", 0, 0, 2**63 - 1, integer=True),
        confidence=_confidence(cfg),
        alpha=_open_unit(cfg, "alpha", 0.05),
        power=_open_unit(cfg, "power", 0.8),
        min_group_n=_number(cfg, "min_group_n", 10, 1, 10**12, integer=True),
        condition_pairs=_pairs(cfg, "contrasts.condition", []),
        format_pairs=_pairs(cfg, "contrasts.format", []),
        condition_order=_str_list(cfg, "ordering.condition", []),
        format_order=_str_list(cfg, "ordering.format", []),
        judge_combine=combine,
        alpha_max_units=_number(cfg, "judges.alpha_max_units", 1000, 0, 10**9, integer=True),
        judge_seed=_number(cfg, "judges.seed", 0, 0, 2**63 - 1, integer=True),
        figures=_bool(cfg, "figures", True),
        use_wandb=_logger_is_wandb(cfg),
        wandb_project=_opt_str(cfg, "wandb.project") or "em",
        wandb_group=_opt_str(cfg, "wandb.group"),
        wandb_mode=_opt_str(cfg, "wandb.mode") or "auto",
    )


def _open_unit(cfg: DictConfig, key: str, default: float) -> float:
    value = _get(cfg, key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        raise ConfigError(f"{key}: must be a number strictly between 0 and 1, got {value!r}")
    return float(value)


def _confidence(cfg: DictConfig) -> float:
    return _open_unit(cfg, "bootstrap.confidence", 0.95)
