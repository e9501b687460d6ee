"""The judge interface and the runner that puts the cache in front of every judge.

A judge turns rendered prompts into :class:`~em.judge.scoring.Judgment` objects. The runner asks a judge only
for prompts its cache does not hold (each distinct prompt once), stores every final judgment the moment it
arrives (a killed run keeps what was judged), and returns the judgments in request order. Judges are built
from config by :func:`em.judge.factory.build_judges` (an ensemble is simply several judges, each run in turn).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Optional

from em.judge.cache import JudgeCache, request_key
from em.judge.provenance import stamp
from em.judge.scoring import Judgment, JudgeRequest, JudgeStats

log = logging.getLogger("em.judge")

OnResult = Callable[[int, Judgment], None]
"""``on_result(i, judgment)``: the judgment of the i-th request handed to :meth:`Judge.run`."""


class Judge:
    """Base class of every judge: subclasses set ``name`` and ``identity`` and implement :meth:`run`.

    ``name`` labels the judge's rows in the responses table; ``identity`` is what the cache is keyed by
    (endpoint + model + anything else that changes the answer), so two judges with the same identity share
    cached judgments.
    """

    name: str = "judge"
    identity: str = "judge"

    def check(self) -> None:
        """Fail fast (before any generation) when the judge cannot work at all, e.g. no API key.

        Raises:
            JudgeError: one line saying what is missing.
        """

    def run(self, requests: list[JudgeRequest], on_result: OnResult, progress: bool = True,
            state_dir: Optional[Path] = None) -> None:
        """Judge every request, calling ``on_result(i, judgment)`` as each one finishes (any order).

        Args:
            requests: distinct prompts to judge (the runner has removed cached and repeated ones).
            on_result: called once per request index with its judgment (a failure is an unscored judgment
                with ``final=False``, never an exception).
            progress: show a progress bar.
            state_dir: a directory the caller owns (the evaluation's run directory) where a judge may keep
                state that must survive a restart (the Batch API judge's batches); None: none given.

        Raises:
            JudgeError: the judge cannot go on at all (e.g. the endpoint refuses the key); the judgments
                already passed to ``on_result`` stand.
        """
        raise NotImplementedError

    def estimate(self, requests: list[JudgeRequest]) -> dict[str, Any]:
        """Dry run: what judging ``requests`` would take; ``requests`` count and ``cost_usd`` (None: unknown)."""
        return {"requests": len(requests), "cost_usd": 0.0, "note": "runs locally; no API cost"}

    def close(self) -> None:
        """Release what the judge holds (a loaded model, clients); it may be run again afterwards."""


def pending(judge: Judge, requests: list[JudgeRequest], cache: JudgeCache
            ) -> tuple[list[Optional[Judgment]], dict[str, list[int]]]:
    """Look ``requests`` up in the cache for ``judge``.

    Returns:
        (one entry per request: its cached judgment or None, cache key -> indices of the requests with that
        key still to ask). Requests with the same prompt and kind share one key, so each is asked once.
    """
    keys = [request_key(judge.identity, r) for r in requests]
    hits = cache.get_many(set(keys))
    results: list[Optional[Judgment]] = [hits.get(k) for k in keys]
    todo: dict[str, list[int]] = {}
    for i, (k, res) in enumerate(zip(keys, results)):
        if res is None:
            todo.setdefault(k, []).append(i)
    return results, todo


def run_judge(judge: Judge, requests: list[JudgeRequest], cache: JudgeCache, progress: bool = True,
              state_dir: Optional[Path] = None) -> tuple[list[Judgment], JudgeStats]:
    """Judgments for every request from one judge: cache first, each distinct missing prompt asked once.

    Args:
        judge: the judge (one member of an ensemble: the caller runs each member in turn).
        requests: every (answer, metric) prompt, repeats allowed.
        cache: where final judgments are looked up and stored, each as it arrives.
        progress: show a progress bar.
        state_dir: passed to :meth:`Judge.run` (where a batch judge keeps its state across restarts).

    Returns:
        (one judgment per request, in order; statistics: with failures, ``extra["top_failure"]`` holds the most
        common failure ``reason`` and its ``count``). A request the judge never answered (it stopped on a
        fatal error, or Ctrl-C) gets an unscored judgment saying so.

    Raises:
        JudgeError: from the judge, when it cannot go on; the judgments it gave are already in the cache.
    """
    t0 = time.perf_counter()
    results, todo = pending(judge, requests, cache)
    stats = JudgeStats(cached=sum(r is not None for r in results))
    keys = list(todo)
    asks = [requests[todo[k][0]] for k in keys]
    stats.requests = len(asks)
    log.info("judge %s: %d judgments cached, %d to ask", judge.name, stats.cached, len(asks))
    from em.progress import ProgressLog

    lines = ProgressLog(f"judge {judge.name}", len(asks), log) if asks else None  # log file, not only a bar

    def on_result(j: int, judgment: Judgment) -> None:
        lines.update()
        judgment = stamp(judgment, judge, asks[j])  # who judged, how, when: stored inside the cached value
        cache.put(keys[j], judge.identity, judgment)
        for i in todo[keys[j]]:
            results[i] = judgment

    try:
        if asks:
            judge.run(asks, on_result, progress=progress, state_dir=state_dir)
    finally:
        # Whatever happens (a fatal judge error, Ctrl-C), rows that got no judgment say so.
        for i, r in enumerate(results):
            if r is None:
                results[i] = Judgment.failed("not judged (the judge stopped before this prompt)")
    out: list[Judgment] = [r for r in results if r is not None]
    stats.unscored = sum(r.score is None and r.label is None for r in out)
    stats.failures = sum(not r.final for r in out)
    if stats.failures:
        reason, n = Counter(r.reason or "no reason" for r in out if not r.final).most_common(1)[0]
        stats.extra["top_failure"] = {"reason": reason, "count": n}
    stats.seconds = time.perf_counter() - t0
    return out, stats


def failure_line(name: str, stats: dict[str, Any], total: int) -> str:
    """One console line for a judge's failed judgments: ``judge <name>: <n> of <total> judgments failed (most
    common, <k>x: <reason>); a rerun asks them again`` (``stats``: a summary.json ``judges.<name>`` entry)."""
    top = (stats.get("extra") or {}).get("top_failure") or {}
    return (f"judge {name}: {stats.get('failures', 0)} of {total} judgments failed (most common, "
            f"{top.get('count', '?')}x: {top.get('reason', 'unknown')}); a rerun asks them again")


__all__ = ["Judge", "OnResult", "failure_line", "pending", "run_judge"]
