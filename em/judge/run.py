"""The judge stage: judge prompts rendered from an answer's templates, and every judge run over them.

:func:`judge_requests` renders each (answer, metric) into a :class:`~em.judge.scoring.JudgeRequest`
(:func:`render_judge_prompt`, Betley et al.'s ``str.format``); :func:`judge_all` runs every judge over them in
turn, cache first (:class:`~em.judge.cache.JudgeCache`); a batch judge keeps its batches under ``state_dir``, so
a restarted run re-attaches to them. Used by :mod:`em.evaluate.run` and :mod:`em.evaluate.rejudge`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Optional

from em.errors import JudgeError
from em.judge.base import run_judge
from em.judge.cache import JudgeCache
from em.judge.scoring import JudgeRequest


def render_judge_prompt(template: str, question: str, answer: str) -> str:
    """A judge prompt: ``template`` with ``{question}`` and ``{answer}`` filled in (Betley et al.'s str.format;
    a template with other braces gets the two fields substituted literally)."""
    try:
        return template.format(question=question, answer=answer)  # the reference's str.format
    except (KeyError, IndexError, ValueError):  # a template with other braces: substitute the two fields only
        return template.replace("{question}", question).replace("{answer}", answer)


def judge_requests(records: list[dict[str, Any]], samples: dict[tuple, Any]):
    """(record index, metric, JudgeRequest) for every answer and every metric of its question."""
    out = []
    for i, rec in enumerate(records):
        s = samples[tuple(rec["_key"])]
        for metric, template in s.judge_prompts:
            out.append((i, metric, JudgeRequest(render_judge_prompt(template, s.question, rec["answer"]), s.kind,
                                                template_sha=template_sha(template))))
    return out


def template_sha(template: str) -> str:
    """The first 12 hex digits of the sha256 of a judge prompt template (provenance)."""
    return hashlib.sha256(template.encode()).hexdigest()[:12]


def judge_all(judges: list, requests: list[JudgeRequest], judge_cache: str | Path, progress: Any,
              state_dir: Path) -> tuple[dict[str, list], dict[str, dict[str, Any]], Optional[JudgeError]]:
    """Run every judge over ``requests`` in turn, cache first; each judge is closed after its turn.

    Returns ``(judgments, stats, error)``: per judge name its results (one per request, in order) and its
    counts (with ``identity`` and ``score_mode``); ``error`` is the :class:`~em.errors.JudgeError` that stopped
    the loop (a judge that cannot run), else None. The judges that finished before it keep their results, so the
    caller writes every finished row before raising it.
    """
    judgments: dict[str, list] = {}
    stats_by_judge: dict[str, dict[str, Any]] = {}
    if not judges:
        return judgments, stats_by_judge, None
    cache = JudgeCache(judge_cache)
    try:
        for j in judges:
            try:
                results, stats = run_judge(j, requests, cache, progress=progress, state_dir=state_dir)
            except JudgeError as e:
                return judgments, stats_by_judge, e
            finally:
                j.close()
            judgments[j.name] = results
            stats_by_judge[j.name] = stats.__dict__ | {"identity": j.identity,
                                                       "score_mode": getattr(j, "score_mode", "reference")}
    finally:
        cache.close()
    return judgments, stats_by_judge, None
