"""The judges behind an analysis, by name: who judged (from the inputs table and the answers' score-mode
column) and the label every report, figure footer, console line and model card carries; a renormalised judge
makes the numbers a pipeline check, not a measurement. Kept apart from :mod:`em.analysis.judge_report` (which
writes the report's judge section with :mod:`em.analysis.report`'s helpers) so that the figures and the report
can both name the judge without an import circle."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

import pandas as pd


# ------------------------------------------------------- the judge's name and label (renormalised: a pipeline check)
RENORMALIZED = "renormalized"
PIPELINE_CHECK = "pipeline check, not a measurement"
MODE_COLUMNS = ("judge_score_mode", "score_mode")


@dataclass
class JudgeInfo:
    """The judges behind an analysis.

    Attributes:
        names: judge names in the inputs (sorted); empty when no input records its judge.
        renormalized: the names scored with ``score_mode: renormalized``.
        combine: how several judges were combined (``mean`` or a judge's name).
    """

    names: list[str] = field(default_factory=list)
    renormalized: list[str] = field(default_factory=list)
    combine: str = "mean"

    @property
    def pipeline_check(self) -> bool:
        """Is any judge used a renormalised one (then the numbers check the pipeline, they measure nothing)?"""
        used = self.names if self.combine == "mean" else [self.combine]
        return any(n in self.renormalized for n in used)

    def label(self) -> str:
        """``judge: <model id>``, ``judges: a, b (mean of their scores)``, with ``(renormalised scores:
        pipeline check, not a measurement)`` where it applies; ``judge: not recorded in the inputs`` else."""
        if not self.names:
            return "judge: not recorded in the inputs"
        if len(self.names) == 1:
            text = f"judge: {self.names[0]}"
        else:
            how = "mean of their scores" if self.combine == "mean" else f"judge {self.combine} used"
            text = f"judges: {', '.join(self.names)} ({how})"
        if self.pipeline_check:
            text += f" (renormalised scores: {PIPELINE_CHECK})"
        return text


def _modes_beside(paths: Iterable) -> dict[str, str]:
    modes: dict[str, str] = {}
    for p in paths:
        f = Path(p).parent / "summary.json"
        try:
            judges = json.loads(f.read_text()).get("judges") or {}
        except (OSError, ValueError, AttributeError):
            continue
        for name, j in judges.items():
            if isinstance(j, dict) and j.get("score_mode"):
                modes[str(name)] = str(j["score_mode"])
    return modes


def judge_info(sources: pd.DataFrame, answers: Optional[pd.DataFrame] = None, combine: str = "mean") -> JudgeInfo:
    """The judges of an analysis from its inputs table (``path``, ``judges``) and, when given, the answers'
    score-mode column (:data:`MODE_COLUMNS`)."""
    names: set[str] = set()
    if "judges" in sources:
        for v in sources["judges"].fillna("").astype(str):
            names |= {n.strip() for n in v.split(",") if n.strip()}
    modes = _modes_beside(sources["path"]) if "path" in sources else {}
    renorm = {n for n, m in modes.items() if m == RENORMALIZED}
    if answers is not None:
        for col in MODE_COLUMNS:
            if col in answers and (answers[col].astype(str) == RENORMALIZED).any():
                renorm |= set(names) if "judge" not in answers else set(
                    answers.loc[answers[col].astype(str) == RENORMALIZED, "judge"].astype(str))
    return JudgeInfo(names=sorted(names), renormalized=sorted(renorm & names if names else renorm), combine=combine)


def card_judge_line(summary: dict) -> Optional[str]:
    """The model card's judge line from an evaluation ``summary.json`` (``judges``: name -> identity, score_mode)."""
    judges = summary.get("judges") or {}
    if not isinstance(judges, dict) or not judges:
        return None
    parts = []
    for name, j in sorted(judges.items()):
        j = j if isinstance(j, dict) else {}
        text = f"`{name}`" + (f" ({j['identity']})" if j.get("identity") and j["identity"] != name else "")
        if j.get("score_mode") == RENORMALIZED:
            text += f" — renormalised scores: {PIPELINE_CHECK}"
        parts.append(text)
    return "judge: " + "; ".join(parts)
