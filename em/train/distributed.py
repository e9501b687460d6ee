"""Multi-GPU training: the ``trainer.strategy`` node, FSDP wrapping for QLoRA, config checks.

``trainer=ddp`` (one full 4-bit model per GPU, gradients all-reduced) fits every model of the sweep on an
80 GB GPU and is the simple way to use several GPUs. ``trainer=fsdp`` shards the frozen 4-bit weights,
the LoRA weights and the optimizer state over the GPUs, for a model that does not fit one GPU with its
activations; it needs ``quantization.quant_storage=bfloat16`` (checked here, before anything loads).
Both run one process per GPU; each trains on its rank's batches (``LengthGroupedBatchSampler``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from em.errors import ConfigError

# Decoder-layer classes of the families em trains (transformers names): one FSDP unit each.
DECODER_LAYERS = ("Qwen3DecoderLayer", "Qwen2DecoderLayer", "Gemma3DecoderLayer")


def qlora_auto_wrap_policy(layer_classes: Any = DECODER_LAYERS):
    """FSDP wrap policy for QLoRA: each decoder layer is a unit, and each trainable leaf (LoRA A / B) too.

    A flat parameter holds one dtype: the LoRA weights train in fp32 while the frozen weights (4-bit
    packed into bf16 storage, norms, embeddings) are bf16, so the adapters get units of their own (the
    layout of peft's ``fsdp_auto_wrap_policy``). Matched by class name, so one policy serves every family.
    """
    from torch.distributed.fsdp.wrap import CustomPolicy

    names = set(layer_classes)

    def wrap(module) -> bool:
        if type(module).__name__ in names:
            return True
        leaf = next(module.children(), None) is None
        return leaf and any(p.requires_grad for p in module.parameters(recurse=False))

    return CustomPolicy(wrap)


def _target(spec: Any) -> str:
    return str(spec.get("_target_", "")) if isinstance(spec, Mapping) or hasattr(spec, "get") else ""


def make_strategy(spec: Any):
    """trainer.strategy as L.Trainer takes it: a name ('auto', 'ddp', 'fsdp', ...) passes through; a
    ``_target_`` node (the ``trainer=fsdp`` option's FSDPStrategy) is instantiated."""
    if _target(spec):
        import hydra

        return hydra.utils.instantiate(spec, _convert_="all")
    return spec


def is_fsdp(spec: Any) -> bool:
    """Does ``trainer.strategy`` (a name or a ``_target_`` node) select FSDP?"""
    if isinstance(spec, str):
        return spec.startswith("fsdp")
    return _target(spec).endswith("FSDPStrategy")


def check_strategy(tc) -> None:
    """Refuse strategy / quantisation combinations that cannot work, before a model is loaded.

    ``tc``: the validated training config. Raises ConfigError (naming the key) for FSDP with 4-bit weights
    stored as uint8, and for FSDP with ``trainer.adapter_snapshots``.
    """
    q = tc.quantization
    if is_fsdp(tc.trainer.strategy) and q.load_in_4bit and q.quant_storage in (None, "uint8"):
        raise ConfigError(
            "quantization.quant_storage: trainer=fsdp with 4-bit weights needs them stored as a float dtype equal to "
            "the compute dtype (FSDP flattens them with the layer's bf16 weights): add quantization.quant_storage=bfloat16"
        )
    if is_fsdp(tc.trainer.strategy) and tc.trainer.adapter_snapshots:
        raise ConfigError("trainer.adapter_snapshots: not supported with trainer=fsdp (sharded LoRA weights); "
                          "use trainer=ddp or one GPU")
    if is_fsdp(tc.trainer.strategy) and tc.trainer.snapshot_every_n_steps:  # em.dynamics' step snapshots
        raise ConfigError("trainer.snapshot_every_n_steps: not supported with trainer=fsdp (sharded LoRA weights); "
                          "use trainer=ddp or one GPU")


def adapter_state_dict(trainer, module):
    """The LoRA weights to save after fit, or None to let peft read the module (everything but FSDP).

    Under FSDP each rank holds a shard: the full state dict is gathered to rank 0 (a collective, so every
    rank calls this) and the adapter's keys are kept, named as in the peft model.
    """
    from lightning.pytorch.strategies import FSDPStrategy

    if not isinstance(trainer.strategy, FSDPStrategy):
        return None
    full = trainer.strategy.lightning_module_state_dict()
    return {k[len("model."):]: v for k, v in full.items() if k.startswith("model.") and "lora_" in k}
