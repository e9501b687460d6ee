"""A standalone evaluation's record and honest stops (``python evaluate.py``, ``em evaluate``, ``em judge``).

train.py's jobs have ``em_job.json`` and :mod:`em.train.stopping`; an evaluation run on its own gets the same:

* ``<run_dir>/em_job.json`` -- written once the run is accepted (every check passed, the answers on disk
  are of this identity), with ``state`` (running / done / failed / interrupted), ``stage`` (``sampling``,
  ``judging``, ``report``: the table, summary and W&B), the counts done of that stage (``answers`` of
  ``answers_planned``; ``judgments`` of ``judgments_planned``: in the judge cache, every judge of an ensemble
  counted), ``command`` (evaluate / judge), host, pid, ``started`` / ``ended`` (unix s) and, when stopped,
  ``signal`` and ``exit_code`` -- the fields of train.py's record.
* SIGTERM / SIGINT (:func:`em.train.stopping.handle_signals`, the one mechanism): the stage stops at once
  (finished answers are in ``answers.jsonl``, finished judgments in the judge cache), the directory lock is
  released, the record says ``interrupted``, one stderr line says how to resume (the same command, the run
  directory pinned) and the process exits 128 + signal (143 / 130).

Inside train.py's pipeline (no :func:`standalone` around it) :func:`stage` does nothing: the job's own
``em_job.json`` says ``evaluate:<target>``.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Union

from em.errors import EMError
from em.judge.cache import JudgeCache, request_key
from em.runtime import atomic_write_json, in_multirun
from em.train import stopping

JOB_FILE = "em_job.json"  # the name of train.py's record (em.jobs.records.JOB_FILE)

Count = Union[int, Callable[[], int]]  # a count, or how to count it when the record is written


class EvalRecord:
    """The record of one standalone evaluation; the run directory is known once :func:`stage` is first called."""

    def __init__(self, command: str):
        self.command = command
        self.run_dir: Optional[Path] = None
        self.stage: Optional[str] = None
        self.counts: dict[str, Count] = {}
        self.base = {"command": command, "host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}

    def counted(self) -> dict[str, Optional[int]]:
        """The stage's counts now (a callable is called; one that fails gives None)."""
        out: dict[str, Optional[int]] = {}
        for k, v in self.counts.items():
            try:
                out[k] = int(v() if callable(v) else v)
            except Exception:  # noqa: BLE001  a count must never cost the record
                out[k] = None
        return out

    def write(self, state: str, **fields: Any) -> None:
        """``<run_dir>/em_job.json`` (atomic) with ``state``, the stage, its counts and ``fields``; nothing
        before the run is accepted."""
        if self.run_dir is None:
            return
        atomic_write_json(self.run_dir / JOB_FILE, self.base | {"run_dir": str(self.run_dir), "state": state,
                                                                 "stage": self.stage, **self.counted(), **fields})

    def progress(self) -> str:
        """`` after 5 of 32 answers`` (sampling) / `` after 40 of 64 judgments`` (judging), or ``""``."""
        c = self.counted()
        for what in ("judgments", "answers") if self.stage != "sampling" else ("answers",):
            if c.get(what) is not None and c.get(f"{what}_planned") is not None:
                return f" after {c[what]} of {c[f'{what}_planned']} {what}"
        return ""


_active: Optional[EvalRecord] = None


def stage(name: str, run_dir: Optional[Union[str, Path]] = None, **counts: Count) -> None:
    """The standalone evaluation enters stage ``name`` (``sampling`` / ``judging`` / ``report``) in ``run_dir``
    (given at the first call: the run is accepted) with its ``counts`` (ints or callables); the record is
    rewritten as ``running``. A no-op inside train.py's pipeline."""
    rec = _active
    if rec is None:
        return
    if run_dir is not None:
        rec.run_dir = Path(run_dir)
    rec.stage, rec.counts = name, dict(counts)
    rec.write("running")


def resume_command(run_dir: Optional[Path], multirun: bool) -> str:
    """``resume: <the same command>`` (:func:`em.train.stopping.resume_line`); a single run whose directory is not
    pinned on the command line (``run_dir=`` / ``hydra.run.dir=``) gets ``hydra.run.dir=<run_dir>``, so the
    answers on disk are found."""
    return stopping.resume_line(run_dir, multirun, pins=("run_dir", "hydra.run.dir"),
                                note="finished runs are read back from disk, the stopped one resumes")


@contextmanager
def standalone(command: str) -> Iterator[EvalRecord]:
    """Around one standalone evaluation: SIGTERM / SIGINT raise :class:`em.train.stopping.Interrupted`; the record
    says ``interrupted`` with the stage and its counts, one stderr line says how to resume, and the process
    exits 128 + signal (``SystemExit``)."""
    global _active
    rec = EvalRecord(command)
    _active = rec
    try:
        with stopping.handle_signals():
            yield rec
    except KeyboardInterrupt as e:
        signum = getattr(e, "signum", None) or int(signal.SIGINT)
        name, code = signal.Signals(signum).name, 128 + int(signum)
        try:
            rec.write("interrupted", signal=name, exit_code=code, ended=time.time())
        finally:

            where = f"{rec.run_dir} keeps what is done" if rec.run_dir else "nothing was written yet"
            print(f"interrupted ({name}) in {rec.stage or 'setup'}{rec.progress()}: {where}; "
                  f"{resume_command(rec.run_dir, in_multirun())}", file=sys.stderr, flush=True)
        sys.exit(code)
    finally:
        _active = None


def judged(cache_path: Optional[Union[str, Path]], judges: list, requests: list) -> Callable[[], int]:
    """How to count the judgments done: the ``requests`` (``JudgeRequest``) each of ``judges`` has a verified
    judgment for in the judge cache at ``cache_path`` (what a resume does not ask again; 0 without a cache)."""

    def count() -> int:

        cache = JudgeCache(cache_path)
        try:
            n = 0
            for j in judges:
                keys = [request_key(j.identity, r) for r in requests]
                hits = cache.get_many(set(keys))
                n += sum(k in hits for k in keys)
            return n
        finally:
            cache.close()

    return count


def recorded(fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``fn`` (:func:`em.evaluate.run.run_evaluation`) recording its end: ``done``; ``failed`` when judgments
    failed (a rerun asks them again) or with the first line of the exception it raised (then raised on)."""

    def run(cfg: Any) -> Any:
        try:
            res = fn(cfg)
        except Exception as e:
            rec = _active
            if rec is not None:
                line = str(e).splitlines()[0] if str(e) else type(e).__name__

                rec.write("failed", error=line if isinstance(e, EMError) else f"{type(e).__name__}: {line}",
                          ended=time.time())
            raise
        rec = _active
        failures = int(getattr(res, "failures", 0) or 0)
        if rec is not None and failures:
            rec.write("failed", error=f"{failures} judgments failed; a rerun asks them again",
                      judge_failures=failures, ended=time.time())
        elif rec is not None:
            rec.write("done", ended=time.time())
        return res

    return run


__all__ = ["EvalRecord", "judged", "recorded", "resume_command", "stage", "standalone"]
