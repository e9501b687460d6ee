"""Several independent judges side by side (the seeds' replacement for the single GPT-4o judge).

Each member keeps its own identity, cache entries and scores; the responses table has one row per answer and
member judge (``judge`` column), and summary.json reports each member and their per-answer mean.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from em.errors import ConfigError
from em.judge.base import Judge


class EnsembleJudge(Judge):
    def __init__(self, judges: Mapping[str, Judge] | Sequence[Judge], name: str = "ensemble"):
        members = list(judges.values()) if isinstance(judges, Mapping) else list(judges)
        members = [j for j in members if j is not None]  # judge.judges.<name>=null drops a member
        if not members:
            raise ConfigError("judge.judges: an ensemble needs at least one judge")
        flat: list[Judge] = [m for j in members for m in j.members]
        names = [m.name for m in flat]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ConfigError(f"judge.judges: member names must differ; {dup[0]!r} appears twice (set .name)")
        self.name = name
        self._members = flat
        self.identity = "ensemble(" + ",".join(m.identity for m in flat) + ")"

    @property
    def members(self) -> list[Judge]:
        return list(self._members)

    def check(self) -> None:
        for m in self._members:
            m.check()

    def estimate(self, requests) -> dict[str, Any]:
        return {m.name: m.estimate(requests) for m in self._members}

    def run(self, requests, on_result, progress: bool = True) -> None:  # the runner calls members directly
        raise NotImplementedError("run each member (em.judge.base.run_judge)")
