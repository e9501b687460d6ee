"""Judges from config: ``build_judges(node) -> list[Judge]`` (empty for judge=none)."""

from __future__ import annotations

from typing import Any


def build_judges(node: Any) -> list:
    """The judges a ``judge`` config node describes (an ensemble: each member); [] for judge=none.

    Raises:
        ConfigError / JudgeError: one line, from the judge's own construction.
    """
    from em.evaluation.run import instantiate_judge

    judge = instantiate_judge(node)
    return list(judge.members) if judge is not None else []
