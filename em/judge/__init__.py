"""LLM judges: the reference 0-100 scoring math, an OpenAI-compatible judge (synchronous or through the Batch
API), an in-process transformers judge with exact integer probabilities, ensembles as lists of judges, and the
on-disk cache in front of them. Build judges from config with :func:`em.judge.factory.build_judges`.

Submodules import their heavy dependencies (openai, torch) only when a judge runs.
"""

from em.judge.base import Judge, run_judge
from em.judge.factory import build_judges
from em.judge.scoring import Judgment, JudgeRequest, aggregate_0_100

__all__ = ["Judge", "Judgment", "JudgeRequest", "aggregate_0_100", "build_judges", "run_judge"]
