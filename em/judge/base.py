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
from em.progress import ProgressLog

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
    # True: :meth:`run` takes ``claims=`` (a :class:`Claims`) and calls ``claims.claim(i)`` just before it
    # sends request i; False: the runner claims a whole batch of requests before :meth:`run` is called.
    claims_each_request: bool = False

    def check(self) -> None:
        """Fail fast (before any generation) when the judge cannot work at all, e.g. no API key.

        Raises:
            JudgeError: one line saying what is missing.
        """

    def check_reachable(self) -> None:
        """Fail fast (before any answer is sampled) when the judge's server does not answer; a no-op for
        judges without one.

        Raises:
            JudgeError: one line naming the endpoint.
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


class Claims:
    """Per-request claims on a cache shared by several processes (:meth:`em.judge.cache.JudgeCache.claim`).

    A judge that sends one request at a time calls :meth:`claim` just before request ``i``: ``"ask"`` (this
    process holds the key now: send it), ``"wait"`` (another live process is asking it: sleep :meth:`wait_s` and
    call again, without holding a concurrency slot) or ``"done"`` (another process stored its judgment
    meanwhile: it has been delivered, send nothing); and :meth:`release` when it gives up on ``i`` unanswered.
    """

    poll_s = 0.2  # seconds before the first look again at a key another process is asking
    max_poll_s = 5.0  # the wait grows by half each time up to this

    def wait_s(self, waits: int) -> float:
        """Seconds to wait before looking again at a key found busy ``waits`` times in a row (``waits`` >= 1)."""
        return min(self.poll_s * 1.5 ** (waits - 1), self.max_poll_s)

    def __init__(self, cache: JudgeCache, keys: list[str], deliver: Callable[[int, Judgment], None]):
        self.cache = cache
        self.keys = keys
        self.deliver = deliver  # (i, judgment another process stored)

    def claim(self, i: int) -> str:
        """``"ask"``, ``"wait"`` or ``"done"`` for request ``i`` (see the class docstring)."""
        status, judgment = self.cache.claim(self.keys[i])
        if status == "cached":
            self.deliver(i, judgment)
            return "done"
        return "ask" if status == "mine" else "wait"

    def release(self, i: int) -> None:
        """Give up this process's claim on request ``i`` (never answered: cancelled, or the run stopped)."""
        self.cache.release(self.keys[i])


def _run_claimed(judge: Judge, asks: list[JudgeRequest], claims: Claims, on_result: OnResult, progress: bool,
                 state_dir: Optional[Path]) -> None:
    """Run a judge that does not claim per request: claim every key it may ask, run it on those, release what
    it did not answer; wait for (or take over) the keys other processes hold, and repeat until none is left."""
    remaining = list(range(len(asks)))
    waits = 0
    while remaining:
        mine: list[int] = []
        waiting: list[int] = []
        for i in remaining:
            status = claims.claim(i)
            if status == "ask":
                mine.append(i)
            elif status == "wait":
                waiting.append(i)
        if mine:
            answered: set[int] = set()

            def got(n: int, judgment: Judgment, mine: list[int] = mine) -> None:
                answered.add(mine[n])
                on_result(mine[n], judgment)

            try:
                judge.run([asks[i] for i in mine], got, progress=progress, state_dir=state_dir)
            finally:
                for i in mine:
                    if i not in answered:
                        claims.release(i)
        elif waiting:
            waits += 1
            time.sleep(claims.wait_s(waits))
        remaining = waiting


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

    lines = ProgressLog(f"judge {judge.name}", len(asks), log) if asks else None  # log file, not only a bar
    from_others = 0

    def on_result(j: int, judgment: Judgment) -> None:
        lines.update()
        judgment = stamp(judgment, judge, asks[j])  # who judged, how, when: stored inside the cached value
        cache.put(keys[j], judge.identity, judgment)  # also drops this process's claim on the key
        for i in todo[keys[j]]:
            results[i] = judgment

    def deliver(j: int, judgment: Judgment) -> None:  # another process sharing the cache judged it meanwhile
        nonlocal from_others
        from_others += 1
        lines.update()
        for i in todo[keys[j]]:
            results[i] = judgment

    claims = Claims(cache, keys, deliver)
    try:
        if asks and judge.claims_each_request:
            judge.run(asks, on_result, progress=progress, state_dir=state_dir, claims=claims)
        elif asks:
            _run_claimed(judge, asks, claims, on_result, progress, state_dir)
    finally:
        if from_others:
            stats.requests -= from_others
            stats.extra["from_another_process"] = from_others
            log.info("judge %s: %d judgments came from another process sharing the cache (not asked here)",
                     judge.name, from_others)
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


__all__ = ["Claims", "Judge", "OnResult", "failure_line", "pending", "run_judge"]
