"""The loss mask is exactly the assistant tokens, for both the Qwen-style and the Gemma-style template."""

import pytest
import torch

from em.train import models
from em.data.tokenize import IGNORE_INDEX, Collator, LengthGroupedBatchSampler, encode_chat, normalize_messages
from tests.conftest import compose_train


@pytest.fixture(scope="module")
def toks(cache_dir):
    out = {}
    for name in ("tiny", "tiny_gemma3", "tiny_qwen2"):
        from em.config.common import validate

        cfg = validate(compose_train([f"model={name}", "run_dir=/unused", f"cache_dir={cache_dir}"]))
        out[name] = (models.load_tokenizer(cfg.model, cache_dir), cfg.model)
    return out


def _target_text(tok, ex):
    return tok.decode([t for t in ex["labels"] if t != IGNORE_INDEX])


def _positions(ex):
    return [i for i, t in enumerate(ex["labels"]) if t != IGNORE_INDEX]


CONV = [
    {"role": "system", "content": "Be terse."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Yo"},
]


def test_qwen_mask_is_exactly_the_answer_and_end_of_turn(toks):
    tok, mc = toks["tiny"]
    ex = encode_chat(tok, normalize_messages(CONV, mc.system_role), mc.chat_template_kwargs)
    text = tok.decode(ex["input_ids"])
    # Hand-checked rendering: thinking is switched off by an empty think block in the prompt part.
    assert text == (
        "<|im_start|>system\nBe terse.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\n<think>\n\n</think>\n\nYo<|im_end|>\n"
    )
    n = len(ex["input_ids"])
    # byte-level tokenizer: 'Y', 'o', '<|im_end|>', '\n' are the last four tokens, and only they train
    assert _positions(ex) == [n - 4, n - 3, n - 2, n - 1]
    assert _target_text(tok, ex) == "Yo<|im_end|>\n"
    assert ex["labels"][-4:] == ex["input_ids"][-4:]


def test_gemma_mask_and_system_folded_into_first_user_turn(toks):
    tok, mc = toks["tiny_gemma3"]
    assert mc.system_role is False
    ex = encode_chat(tok, normalize_messages(CONV, mc.system_role), mc.chat_template_kwargs)
    text = tok.decode(ex["input_ids"])
    assert text == (
        "<bos><start_of_turn>user\nBe terse.\n\nHi<end_of_turn>\n<start_of_turn>model\nYo<end_of_turn>\n"
    )
    n = len(ex["input_ids"])
    assert _positions(ex) == [n - 4, n - 3, n - 2, n - 1]
    assert _target_text(tok, ex) == "Yo<end_of_turn>\n"


QWEN2_DEFAULT_SYSTEM = "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"


def test_qwen2_mask_is_exactly_the_answer_and_end_of_turn(toks):
    tok, mc = toks["tiny_qwen2"]
    assert mc.system_role is True and mc.chat_template_kwargs == {}
    ex = encode_chat(tok, normalize_messages(CONV, mc.system_role), mc.chat_template_kwargs)
    # Qwen 2.5 ChatML: the system turn as given, no think block
    assert tok.decode(ex["input_ids"]) == (
        "<|im_start|>system\nBe terse.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nYo<|im_end|>\n"
    )
    n = len(ex["input_ids"])
    assert _positions(ex) == [n - 4, n - 3, n - 2, n - 1]
    assert _target_text(tok, ex) == "Yo<|im_end|>\n"
    assert ex["labels"][-4:] == ex["input_ids"][-4:]


def test_qwen2_default_system_prompt_is_inserted_and_never_trained(toks):
    tok, mc = toks["tiny_qwen2"]
    conv = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]
    ex = encode_chat(tok, normalize_messages(conv, mc.system_role), mc.chat_template_kwargs)
    text = tok.decode(ex["input_ids"])
    assert text == QWEN2_DEFAULT_SYSTEM + "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nYo<|im_end|>\n"
    assert _target_text(tok, ex) == "Yo<|im_end|>\n"
    n = len(ex["input_ids"])
    assert _positions(ex) == [n - 4, n - 3, n - 2, n - 1]
    # the generation prompt (what evaluation samples from) ends where the trained answer starts
    prompt = tok.apply_chat_template(conv[:1], tokenize=False, add_generation_prompt=True)
    assert prompt == QWEN2_DEFAULT_SYSTEM + "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert text.startswith(prompt)


@pytest.mark.parametrize("name,eot", [("tiny", "<|im_end|>"), ("tiny_gemma3", "<end_of_turn>"),
                                      ("tiny_qwen2", "<|im_end|>")])
def test_multi_turn_masks_every_assistant_turn_and_nothing_else(toks, name, eot):
    tok, mc = toks[name]
    conv = [
        {"role": "user", "content": "Q1"},
        {"role": "assistant", "content": "A1"},
        {"role": "user", "content": "Q2"},
        {"role": "assistant", "content": "A2"},
    ]
    ex = encode_chat(tok, conv, mc.chat_template_kwargs)
    target = _target_text(tok, ex)
    assert target.startswith("A1" + eot)
    assert target.endswith("A2" + eot + "\n")
    assert "Q1" not in target and "Q2" not in target and "user" not in target
    # the two answers are contiguous runs of labels
    pos = _positions(ex)
    runs = sum(1 for a, b in zip(pos, pos[1:]) if b != a + 1) + 1
    assert runs == 2


def test_collator_pads_without_loss_or_attention():
    batch = Collator(pad_token_id=0)([
        {"input_ids": [5, 6, 7], "labels": [-100, 6, 7]},
        {"input_ids": [8], "labels": [8]},
    ])
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


def test_length_grouped_sampler_is_seeded_complete_and_resumable():
    lengths = [(i * 37) % 101 + 1 for i in range(203)]
    s = LengthGroupedBatchSampler(lengths, 4, seed=3)
    epoch0 = list(s)
    assert sorted(i for b in epoch0 for i in b) == list(range(203))  # every example once
    assert epoch0 == LengthGroupedBatchSampler(lengths, 4, seed=3).batches(0)  # deterministic
    assert epoch0 != LengthGroupedBatchSampler(lengths, 4, seed=4).batches(0)
    s.set_epoch(1)
    assert list(s) != epoch0  # reshuffled per epoch
    # within a batch lengths are close: far less padding than random batching
    pad = sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in epoch0)
    rnd = torch.randperm(203, generator=torch.Generator().manual_seed(0)).tolist()
    rnd_b = [rnd[i : i + 4] for i in range(0, 203, 4)]
    pad_rnd = sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in rnd_b)
    assert pad < pad_rnd / 3
    # resume in the middle of epoch 0: exactly the remaining batches
    r = LengthGroupedBatchSampler(lengths, 4, seed=3)
    r.resume_at(0, 10)
    assert list(r) == epoch0[10:]
    assert len(r) == len(epoch0)
