"""Random-init test models built in code, so tests and pipeline checks need no download.

**The tokenizer.** A byte-level tokenizer built in code, so the random-init test models need no download.

Every byte is one token (256 ids) plus the special tokens of both chat formats (ChatML: Qwen 2.5 / Qwen 3;
Gemma 3); any text round-trips.

**The Llama 3, Mistral and Phi-3 families.** Random-init test models of the Llama 3, Mistral and Phi-3 families (``model=tiny_llama`` ...).

Like ``tiny`` / ``tiny_qwen2`` / ``tiny_gemma3`` (:func:`em.train.models.build_random_model`): a few-layer
transformers model of the family's own architecture class, weights from the seeded RNG, with the
byte-level tokenizer of :mod:`em.train.tiny` extended by the family's special tokens (:data:`SPECIALS`)
so its chat template (``em/train/chat_templates/{llama3,mistral,phi3}.jinja``) renders and tokenises as the
real one does. For tests and pipeline checks, not for results.
"""

from __future__ import annotations

from typing import Any

QWEN3_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]
GEMMA3_SPECIALS = ["<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"]


def build_tokenizer(family: str):
    """A byte-level ``PreTrainedTokenizerFast`` for the random-init test models of ``family``.

    The vocabulary is the 256 symbols of GPT-2's byte-to-unicode alphabet (``ByteLevel.alphabet()``, ids
    0-255 in sorted order) with no merges, then the ten special tokens of both chat formats (ids 256-265):
    ``len(tokenizer) == 266``. Pad / EOS / BOS follow the real tokenizers: Qwen's ``<|endoftext|>`` /
    ``<|im_end|>`` / none, Gemma 3's ``<pad>`` / ``<end_of_turn>`` / ``<bos>``. No chat template is set
    (``em.train.models.load_tokenizer`` sets the one ``model.chat_template`` names).

    Args:
        family: ``qwen3``, ``qwen2`` or ``llama`` (SmolLM2) for ChatML specials; any other value (``gemma3``) gets Gemma's.

    Raises:
        ModuleNotFoundError: ``tokenizers`` / ``transformers`` not installed.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import PreTrainedTokenizerFast

    alphabet = ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(QWEN3_SPECIALS + GEMMA3_SPECIALS)
    if family in SPECIALS:
        tok.add_special_tokens(SPECIALS[family][0])
        special = SPECIALS[family][1]
    elif family in ("qwen3", "qwen2"):  # Qwen 2.5 and Qwen 3 share ChatML and these special tokens
        special = dict(pad_token="<|endoftext|>", eos_token="<|im_end|>", bos_token=None)
    else:
        special = dict(pad_token="<pad>", eos_token="<end_of_turn>", bos_token="<bos>")
    return PreTrainedTokenizerFast(tokenizer_object=tok, **special)


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
