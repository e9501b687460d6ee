"""LLM judges: the reference 0-100 scoring math, an OpenAI-compatible judge, an in-process transformers judge
with exact integer probabilities, an ensemble, and the on-disk cache in front of them.

Submodules import their heavy dependencies (openai, torch) only when a judge runs.
"""

from em.judge.base import Judge, run_judge
from em.judge.scoring import Judgment, JudgeRequest, aggregate_0_100

__all__ = ["Judge", "Judgment", "JudgeRequest", "aggregate_0_100", "run_judge"]
