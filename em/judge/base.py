"""The judge interface and the runner that puts the cache in front of every judge.

A judge turns rendered prompts into :class:`~em.judge.scoring.Judgment` objects. The runner asks each
member judge only for prompts its cache does not hold (each distinct prompt once), stores every final
judgment the moment it arrives (a killed run keeps what was judged), and returns the judgments in request
order. Judges are built from config by Hydra ``instantiate`` (``_target_`` in conf/judge/*.yaml).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Optional

from em.judge.cache import JudgeCache, cache_key
from em.judge.scoring import Judgment, JudgeRequest, JudgeStats

log = logging.getLogger("em.judge")

OnResult = Callable[[int, Judgment], None]


class Judge:
    """Base class: subclasses set ``name`` and ``identity`` and implement ``run``."""

    name: str = "judge"
    identity: str = "judge"  # what the cache is keyed by: endpoint + model (+ method version)
    run_dir: Optional[Any] = None  # the evaluation's run directory (set by the runner; batch judges keep state there)

    @property
    def members(self) -> list["Judge"]:
        return [self]

    def check(self) -> None:
        """Fail fast (before any generation) when the judge cannot work at all, e.g. no API key."""

    def run(self, requests: list[JudgeRequest], on_result: OnResult, progress: bool = True) -> None:
        """Judge every request; call on_result(i, judgment) as each one finishes."""
        raise NotImplementedError

    def estimate(self, requests: list[JudgeRequest]) -> dict[str, Any]:
        """Dry run: request count and, where the judge has a price, an estimated cost."""
        return {"requests": len(requests), "cost_usd": 0.0,
                "note": "runs locally; no API cost"}

    def close(self) -> None:
        pass


def pending(judge: Judge, requests: list[JudgeRequest], cache: JudgeCache) -> tuple[list[Optional[Judgment]], dict[str, list[int]]]:
    """(results with cache hits filled in, prompt key -> request indices still to ask)."""
    keys = [cache_key(judge.identity, r.prompt + "\x00" + r.kind) for r in requests]
    hits = cache.get_many(set(keys))
    results: list[Optional[Judgment]] = [hits.get(k) for k in keys]
    todo: dict[str, list[int]] = {}
    for i, (k, res) in enumerate(zip(keys, results)):
        if res is None:
            todo.setdefault(k, []).append(i)
    return results, todo


def run_judge(judge: Judge, requests: list[JudgeRequest], cache: JudgeCache, progress: bool = True
              ) -> tuple[list[Judgment], JudgeStats]:
    """Judgments for every request (cache first; each distinct missing prompt asked once)."""
    t0 = time.perf_counter()
    results, todo = pending(judge, requests, cache)
    stats = JudgeStats(cached=sum(r is not None for r in results))
    keys = list(todo)
    asks = [requests[todo[k][0]] for k in keys]
    stats.requests = len(asks)
    log.info("judge %s: %d judgments cached, %d to ask", judge.name, stats.cached, len(asks))

    def on_result(j: int, judgment: Judgment) -> None:
        cache.put(keys[j], judge.identity, judgment)
        for i in todo[keys[j]]:
            results[i] = judgment

    try:
        if asks:
            judge.run(asks, on_result, progress=progress)
    finally:
        # Whatever happens (a fatal judge error, Ctrl-C), rows that got no judgment say so.
        for i, r in enumerate(results):
            if r is None:
                results[i] = Judgment.failed("not judged (the judge stopped before this prompt)")
    stats.unscored = sum(r.score is None and r.label is None for r in results)
    stats.failures = sum(not r.final for r in results)
    stats.seconds = time.perf_counter() - t0
    return results, stats  # type: ignore[return-value]
