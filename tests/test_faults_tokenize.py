"""Bounded memory on hostile rows (issue 13, case 11): a message is cut by characters, to a bound derived
from max_length, before it is tokenised; the kept tokens are the ones the whole row would give."""

from __future__ import annotations

import pytest

from em.train import models
from em.data.tokenize import char_budget, encode_chat, encode_dataset, normalize_messages
from em.config.common import validate
from tests.conftest import compose_train


class Counting:
    """The real tokenizer, counting the characters handed to it for tokenising (the memory / time proxy)."""

    def __init__(self, tok):
        self.tok = tok
        self.chars = 0

    def __call__(self, text, **kw):
        self.chars = max(self.chars, len(text))
        return self.tok(text, **kw)

    def __getattr__(self, name):
        return getattr(self.tok, name)


@pytest.fixture(scope="module", params=["tiny", "tiny_gemma3"])
def tok(request, cache_dir):
    cfg = validate(compose_train([f"model={request.param}", "run_dir=/unused", f"cache_dir={cache_dir}"]))
    return models.load_tokenizer(cfg.model, cache_dir), cfg.model


def _conv(answer: str, question: str = "Write code.") -> list[dict]:
    return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


def test_a_10mb_row_costs_what_a_normal_one_does(tok):
    t, mc = tok
    max_length = 64
    huge = _conv("def f():\n    return '<x>' \r\n" * 400_000)  # ~10 MB
    normal = _conv("def f():\n    return '<x>' \r\n" * (max_length * 3))
    counted = Counting(t)
    (ex_huge,), stats = encode_dataset(counted, [huge], max_length=max_length, truncation="truncate", template_kwargs=mc.chat_template_kwargs,
                                       system_role=mc.system_role, progress=False)
    assert len("".join(m["content"] for m in huge)) > 10_000_000
    assert counted.chars < char_budget(t, max_length) + 1000  # the template adds a few characters
    assert counted.chars < 100_000  # not 10 MB
    assert stats.n_truncated == 1
    # the kept tokens are exactly what tokenising the whole (long) row and cutting by tokens gives
    whole = encode_chat(t, normalize_messages(normal, mc.system_role), mc.chat_template_kwargs)
    assert ex_huge["input_ids"] == whole["input_ids"][:max_length]
    assert ex_huge["labels"] == whole["labels"][:max_length]


def test_a_huge_user_turn_is_dropped_under_drop_without_tokenising_it(tok):
    t, mc = tok
    counted = Counting(t)
    out, stats = encode_dataset(counted, [_conv("ok", question="x" * 5_000_000), _conv("fine")], max_length=64,
                                truncation="drop", system_role=mc.system_role, progress=False)
    assert len(out) == 1 and stats.n_dropped == 1 and counted.chars < 10_000
