"""Which LoRA adapter to evaluate: ``adapter=latest`` (newest training run of this model), a training run
directory (with ``adapter/`` and ``resolved_config.yaml``), a bare peft adapter directory, or none (base).

An adapter trained on another base model is refused with one line: the training run's ``model.name`` (or,
for a bare adapter, peft's ``base_model_name_or_path``) must match the model being evaluated.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from em.errors import ModelLoadError

log = logging.getLogger("em.evaluation")
NONE_VALUES = (None, "", "none", "null", "base")


@dataclass
class AdapterInfo:
    adapter_dir: Optional[Path] = None
    run_dir: Optional[Path] = None  # the training run it came from, when known
    train_cfg: dict[str, Any] = field(default_factory=dict)  # its resolved_config.yaml

    @property
    def condition(self) -> str:
        if self.adapter_dir is None:
            return "base"
        return str((self.train_cfg.get("data") or {}).get("name") or self.adapter_dir.parent.name)

    @property
    def wandb_group(self) -> Optional[str]:
        """The training run's W&B group (conf/logger/wandb.yaml: experiment_name or <model>-<data>)."""
        if not self.train_cfg:
            return None
        logger = self.train_cfg.get("logger") or {}
        if logger.get("group"):
            return str(logger["group"])
        model = (self.train_cfg.get("model") or {}).get("name")
        data = (self.train_cfg.get("data") or {}).get("name")
        return self.train_cfg.get("experiment_name") or (f"{model}-{data}" if model and data else None)

    @property
    def wandb_project(self) -> Optional[str]:
        return (self.train_cfg.get("logger") or {}).get("project")


def _train_cfg(run_dir: Path) -> dict[str, Any]:
    f = run_dir / "resolved_config.yaml"
    if not f.is_file():
        return {}
    try:
        return yaml.safe_load(f.read_text()) or {}
    except yaml.YAMLError:
        return {}


def latest_adapter(train_dir: str | Path, model_name: str) -> Optional[Path]:
    """The newest training run under train_dir for this model that finished (has adapter/)."""
    root = Path(train_dir)
    if not root.is_dir():
        return None
    runs = []
    for cfg_file in root.glob("*/adapter/adapter_config.json"):
        run = cfg_file.parent.parent
        if ((_train_cfg(run).get("model") or {}).get("name")) == model_name:
            runs.append((cfg_file.parent.stat().st_mtime, run.name, run))
    return max(runs)[2] if runs else None


def resolve_adapter(spec: Optional[str], train_dir: str, model_cfg: Any, source: str) -> AdapterInfo:
    if isinstance(spec, str) and spec.strip().lower() in NONE_VALUES or spec is None:
        return AdapterInfo()
    if spec == "latest":
        run = latest_adapter(train_dir, model_cfg.name)
        if run is None:
            log.info("adapter=latest: no finished training run of %s under %s; evaluating the base model",
                     model_cfg.name, train_dir)
            print(f"adapter=latest: no training run of model={model_cfg.name} under {train_dir}/; "
                  f"evaluating the base model")
            return AdapterInfo()
        print(f"adapter=latest: {run}")
        spec = str(run)
    p = Path(spec).expanduser()
    if (p / "adapter" / "adapter_config.json").is_file():
        run_dir, adapter_dir = p, p / "adapter"
    elif (p / "adapter_config.json").is_file():
        adapter_dir = p
        run_dir = p.parent if (p.parent / "resolved_config.yaml").is_file() else None
    else:
        raise ModelLoadError(
            f"adapter={spec}: neither a training run directory (with adapter/) nor a peft adapter directory "
            f"(with adapter_config.json)"
        )
    info = AdapterInfo(adapter_dir=adapter_dir, run_dir=run_dir, train_cfg=_train_cfg(run_dir) if run_dir else {})
    _check_base(info, model_cfg, source, spec)
    return info


def _check_base(info: AdapterInfo, model_cfg: Any, source: str, spec: str) -> None:
    trained = (info.train_cfg.get("model") or {}).get("name")
    if trained:
        if trained != model_cfg.name:
            raise ModelLoadError(
                f"adapter={spec}: trained on model={trained}, but this run evaluates model={model_cfg.name}; "
                f"pass model={trained}"
            )
        return
    try:
        base = json.loads((info.adapter_dir / "adapter_config.json").read_text()).get("base_model_name_or_path")
    except (OSError, ValueError):
        base = None
    if not base:
        log.warning("adapter=%s: records no base model; assuming it fits %s", spec, model_cfg.name)
        return
    ours = {str(source), str(model_cfg.hub_id or ""), str(model_cfg.path or "")}
    # A model cache moved to another directory keeps its last path component (the model name / hash).
    if base in ours or Path(base).name in {Path(o).name for o in ours if o}:
        return
    raise ModelLoadError(
        f"adapter={spec}: its adapter_config.json names base model {base!r}, but model={model_cfg.name} is "
        f"{source!r}; pass the model the adapter was trained on"
    )
