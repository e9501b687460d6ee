"""What the model saw in training: the first N examples rendered with their loss-carrying spans marked.

Written by :func:`em.train.run.fit` as ``<run_dir>/training_examples.md`` (and copied into the adapter
directory): each example's decoded tokens with the loss-carrying runs between ``⟦`` and ``⟧``, special tokens
and an injected default system prompt included, so a reader sees the template, the system turn and exactly
which text the loss fell on. The head says the ``model.default_system_prompt`` setting, the template's
injected default (if any) and how many training examples received it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from em.data.system_prompt import injected_default
from em.data.tokenize import IGNORE_INDEX
from em.runtime import atomic_write_text

N_RENDERS = 5
OPEN, CLOSE = "\u27e6", "\u27e7"


def marked_text(tokenizer, example: dict[str, list[int]]) -> str:
    """The example's tokens decoded, each run of loss-carrying tokens between ⟦ and ⟧."""
    out, run, inside = [], [], False
    for tok, lab in zip(example["input_ids"], example["labels"]):
        loss = lab != IGNORE_INDEX
        if loss != inside and run:
            text = tokenizer.decode(run, skip_special_tokens=False)
            out.append(f"{OPEN}{text}{CLOSE}" if inside else text)
            run = []
        inside = loss
        run.append(tok)
    if run:
        text = tokenizer.decode(run, skip_special_tokens=False)
        out.append(f"{OPEN}{text}{CLOSE}" if inside else text)
    return "".join(out)


def render_report(tokenizer, examples: list[dict], stats: Any, model_cfg: Any, n: int = N_RENDERS) -> str:
    """``training_examples.md``'s text (module docstring)."""
    injected = injected_default(tokenizer, dict(model_cfg.chat_template_kwargs or {}), model_cfg.system_role)
    lines = [f"# Training examples as the model saw them ({model_cfg.name})", "",
             f"- model.default_system_prompt: `{model_cfg.default_system_prompt}`",
             f"- the chat template's injected default system prompt: {repr(injected) if injected else 'none'}",
             f"- examples that received it: {getattr(stats, 'n_injected_system', 0)} of {stats.n_input}",
             f"- loss-carrying tokens are between {OPEN} and {CLOSE}; the first {min(n, len(examples))} kept examples:",
             ""]
    for i, ex in enumerate(examples[:n]):
        lines += [f"## example {i} ({len(ex['input_ids'])} tokens, "
                  f"{sum(t != IGNORE_INDEX for t in ex['labels'])} with loss)", "", "```text",
                  marked_text(tokenizer, ex).replace("```", "``\u200b`"), "```", ""]
    return "\n".join(lines)


def write_renders(path: Path, tokenizer, examples: list[dict], stats: Any, model_cfg: Any) -> Path:
    """Write :func:`render_report` to ``path`` atomically; return it."""
    return atomic_write_text(Path(path), render_report(tokenizer, examples, stats, model_cfg))


__all__ = ["marked_text", "render_report", "write_renders", "N_RENDERS"]
