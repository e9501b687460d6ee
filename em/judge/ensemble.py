"""Several independent judges side by side (the seeds' replacement for the single GPT-4o judge).

An ensemble is not a judge of its own: it is the LIST of its member judges. Each member keeps its own identity,
cache entries and scores; the evaluation runs each in turn, the responses table has one row per answer and
member judge (``judge`` column), and summary.json reports each member and their per-answer mean.
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence, Union

from em.judge.base import Judge

Member = Union[Judge, Sequence[Judge], None]


def ensemble(judges: Union[Mapping[str, Member], Sequence[Member]]) -> list[Judge]:
    """The member judges of ``judge=ensemble``, as a flat list in config order (``_target_`` of its config).

    Args:
        judges: key -> judge (conf/judge/ensemble.yaml's ``judges``), or a sequence of judges. A member that is
            None (``judge.judges.<key>=null``) is dropped; a member that is itself a list (a nested ensemble)
            is flattened.

    Member count and distinct names are checked by :class:`em.config.judge.EnsembleSchema`.
    """
    members = list(judges.values()) if isinstance(judges, Mapping) else list(judges)
    out: list[Judge] = []
    for m in members:
        out += _flat(m)
    return out


def _flat(member: Optional[Member]) -> list[Judge]:
    if member is None:
        return []
    if isinstance(member, Judge):
        return [member]
    return [j for m in member for j in _flat(m)]


__all__ = ["ensemble"]
