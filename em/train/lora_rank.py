"""``lora.r`` against the layers it adapts: a rank above ``min(in_features, out_features)`` of a targeted layer is
refused before training (one line naming ``lora.r``).

A LoRA update ``B @ A`` of a ``d_out x d_in`` layer has rank at most ``min(d_in, d_out)``: a larger ``r`` adds
parameters (memory, time, a larger adapter file) and no capacity (``lora.r=100000`` on a model of hidden size
64 ran 208 s, peaked at 16 GB and wrote a 782 MB adapter). The shapes come from the model's architecture
alone, built on PyTorch's ``meta`` device (no weights, no memory) from its ``config.json``
(:func:`check_lora_rank`, before the job directory is touched), or from the loaded model
(:func:`check_model_lora_rank`, the same rule where no config could be read first).
"""

from __future__ import annotations

from typing import Any, Iterable, Optional

from em.errors import ConfigError


def targeted_dims(model: Any, targets: Iterable[str]) -> list[tuple[str, int, int]]:
    """``(module name, in_features, out_features)`` of every module of ``model`` peft's ``target_modules`` rule
    (a name equal to a target, or ending in ``.<target>``) picks that has both attributes."""
    targets = list(targets)
    out = []
    for name, module in model.named_modules():
        if not any(name == t or name.endswith("." + t) for t in targets):
            continue
        fin, fout = getattr(module, "in_features", None), getattr(module, "out_features", None)
        if isinstance(fin, int) and isinstance(fout, int):
            out.append((name, fin, fout))
    return out


def check_dims(r: int, dims: list[tuple[str, int, int]]) -> None:
    """Refuse ``r`` above the smallest ``min(in, out)`` of ``dims``.

    Raises:
        ConfigError: ``lora.r: <r> is larger than <name> (<in> -> <out>) ...``.
    """
    if not dims:
        return
    name, fin, fout = min(dims, key=lambda d: min(d[1], d[2]))
    limit = min(fin, fout)
    if r > limit:
        raise ConfigError(f"lora.r: {r} is larger than the smallest layer it adapts ({name}: {fin} -> {fout} "
                          f"features); a LoRA update of that layer has rank at most {limit}, so a larger r only "
                          f"adds parameters; choose lora.r <= {limit}")


def check_model_lora_rank(model: Any, r: int, targets: Iterable[str]) -> None:
    """:func:`check_dims` on a loaded model (see the module docstring). Raises ConfigError."""
    check_dims(r, targeted_dims(model, targets))


def check_lora_rank(r: int, targets: Iterable[str], source: Optional[str]) -> None:
    """Check ``lora.r`` against the architecture in ``source`` (a local model directory with ``config.json``),
    built on the ``meta`` device: milliseconds, no weights read. A source that is not a local directory, or an
    architecture transformers cannot build from its config, is left to :func:`check_model_lora_rank`.

    Raises:
        ConfigError: naming ``lora.r`` and the smallest targeted layer.
    """
    from pathlib import Path

    if not source or not (Path(source) / "config.json").is_file():
        return
    try:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

        config = AutoConfig.from_pretrained(source)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
    except Exception:  # noqa: BLE001  an architecture only its loader knows: checked on the loaded model
        return
    check_model_lora_rank(model, r, targets)
