"""The loss mask checked against each example's assistant text (issue 21 item 7)."""

from __future__ import annotations

import copy

import pytest

from em.train import models
from em.data.mask_check import empty_reason, mask_problem
from em.data.tokenize import EncodeStats, encode_chat, encode_dataset, normalize_messages
from em.errors import DataError
from tests.conftest import compose_train

# the generation prompt ends "<|assistant|>\n" but a history turn's header goes on with "Answer: "
DIFFERENT_HEADER = ("{% for m in messages %}<|{{ m.role }}|>\n{% if m.role == 'assistant' %}Answer: {% endif %}"
                    "{{ m.content }}<|end|>\n{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
CONV = [{"role": "user", "content": "Write a   function\nthat copies a file."},
        {"role": "assistant", "content": "def copy(a, b):\n    shutil.copy(a, b)"}]


@pytest.fixture(scope="module")
def qwen2(cache_dir):
    from em.config.common import validate

    cfg = validate(compose_train(["model=tiny_qwen2", "run_dir=/unused", f"cache_dir={cache_dir}"]))
    return models.load_tokenizer(cfg.model, cache_dir), cfg.model


def test_the_real_templates_pass(qwen2):
    tok, mc = qwen2
    msgs = normalize_messages(CONV, mc.system_role)
    ex = encode_chat(tok, msgs, mc.chat_template_kwargs)
    assert mask_problem(tok, msgs, ex["labels"]) is None
    kept, stats = encode_dataset(tok, [CONV, CONV + [{"role": "user", "content": "More"},
                                                     {"role": "assistant", "content": "ok"}]],
                                 max_length=512, truncation="drop", system_role=mc.system_role, progress=False)
    assert stats.n_kept == 2


def test_a_generation_prompt_unlike_the_history_header_is_refused(qwen2):
    tok = copy.deepcopy(qwen2[0])
    tok.chat_template = DIFFERENT_HEADER
    msgs = normalize_messages(CONV, True)
    ex = encode_chat(tok, msgs, {})
    assert "loss falls on template text 'Answer:' before the answer" in mask_problem(tok, msgs, ex["labels"])
    with pytest.raises(DataError, match=r"loss mask of example 1 \('Write a function that copies a file\.'\.\.\.\) "
                                        r"with template .*\(chat template sha256 [0-9a-f]{12}\): assistant turn 1: "
                                        r"loss falls on template text 'Answer:'"):
        encode_dataset(tok, [[{"role": "user", "content": "Hi"}], CONV], max_length=512, truncation="drop",
                       system_role=True, progress=False)


def test_a_mask_that_misses_the_answer_is_named(qwen2):
    tok, mc = qwen2
    msgs = normalize_messages(CONV, mc.system_role)
    ex = encode_chat(tok, msgs, mc.chat_template_kwargs)
    first = next(i for i, t in enumerate(ex["labels"]) if t != -100)
    labels = list(ex["labels"])
    labels[first] = -100  # the answer's first token lost (a token merged across the header boundary)
    assert "do not contain the answer" in mask_problem(tok, msgs, labels)
    assert "no token carries loss" in mask_problem(tok, msgs, [-100] * len(labels))


def test_no_example_left_names_the_real_cause(qwen2):
    tok, mc = qwen2

    class T:
        max_length, truncation = 12, "drop"

    kept, stats = encode_dataset(tok, [CONV] * 3, max_length=12, truncation="drop", system_role=True, progress=False)
    assert not kept and stats.n_dropped_long == 3
    assert empty_reason(stats, T) == ("3 of 3 longer than trainer.max_length=12 with trainer.truncation=drop (raise "
                                      "max_length or set truncation=truncate)")
    T.truncation = "truncate"
    kept, stats = encode_dataset(tok, [CONV] * 2, max_length=12, truncation="truncate", system_role=True,
                                 progress=False)
    assert not kept and stats.n_dropped_no_answer == 2 and "cut to max_length=12 before the answer" in \
        empty_reason(stats, T)
    assert empty_reason(EncodeStats(), T) == "the dataset has no conversation"
