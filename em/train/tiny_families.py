"""Random-init test models of the Llama 3, Mistral and Phi-3 families (``model=tiny_llama`` ...).

Like ``tiny`` / ``tiny_qwen2`` / ``tiny_gemma3`` (:func:`em.train.models.build_random_model`): a few-layer
transformers model of the family's own architecture class, weights from the seeded RNG, with the
byte-level tokenizer of :mod:`em.train.tiny_tokenizer` extended by the family's special tokens (:data:`SPECIALS`)
so its chat template (``em/train/chat_templates/{llama3,mistral,phi3}.jinja``) renders and tokenises as the
real one does. For tests and pipeline checks, not for results.
"""

from __future__ import annotations

from typing import Any

FAMILIES = ("llama", "mistral", "phi3")
# family -> (extra special tokens, the tokenizer's pad / eos / bos) -- as the real tokenizers set them
SPECIALS: dict[str, tuple[list[str], dict[str, Any]]] = {
    "llama": (["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
               "<|finetune_right_pad_id|>"],
              dict(pad_token="<|finetune_right_pad_id|>", eos_token="<|eot_id|>", bos_token="<|begin_of_text|>")),
    "mistral": (["<s>", "</s>", "<unk>", "[INST]", "[/INST]"],
                dict(pad_token="<unk>", eos_token="</s>", bos_token="<s>")),
    "phi3": (["<s>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>"],
             dict(pad_token="<|endoftext|>", eos_token="<|end|>", bos_token="<s>")),
}


def random_model(family: str, arch: dict[str, Any], vocab_size: int, ids: dict[str, Any]):
    """A randomly initialised ``LlamaForCausalLM`` / ``MistralForCausalLM`` / ``Phi3ForCausalLM``.

    Args:
        family: one of :data:`FAMILIES`.
        arch: the transformers config fields (hidden_size, num_hidden_layers, ...).
        vocab_size: the tokenizer's length.
        ids: pad / bos / eos token ids.

    Seed torch first (the caller does). Raises ValueError for another family.
    """
    import transformers as tf

    classes = {"llama": ("LlamaConfig", "LlamaForCausalLM"), "mistral": ("MistralConfig", "MistralForCausalLM"),
               "phi3": ("Phi3Config", "Phi3ForCausalLM")}
    if family not in classes:
        raise ValueError(f"model.family: no random-init architecture for {family!r}")
    config_cls, model_cls = (getattr(tf, n) for n in classes[family])
    return model_cls(config_cls(vocab_size=vocab_size, tie_word_embeddings=True, **ids, **arch))
