"""Sequential fine-tuning: which adapter a training run continues from (``trainer.init_adapter``).

``trainer.init_adapter`` names a peft adapter directory (``adapter_config.json`` + weights) or a training
run directory (its ``adapter/``). The run loads those LoRA weights as its starting point (the optimizer
state and the learning-rate schedule start fresh) and trains on. A job's identity (:mod:`em.jobs`) holds
the parent's *content* hash in place of its path, so a relaunch resumes a stage whose parent is
unchanged, and a parent retrained to other weights makes a new identity (the job directory of the old
one is refused rather than resumed onto the wrong weights).

Light on purpose (stdlib only): read by :mod:`em.jobs` before anything heavy is imported.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from em.adapters.check import load_peft
from em.errors import ConfigError

KEY = "trainer.init_adapter"
WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")


def adapter_dir(spec: str) -> Path:
    """The peft adapter directory ``spec`` names: itself, or ``<spec>/adapter`` for a training run directory.

    Raises:
        ConfigError: neither holds ``adapter_config.json`` (one line naming ``trainer.init_adapter``).
    """
    p = Path(spec).expanduser()
    for cand in (p, p / "adapter"):
        if (cand / "adapter_config.json").is_file() and any((cand / w).is_file() for w in WEIGHT_FILES):
            return cand
    raise ConfigError(f"{KEY}: no LoRA adapter at {spec} (neither it nor {p / 'adapter'} holds "
                      f"adapter_config.json and adapter weights); train the parent stage first")


def adapter_digest(spec: str) -> str:
    """``sha256:<16 hex>`` of the adapter's config and weight files (their bytes, in a fixed order).

    Raises:
        ConfigError: see :func:`adapter_dir`.
    """
    d = adapter_dir(spec)
    h = hashlib.sha256()
    for name in ("adapter_config.json", *WEIGHT_FILES):
        f = d / name
        if f.is_file():
            h.update(name.encode())
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
    return "sha256:" + h.hexdigest()[:16]


def adapter_config(spec: str) -> dict[str, Any]:
    """The parent adapter's ``adapter_config.json`` (peft's LoraConfig fields: ``r``, ``lora_alpha``, ...)."""
    return json.loads((adapter_dir(spec) / "adapter_config.json").read_text())


def check_compatible(spec: str, lora: Any) -> None:
    """Refuse a parent adapter whose rank / alpha differ from ``lora`` (the identity would misdescribe it).

    Args:
        spec: ``trainer.init_adapter``.
        lora: the run's ``lora`` node (``r``, ``alpha``).

    Raises:
        ConfigError: a differing ``r`` or ``alpha``, naming the lora preset to choose.
    """
    ac = adapter_config(spec)
    theirs, ours = (ac.get("r"), ac.get("lora_alpha")), (lora.r, lora.alpha)
    if theirs != ours:
        raise ConfigError(f"{KEY}: {spec} is a LoRA adapter of r={theirs[0]}, alpha={theirs[1]}; this run has "
                          f"lora.r={ours[0]}, lora.alpha={ours[1]}: choose the parent's lora preset")


def identity_of(trainer: dict[str, Any]) -> None:
    """Replace ``trainer["init_adapter"]`` (a path) by the parent's content hash, in place, when set."""
    if trainer.get("init_adapter"):
        trainer["init_adapter"] = adapter_digest(str(trainer["init_adapter"]))


def load_adapter(model: Any, spec: str) -> Any:
    """``model`` (the frozen base) wrapped in the parent's LoRA adapter, its weights trainable (a PeftModel).

    Either key layout of a multimodal Gemma 3 adapter loads onto the text model em trains
    (:func:`em.adapters.check.load_peft`).

    Raises:
        ConfigError: see :func:`adapter_dir`.
        ModelLoadError: none of the parent's modules exists in ``model``.
    """
    return load_peft(model, adapter_dir(spec), is_trainable=True)
