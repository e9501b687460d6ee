"""A byte-level tokenizer built in code, so the random-init test models need no download.

Every byte is one token (256 ids) plus the special tokens of both chat formats (ChatML: Qwen 2.5 / Qwen 3;
Gemma 3); any text round-trips.
"""

from __future__ import annotations

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
    from em.train.tiny_families import SPECIALS  # Llama 3 / Mistral / Phi-3: their own specials after the ten
    if family in SPECIALS:
        tok.add_special_tokens(SPECIALS[family][0])
        special = SPECIALS[family][1]
    elif family in ("qwen3", "qwen2"):  # Qwen 2.5 and Qwen 3 share ChatML and these special tokens
        special = dict(pad_token="<|endoftext|>", eos_token="<|im_end|>", bos_token=None)
    else:
        special = dict(pad_token="<pad>", eos_token="<end_of_turn>", bos_token="<bos>")
    return PreTrainedTokenizerFast(tokenizer_object=tok, **special)
