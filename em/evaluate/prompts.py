"""The exact text each answer's model received (chat template applied, special tokens included), stored once
per distinct prompt.

``<run>/prompts.parquet``: one row per rendered prompt (``prompt_sha``: the first 16 hex digits of its
sha256, :func:`em.evaluate.generation.prompt_sha`; ``prompt``; ``n_answers``). The responses table gets
``prompt_sha``, the joined ``prompt`` text and ``default_system_prompt`` (``model.default_system_prompt``)
on every row, so the viewer (``em view``) and W&B's table show what the model saw beside its answer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from em.data.system_prompt import injected_default
from em.runtime import atomic_write

PROMPT_COLUMNS = ["prompt_sha", "prompt", "default_system_prompt"]


def prompts_table(records: list[dict], rendered: dict[str, str]):
    """One row per distinct ``prompt_sha`` among ``records`` with its text (None when this run no longer renders
    that prompt) and the number of answers it produced."""
    import pandas as pd

    counts: dict[str, int] = {}
    for r in records:
        sha = r.get("prompt_sha")
        if sha:
            counts[sha] = counts.get(sha, 0) + 1
    return pd.DataFrame({"prompt_sha": list(counts), "prompt": [rendered.get(s) for s in counts],
                         "n_answers": list(counts.values())})


def join_prompts(table, records: list[dict], rendered: dict[str, str], mode: str):
    """``table`` (:func:`em.evaluate.report.build_table`: records in order, repeated once per judge) with
    :data:`PROMPT_COLUMNS` added."""
    n = len(records)
    shas = [r.get("prompt_sha") for r in records]
    if n and len(table) % n == 0:
        reps = len(table) // n
        table["prompt_sha"] = shas * reps
    else:  # not expected: keep the columns, say nothing wrong
        table["prompt_sha"] = None
    table["prompt"] = table["prompt_sha"].map(lambda s: rendered.get(s) if s else None)
    table["default_system_prompt"] = mode
    return table


def write_prompts(run_dir: Path, records: list[dict], rendered: dict[str, str]) -> Path:
    """Write ``<run_dir>/prompts.parquet`` atomically; return its path."""
    path = Path(run_dir) / "prompts.parquet"
    df = prompts_table(records, rendered)
    atomic_write(path, lambda p: df.to_parquet(p, index=False))
    return path


def meta(tokenizer, model_cfg: Any) -> dict[str, Any]:
    """summary.json's record of the system-prompt setting: the mode and the template's injected default."""
    return {"default_system_prompt": model_cfg.default_system_prompt,
            "template_default_system_prompt": injected_default(tokenizer, dict(model_cfg.chat_template_kwargs or {}),
                                                               model_cfg.system_role)}


__all__ = ["PROMPT_COLUMNS", "prompts_table", "join_prompts", "write_prompts", "meta"]
