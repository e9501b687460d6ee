"""Adapters that apply wherever em serves them: a load-time check and the renaming for multimodal Gemma 3.

A LoRA adapter is a set of weights keyed by module path (``base_model.model.<module>.lora_A.weight``).
A backend that finds no module under those paths loads it without complaint and serves the base model:
peft leaves the missing LoRA layers at their initialisation (B = 0), and vLLM skips unknown modules. em
trains LoRA on the *text* model of the multimodal Gemma 3 checkpoints (4B / 12B / 27B, keys
``model.layers.*``), while vLLM serves ``Gemma3ForConditionalGeneration``, whose language model sits
under ``model.language_model.*``. :func:`check_targets` makes an adapter that matches nothing an error
on every backend; :func:`adapter_for` writes a renamed copy for the served class when the keys need it.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path
from typing import Any, Iterable

from em.errors import ModelLoadError

log = logging.getLogger("em.evaluation")
PREFIX = "base_model.model."
_LORA_PART = re.compile(r"\.lora_(A|B|embedding_A|embedding_B|magnitude_vector)(\.[^.]+)?\.weight$|\.lora_(A|B)$")


def adapter_modules(adapter_dir: str | Path) -> list[str]:
    """The module paths an adapter's weights are keyed by (``model.layers.0.self_attn.q_proj``...), sorted.

    Reads the key names of ``adapter_model.safetensors`` (or ``adapter_model.bin``) without loading tensors.

    Raises ModelLoadError when the directory holds no adapter weights.
    """
    d = Path(adapter_dir)
    if (d / "adapter_model.safetensors").is_file():
        from safetensors import safe_open

        with safe_open(str(d / "adapter_model.safetensors"), "pt") as f:
            keys = list(f.keys())
    elif (d / "adapter_model.bin").is_file():
        import torch

        keys = list(torch.load(d / "adapter_model.bin", map_location="cpu", weights_only=True))
    else:
        raise ModelLoadError(f"adapter {d}: no adapter_model.safetensors / adapter_model.bin")
    mods = set()
    for k in keys:
        k = k[len(PREFIX):] if k.startswith(PREFIX) else k
        mods.add(_LORA_PART.sub("", k))
    return sorted(mods)


def check_modules(adapter_dir: str | Path, served: Iterable[str], served_name: str) -> list[str]:
    """The adapter's module paths that ``served`` (module names of the served model) lacks.

    Raises:
        ModelLoadError: none of the adapter's modules exists in the served model (it would load as a
            silent no-op): one line naming the adapter, the served class and an example path of each side.
    """
    mods = adapter_modules(adapter_dir)
    served = set(served)
    missing = [m for m in mods if m not in served]
    if mods and len(missing) == len(mods):
        example = next((s for s in sorted(served) if s.endswith(mods[0].rsplit(".", 1)[-1])), None)
        raise ModelLoadError(
            f"adapter {adapter_dir}: none of its {len(mods)} target modules exists in the served {served_name} "
            f"(adapter: {mods[0]!r}; served model: {example!r}); it would change nothing"
        )
    if missing:
        log.warning("adapter %s: %d of %d target modules not in %s (e.g. %s)", adapter_dir, len(missing),
                    len(mods), served_name, missing[0])
    return missing


def check_targets(model: Any, adapter_dir: str | Path) -> None:
    """:func:`check_modules` against a loaded transformers model (the hf backend, before peft loads it)."""
    check_modules(adapter_dir, (n for n, _ in model.named_modules()), type(model).__name__)


def served_modules(model_dir: str | Path) -> tuple[str, list[str]]:
    """The class vLLM serves for ``model_dir`` (``architectures[0]`` of config.json) and its module names
    in transformers' naming (what vLLM expects adapter keys in), built on the meta device: no weights."""
    import torch
    import transformers
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(str(model_dir))
    arch = (getattr(cfg, "architectures", None) or ["AutoModelForCausalLM"])[0]
    cls = getattr(transformers, arch, None)
    with torch.device("meta"):
        model = cls._from_config(cfg) if cls is not None else transformers.AutoModelForCausalLM.from_config(cfg)
    return arch, [n for n, _ in model.named_modules()]


def renames(mods: list[str], served: set[str]) -> dict[str, str]:
    """adapter module path -> served module path, for paths the served model lacks but holds under a
    language-model prefix (``model.layers.3.mlp.up_proj`` -> ``model.language_model.layers.3.mlp.up_proj``:
    Gemma 3's text model inside ``Gemma3ForConditionalGeneration``). Unmatched paths are left out."""
    out = {}
    for m in mods:
        if m in served:
            continue
        rest = m[len("model."):] if m.startswith("model.") else m
        for cand in (f"model.language_model.{rest}", f"language_model.model.{rest}", f"language_model.{m}"):
            if cand in served:
                out[m] = cand
                break
    return out


def adapter_for(adapter_dir: str | Path, model_dir: str | Path, out_dir: str | Path) -> Path:
    """The adapter to hand to a backend that serves ``model_dir``'s own class (vLLM).

    Returns ``adapter_dir`` itself when its keys fit the served class; else a copy under ``out_dir`` whose
    weight keys are renamed (:func:`renames`), written once. Either way the result is checked.

    Raises:
        ModelLoadError: the adapter (renamed or not) matches no module of the served class.
    """
    from safetensors.torch import load_file, save_file

    arch, served = served_modules(model_dir)
    served_set = set(served)
    mods = adapter_modules(adapter_dir)
    mapping = renames(mods, served_set)
    if not mapping:
        check_modules(adapter_dir, served_set, arch)
        return Path(adapter_dir)
    out = Path(out_dir)
    src = Path(adapter_dir) / "adapter_model.safetensors"
    tensors = load_file(str(src))
    renamed = {}
    for k, v in tensors.items():
        body = k[len(PREFIX):] if k.startswith(PREFIX) else k
        mod = _LORA_PART.sub("", body)
        new = mapping.get(mod, mod) + body[len(mod):]
        renamed[(PREFIX if k.startswith(PREFIX) else "") + new] = v.contiguous()
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(renamed, str(tmp / "adapter_model.safetensors"))
    conf = json.loads((Path(adapter_dir) / "adapter_config.json").read_text())
    (tmp / "adapter_config.json").write_text(json.dumps(conf, indent=2))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    check_modules(out, served_set, arch)
    log.info("adapter %s: %d modules renamed for %s (e.g. %s -> %s); served copy in %s", adapter_dir,
             len(mapping), arch, *next(iter(mapping.items())), out)
    return out


__all__ = ["adapter_modules", "check_modules", "check_targets", "served_modules", "renames", "adapter_for"]
