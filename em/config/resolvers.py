"""The ``em.*`` OmegaConf resolvers the YAML files under ``conf/`` use."""

from __future__ import annotations

from typing import Any, Optional

from omegaconf import OmegaConf

from em.paths import local_roots
from em.runtime import in_multirun, is_wandb_logger


def first_set(*values: Any) -> Any:
    """``${em.or:a,b,...}``: the first value that is not null (``oc.select`` treats an explicit null as set)."""
    return next((v for v in values if v is not None), None)


def sweep_name() -> Optional[str]:
    """``${em.sweep_name:}``: the sweep directory's name inside a multirun (an ad-hoc sweep's W&B group), else null."""
    if not in_multirun():
        return None
    from hydra.core.hydra_config import HydraConfig

    return str(HydraConfig.get().sweep.dir).rstrip("/").rsplit("/", 1)[-1]


def is_wandb(node: Any) -> bool:
    """``${em.is_wandb:${logger}}``: does this logger node build W&B (see :func:`em.runtime.is_wandb_logger`)?"""
    return is_wandb_logger(node)


def join(*parts: Any) -> Optional[str]:
    """``${em.join:a,b,...}``: the parts joined by ``-``, or null when one is null (a key the script lacks)."""
    return None if any(p is None for p in parts) else "-".join(str(p) for p in parts)


def run_tags(model: Any, data: Any, lora_r: Any, quantization: Any) -> list[str]:
    """``${em.run_tags:model,data,lora_r,quantization}``: the W&B tags of a run, null parts left out."""
    parts = (model, data, None if lora_r is None else f"lora-r{lora_r}", quantization)
    return [str(p) for p in parts if p is not None]


DEMO_UPSTREAM_FILE = "evaluation/first_plot_questions.yaml"  # Betley et al.'s first-plot set, repository-relative
_said: set[str] = set()


def upstream_questions_or(found: str, missing: str) -> str:
    """``${em.upstream_questions_or:first_plot,smoke}``: ``found`` when Betley et al.'s first-plot file is
    already on this machine where em looks for upstream files (``$EM_DATA_DIR/<file>`` or the download cache
    ``$EM_CACHE_DIR`` (default ``~/.cache/em``) ``/upstream/<file>``; see
    :func:`em.data.upstream.resolve_upstream_file`), else ``missing``. Used in a defaults list (the demo's
    questions), where only the environment is known: a ``cache_dir=`` override is not seen here. Says once
    per process, on stdout, which set it chose and why. Never downloads and never reads the file.
    """
    import os
    from pathlib import Path

    roots = dict(local_roots(os.environ.get("EM_CACHE_DIR") or Path.home() / ".cache/em"))
    cache = roots["cache"]
    hit = next((r / DEMO_UPSTREAM_FILE for r in roots.values() if (r / DEMO_UPSTREAM_FILE).is_file()), None)
    line = (f"questions={found}: Betley et al.'s {DEMO_UPSTREAM_FILE} found at {hit} (questions=... overrides)"
            if hit else f"questions={missing}: the project's own set ({DEMO_UPSTREAM_FILE} is neither in "
            f"$EM_DATA_DIR nor in {cache}; questions={found} downloads it)")
    if line not in _said:
        _said.add(line)
        print(line, flush=True)
    return found if hit else missing


def samples_for(answers: int, questions: Any, formats: Any) -> int:
    """``${em.samples_for:48,${questions},${format}}``: answers per question and format so that a model gets
    about ``answers`` answers: ``max(1, answers // (questions x formats))``, the questions counted from
    ``ids`` or ``n_questions`` (a set that states neither counts as 4, the smoke set's size)."""
    n_q = len(questions.get("ids") or []) or questions.get("n_questions") or 4
    return max(1, int(answers) // (int(n_q) * max(1, len(formats))))


def path_tag(spec: Any) -> str:
    """``${em.path_tag:${adapter}}``: a path-safe name for an adapter spec in a sweep job's directory name:
    ``latest`` / ``none`` as they are, a path as its last component (the training run's name for
    ``<run>/adapter``), characters outside ``[A-Za-z0-9._-]`` as ``-``. Two adapters with one name are caught
    before launch (the sweep plan refuses two jobs writing one directory)."""
    import re
    from pathlib import PurePath

    s = "none" if spec in (None, "") else str(spec)
    parts = [p for p in PurePath(s).parts if p not in ("/", ".", "..")]
    if len(parts) > 1 and parts[-1] == "adapter":
        parts = parts[:-1]
    return re.sub(r"[^A-Za-z0-9._-]", "-", parts[-1] if parts else s) or "none"


def register() -> None:
    """Register ``em.or``, ``em.sweep_name``, ``em.is_wandb``, ``em.join``, ``em.run_tags``,
    ``em.upstream_questions_or``, ``em.samples_for`` and ``em.path_tag`` (idempotent)."""
    OmegaConf.register_new_resolver("em.or", first_set, replace=True)
    OmegaConf.register_new_resolver("em.sweep_name", sweep_name, replace=True)
    OmegaConf.register_new_resolver("em.is_wandb", is_wandb, replace=True)
    OmegaConf.register_new_resolver("em.join", join, replace=True)
    OmegaConf.register_new_resolver("em.run_tags", run_tags, replace=True)
    OmegaConf.register_new_resolver("em.upstream_questions_or", upstream_questions_or, replace=True)
    OmegaConf.register_new_resolver("em.samples_for", samples_for, replace=True)
    OmegaConf.register_new_resolver("em.path_tag", path_tag, replace=True)
