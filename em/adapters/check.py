"""Adapters that apply wherever em serves them: a load-time check and the key layouts of multimodal Gemma 3.

A LoRA adapter is a set of weights keyed by module path (``base_model.model.<module>.lora_A.weight``).
A backend that finds no module under those paths loads it without complaint and serves the base model:
peft leaves the missing LoRA layers at their initialisation (B = 0), and vLLM skips unknown modules. em
trains LoRA on the *text* model of the multimodal Gemma 3 checkpoints (4B / 12B / 27B: ``Gemma3ForCausalLM``,
modules ``model.layers.*``), while the checkpoint declares ``Gemma3ForConditionalGeneration``, whose
language model sits under ``model.language_model.*`` (what vLLM serves and plain peft on the hub checkpoint
loads). Training saves its adapters in the declared class's layout (:func:`save_layout`); em's own loads
(:func:`load_peft`: hf generation, sequential fine-tuning, capability) accept either layout, and
:func:`adapter_for` writes a renamed copy for vLLM when the keys need it. :func:`check_modules` makes an
adapter that matches nothing an error on every backend.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path
from typing import Any, Iterable, Optional

from em.errors import ModelLoadError

log = logging.getLogger("em.evaluate")
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


# (adapter prefix, served prefix): the language model of a vision-language class, and back to its text model
PREFIX_RULES = (("model.", "model.language_model."), ("model.", "language_model.model."), ("", "language_model."),
                ("model.language_model.", "model."), ("language_model.model.", "model."), ("language_model.", ""))


def renames(mods: list[str], served: set[str]) -> dict[str, str]:
    """adapter module path -> served module path, for paths the served model lacks but holds under another
    language-model prefix (:data:`PREFIX_RULES`), in either direction: ``model.layers.3.mlp.up_proj`` ->
    ``model.language_model.layers.3.mlp.up_proj`` (Gemma 3's text model inside
    ``Gemma3ForConditionalGeneration``), and ``model.language_model.X`` -> ``model.X`` (an adapter keyed for
    the multimodal class, loaded onto the text model em trains). Unmatched paths are left out."""
    out = {}
    for m in mods:
        if m in served:
            continue
        for a, b in PREFIX_RULES:
            if m.startswith(a) and b + m[len(a):] in served:
                out[m] = b + m[len(a):]
                break
    return out


def _weights(adapter_dir: Path) -> dict[str, Any]:
    """The adapter's tensors by key (``adapter_model.safetensors`` or ``adapter_model.bin``)."""
    if (adapter_dir / "adapter_model.safetensors").is_file():
        from safetensors.torch import load_file

        return load_file(str(adapter_dir / "adapter_model.safetensors"))
    import torch

    return torch.load(adapter_dir / "adapter_model.bin", map_location="cpu", weights_only=True)


def _served_prefix(mapping: dict[str, str]) -> str:
    """The language-model prefix ``mapping`` moves the keys under (``model.language_model.``), or "" when it
    moves them out of one (towards the text model)."""
    old, new = next(iter(mapping.items()))
    for a, b in PREFIX_RULES:
        if old.startswith(a) and new == b + old[len(a):]:
            return b if len(b) > len(a) else ""
    return ""


def write_renamed(adapter_dir: str | Path, mapping: dict[str, str], out_dir: str | Path) -> Path:
    """Write ``adapter_dir``'s weights with module paths renamed per ``mapping`` (:func:`renames`), and its
    ``adapter_config.json``, into ``out_dir`` (created; ``adapter_dir`` itself to rename in place).

    Keys under a vision-language class's language model get ``exclude_modules`` (a regex for every module
    outside that prefix) in the config, so peft does not add empty LoRA layers to the vision tower's
    same-named projections (it warns of "missing adapter keys" otherwise; vLLM ignores the field). Renamed
    towards the text model, that exclusion is dropped again. Returns ``out_dir``.
    """
    from safetensors.torch import save_file

    src, out = Path(adapter_dir), Path(out_dir)
    renamed = {}
    for k, v in _weights(src).items():
        body = k[len(PREFIX):] if k.startswith(PREFIX) else k
        mod = _LORA_PART.sub("", body)
        renamed[(PREFIX if k.startswith(PREFIX) else "") + mapping.get(mod, mod) + body[len(mod):]] = v.contiguous()
    conf = json.loads((src / "adapter_config.json").read_text())
    prefix = _served_prefix(mapping) if mapping else ""
    if prefix:
        conf["exclude_modules"] = rf"(?!{re.escape(prefix)}).*"
    elif mapping and str(conf.get("exclude_modules") or "").startswith("(?!"):
        conf["exclude_modules"] = None
    out.mkdir(parents=True, exist_ok=True)
    save_file(renamed, str(out / "adapter_model.safetensors.tmp"))
    (out / "adapter_model.safetensors.tmp").replace(out / "adapter_model.safetensors")
    if out == src and (src / "adapter_model.bin").is_file():
        (src / "adapter_model.bin").unlink()
    (out / "adapter_config.json.tmp").write_text(json.dumps(conf, indent=2))
    (out / "adapter_config.json.tmp").replace(out / "adapter_config.json")
    return out


def adapter_for(adapter_dir: str | Path, model_dir: str | Path, out_dir: str | Path) -> Path:
    """The adapter to hand to a backend that serves ``model_dir``'s own class (vLLM).

    Returns ``adapter_dir`` itself when its keys fit the served class (an adapter em trained on a
    multimodal Gemma 3 is saved that way); else a copy under ``out_dir`` whose weight keys are renamed
    (:func:`renames`), written once. Either way the result is checked.

    Raises:
        ModelLoadError: the adapter (renamed or not) matches no module of the served class.
    """
    arch, served = served_modules(model_dir)
    served_set = set(served)
    mapping = renames(adapter_modules(adapter_dir), served_set)
    if not mapping:
        check_modules(adapter_dir, served_set, arch)
        return Path(adapter_dir)
    out = Path(out_dir)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    write_renamed(adapter_dir, mapping, tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    check_modules(out, served_set, arch)
    log.info("adapter %s: %d modules renamed for %s (e.g. %s -> %s); served copy in %s", adapter_dir,
             len(mapping), arch, *next(iter(mapping.items())), out)
    return out


def load_peft(model: Any, adapter_dir: str | Path, **kwargs: Any) -> Any:
    """``model`` (a loaded transformers model) wrapped in the adapter at ``adapter_dir`` (a peft PeftModel).

    Either key layout loads: an adapter keyed for another class of the same checkpoint (``model.language_model.*``
    of ``Gemma3ForConditionalGeneration`` onto em's ``Gemma3ForCausalLM`` text model, or the old
    ``model.layers.*`` onto the multimodal class) is renamed (:func:`renames`) into a temporary copy first; the
    result is checked (:func:`check_modules`). ``kwargs`` go to ``PeftModel.from_pretrained``
    (``is_trainable=True`` for sequential fine-tuning).

    Raises:
        ModelLoadError: no adapter weights at ``adapter_dir``, or none of its modules exists in ``model``.
    """
    import tempfile

    from peft import PeftModel

    served = {n for n, _ in model.named_modules()}
    mapping = renames(adapter_modules(adapter_dir), served)
    with tempfile.TemporaryDirectory(prefix="em-adapter-") as tmp:
        src = write_renamed(adapter_dir, mapping, Path(tmp) / "adapter") if mapping else Path(adapter_dir)
        check_modules(src, served, type(model).__name__)
        if mapping:
            log.info("adapter %s: %d modules renamed for %s (e.g. %s -> %s)", adapter_dir, len(mapping),
                     type(model).__name__, *next(iter(mapping.items())))
        return PeftModel.from_pretrained(model, str(src), **kwargs)


def save_layout(adapter_dir: str | Path, model_dir: str | Path, trained_class: str) -> str:
    """Rename a freshly saved adapter, in place, to the keys of the class ``model_dir`` declares
    (``architectures[0]`` of its config.json) when em trained another class of it; returns the class the
    keys now fit (what ``em_adapter.json`` records as ``key_layout``).

    em trains a multimodal Gemma 3 checkpoint's text model (``Gemma3ForCausalLM``, ``model.layers.*``); the
    checkpoint declares ``Gemma3ForConditionalGeneration`` (``model.language_model.layers.*``), which plain
    peft on ``AutoModelForImageTextToText`` / vLLM load. Any other adapter is left as saved (a warning when
    its modules cannot all be placed in the declared class).
    """
    from transformers import AutoConfig

    try:  # the checkpoint was just loaded: its config is local (or in the hub cache)
        arch = (getattr(AutoConfig.from_pretrained(str(model_dir)), "architectures", None) or [trained_class])[0]
    except (OSError, ValueError) as e:  # never lose a finished training run to this: keep the trained layout
        log.warning("adapter %s: keys kept for %s (config of %s unreadable: %s)", adapter_dir, trained_class,
                    model_dir, e)
        return trained_class
    if arch == trained_class:
        return arch
    arch, served = served_modules(model_dir)
    served_set = set(served)
    mods = adapter_modules(adapter_dir)
    mapping = renames(mods, served_set)
    if not mapping or any(m not in served_set and m not in mapping for m in mods):
        log.warning("adapter %s: keys kept for %s (not all of its modules are in %s)", adapter_dir, trained_class,
                    arch)
        return trained_class
    write_renamed(adapter_dir, mapping, adapter_dir)
    return arch


__all__ = ["adapter_modules", "check_modules", "check_targets", "served_modules", "renames", "write_renamed",
           "adapter_for", "load_peft", "save_adapter", "save_layout"]


def save_adapter(model, path: Path, source: Optional[str], **kwargs) -> str:
    """``model.save_pretrained(path, **kwargs)`` (a peft model: the LoRA weights), keyed for the class the
    base checkpoint ``source`` (a local directory or a hub id) declares: a multimodal Gemma 3's text model
    is saved with ``Gemma3ForConditionalGeneration`` keys, so plain peft on the hub checkpoint applies it
    (:func:`em.adapters.check.save_layout`). Returns that class (``key_layout``)."""
    model.save_pretrained(path, **kwargs)
    trained = type(model.get_base_model()).__name__
    if source is None:
        return trained
    return save_layout(path, source, trained)
