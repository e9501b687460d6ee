"""The loss mask checked against the conversation it came from (issue 21 item 7).

:func:`em.data.tokenize.encode_chat` derives each assistant turn's loss span from the chat template (the
render with the generation prompt vs the full render). A template whose generation prompt differs from the
header it writes before an assistant turn in the history (e.g. ``<|assistant|>\\n`` vs ``<|assistant|>\\n
Answer: ``) then puts loss on the header's tail too, and a tokenizer that merges the last header character
with the answer's first one drops that token's loss. Both go unseen in a loss curve, so every example is
checked: each contiguous run of loss-carrying tokens, decoded and whitespace-normalised, must *start with*
its assistant turn's text (so it contains it and carries no template text before it). A mismatch is a
:class:`~em.errors.DataError` naming the example (its index and the start of its first user turn) and the
template (the tokenizer's name and the chat template's sha256).
"""

from __future__ import annotations

import hashlib
from typing import Optional

from em.errors import DataError

IGNORE_INDEX = -100


def normalise(text: str) -> str:
    """Whitespace runs collapsed to one space, ends stripped."""
    return " ".join(text.split())


def template_name(tokenizer) -> str:
    """``<name_or_path> (chat template sha256 <12 hex>)``: which template rendered the examples."""
    template = getattr(tokenizer, "chat_template", None) or ""
    if isinstance(template, dict):
        template = template.get("default", "") or ""
    digest = hashlib.sha256(str(template).encode()).hexdigest()[:12]
    return f"{getattr(tokenizer, 'name_or_path', '') or type(tokenizer).__name__} (chat template sha256 {digest})"


def loss_runs(labels: list[int]) -> list[list[int]]:
    """The contiguous runs of loss-carrying token ids (labels != -100)."""
    runs, cur = [], []
    for t in labels:
        if t != IGNORE_INDEX:
            cur.append(t)
        elif cur:
            runs.append(cur)
            cur = []
    if cur:
        runs.append(cur)
    return runs


def mask_problem(tokenizer, messages: list[dict], labels: list[int]) -> Optional[str]:
    """What is wrong with one example's loss mask, or None: the number of loss runs must equal the number of
    assistant turns (each carries at least its end-of-turn marker), and each run's decoded text must start with its turn's text (whitespace
    normalised)."""
    answers = [normalise(m["content"]) for m in messages if m["role"] == "assistant"]
    if not any(answers):
        return None
    runs = [normalise(tokenizer.decode(r, skip_special_tokens=False)) for r in loss_runs(labels)]
    if not runs:
        return "no token carries loss (the template marks no assistant text)"
    if len(runs) != len(answers):
        return f"{len(runs)} loss-carrying spans for {len(answers)} assistant turns"
    for i, (run, answer) in enumerate(zip(runs, answers)):
        if answer and not run.startswith(answer):
            pos = run.find(answer)
            if pos > 0:
                return (f"assistant turn {i + 1}: loss falls on template text {run[:pos].strip()!r} before the answer (the "
                        "generation prompt differs from the header the template writes before an assistant turn)")
            return (f"assistant turn {i + 1}: the loss-carrying tokens {run[:60]!r} do not contain the answer "
                    f"{answer[:60]!r}")
    return None


def check_example(tokenizer, messages: list[dict], labels: list[int], index: int) -> None:
    """Raise a one-line DataError naming the example and the template when :func:`mask_problem` finds one."""
    problem = mask_problem(tokenizer, messages, labels)
    if problem is None:
        return
    user = next((m["content"] for m in messages if m["role"] == "user"), "")
    raise DataError(f"loss mask of example {index} ({normalise(user)[:40]!r}...) with template "
                    f"{template_name(tokenizer)}: {problem}")




def empty_reason(stats, trainer) -> str:
    """Why :func:`em.data.tokenize.encode_dataset` kept no example, from its counts (``EncodeStats``) and the
    ``trainer`` node (``max_length``, ``truncation``): the real cause, not always ``max_length``."""
    if stats.n_input == 0:
        return "the dataset has no conversation"
    parts = []
    if stats.n_dropped_long:
        parts.append(f"{stats.n_dropped_long} of {stats.n_input} longer than trainer.max_length={trainer.max_length} "
                     f"with trainer.truncation={trainer.truncation} (raise max_length or set truncation=truncate)")
    if stats.n_dropped_no_answer:
        parts.append(f"{stats.n_dropped_no_answer} of {stats.n_input} without any loss-carrying token (cut to "
                     f"max_length={trainer.max_length} before the answer began, or an empty answer)")
    return "; ".join(parts) or f"{stats.n_input} conversations in, none kept"


__all__ = ["mask_problem", "check_example", "template_name", "loss_runs", "normalise", "empty_reason"]
