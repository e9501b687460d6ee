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
from em.paths import original_path

log = logging.getLogger("em.evaluate")
NONE_VALUES = (None, "", "none", "null", "base")
KEYWORDS = ("", "none", "null", "base", "latest")  # adapter values that are not paths


@dataclass
class AdapterInfo:
    """The LoRA adapter an evaluation loads, and what its training run recorded.

    Attributes:
        adapter_dir: the peft adapter directory (``adapter_config.json`` + weights); None: the base model.
        run_dir: the training run directory it came from, when known.
        train_cfg: that run's ``resolved_config.yaml`` as plain dicts; ``{}`` when unknown or unreadable.
    """

    adapter_dir: Optional[Path] = None
    run_dir: Optional[Path] = None
    train_cfg: dict[str, Any] = field(default_factory=dict)

    @property
    def condition(self) -> str:
        """The condition label of this evaluation: ``base`` without an adapter, else the training data's
        ``data.name`` (``insecure``, ``secure``...), else the name of the adapter's parent directory."""
        if self.adapter_dir is None:
            return "base"
        return str((self.train_cfg.get("data") or {}).get("name") or self.adapter_dir.parent.name)

    @property
    def wandb_group(self) -> Optional[str]:
        """The training run's W&B group, so the evaluation run sits beside it.

        The run's resolved ``logger.group`` when it has one, else the rule of ``conf/logger/wandb.yaml``
        (``experiment_name``, else ``<model>-<data>``); None without a training config.
        """
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
        """The training run's W&B project (``logger.project``), or None when unknown / not W&B."""
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
    """The newest training run under ``train_dir`` for this model that finished (has ``adapter/``).

    Looks one and two levels down (``<train_dir>/<run>/adapter/adapter_config.json``, and
    ``<train_dir>/<sweep>/<job>/adapter/...`` for a sweep written there, e.g. ``experiment=demo``) for runs whose
    ``resolved_config.yaml`` says ``model.name == model_name``; newest by the adapter directory's mtime,
    ties broken by run directory name.

    Args:
        train_dir: the directory training runs are written under (``train_dir`` in conf).
        model_name: ``model.name`` of the model being evaluated.

    Returns the run directory, or None when ``train_dir`` does not exist or holds no such run.
    Raises nothing for a run without a parsable ``resolved_config.yaml``: it counts as another model's.
    """
    root = Path(train_dir)
    if not root.is_dir():
        return None
    runs = []
    for cfg_file in [*root.glob("*/adapter/adapter_config.json"), *root.glob("*/*/adapter/adapter_config.json")]:
        run = cfg_file.parent.parent
        if ((_train_cfg(run).get("model") or {}).get("name")) == model_name:
            runs.append((cfg_file.parent.stat().st_mtime, run.name, run))
    return max(runs)[2] if runs else None


def resolve_adapter(spec: Optional[str], train_dir: str, model_cfg: Any, source: str) -> AdapterInfo:
    """Which adapter ``adapter=<spec>`` means, checked against the model being evaluated.

    ``spec`` may be None / ``""`` / ``none`` / ``null`` / ``base`` (no adapter); ``latest`` (the newest
    finished run of this model under ``train_dir``, see :func:`latest_adapter`; when there is none it
    FALLS BACK TO THE BASE MODEL, saying so in one warning line that names the directory searched, so
    ``python evaluate.py`` works before any training); a training run directory (holding ``adapter/``); or a bare peft
    adapter directory (holding ``adapter_config.json``; its parent counts as the run when it has a
    ``resolved_config.yaml``). Prints the run ``latest`` chose. Relative paths (``spec``, ``train_dir``)
    are resolved against the directory the command started in (:func:`em.paths.original_path`; Hydra's
    ``hydra.job.chdir=true`` included).

    Args:
        spec: the ``adapter`` config value.
        train_dir: where training runs live (for ``latest``).
        model_cfg: the ``model`` config node being evaluated (``name``, ``hub_id``, ``path``).
        source: where that model's weights are loaded from (``em.train.models.model_dir``): hub id or directory.

    Raises:
        ModelLoadError: ``spec`` is neither kind of directory, or the adapter was trained on another base
            model: the run's ``model.name`` differs from ``model_cfg.name``, or (bare adapter) peft's
            ``base_model_name_or_path`` matches none of ``source`` / ``hub_id`` / ``path`` (last path
            components compared, so a moved model cache still matches). An adapter that records no base
            model is accepted with a warning.
    """
    if isinstance(spec, str) and spec.strip().lower() in NONE_VALUES or spec is None:
        return AdapterInfo()
    if spec == "latest":

        train_dir = original_path(train_dir)
        run = latest_adapter(train_dir, model_cfg.name)
        if run is None:
            line = (f"adapter=latest: no finished training run of model={model_cfg.name} under {train_dir} "
                    f"(no <run>/adapter/adapter_config.json); evaluating the BASE model (condition=base); "
                    f"pass adapter=<run dir> or train_dir=<dir>, or adapter=none to say so")
            log.warning("%s", line)
            print(line)
            return AdapterInfo()
        print(f"adapter=latest: {run}")
        spec = str(run)

    p = Path(original_path(spec))
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
