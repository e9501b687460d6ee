"""The end of a multirun: which jobs ran in this launch, what became of them, and the sweep's exit status.

Records decide, never wall clocks: :func:`from_launch` matches a job's ``em_job.json`` to this launch by its
``launch`` id (``EM_SWEEP_LAUNCH``, set by :class:`em.jobs.sweep.SweepCallback`), else by whether it changed since
the plan was made. :func:`exit_status` is what ``train.py`` exits with after Hydra returned or raised (an
``atexit`` hook cannot set a status): 1 when a job failed, 128 + signal when one was interrupted.

Light on purpose (stdlib): imported by em.jobs.sweep on every multirun.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from em.jobs import records as jobs
from em.jobs.locks import holder


def from_launch(rec: Optional[dict], launch: Optional[str], before: Optional[dict]) -> bool:
    """Was this ``em_job.json`` written by a job of this launch? Records decide, never clocks: its ``launch``
    id when it has one; else (a launcher that did not pass the environment on) whether it changed since the
    plan was made (``before``: the record then; pid, start and state differ on every launch). With neither
    (a direct call), every record counts."""
    if rec is None:
        return False
    if launch is not None and rec.get("launch") is not None:
        return rec["launch"] == launch
    if before is not None:
        return rec != before
    return True


def summarize(sweep_dir: Path, job_dirs: list[Path], launch: Optional[str] = None,
              before: Optional[dict[Path, Optional[dict]]] = None) -> dict[str, Any]:
    """done / skipped / failed / interrupted of this launch, from the job directories' records
    (:func:`from_launch`: launch ids and record contents, no wall-clock comparison).

    A job whose judgments failed is failed (``judge_failures``: how many; ``judge_failed``: how many such jobs).
    An interrupted job (SIGTERM / SIGINT) is listed under ``interrupted`` with its stage, step and signal; the
    jobs such a stopped launch never started are ``not_started`` (not failed: the exit status is the signal's)."""
    out: dict[str, Any] = {"sweep_dir": str(sweep_dir), "done": [], "skipped": [], "failed": [], "interrupted": []}
    for d in job_dirs:
        rec = jobs.read_job(d)
        if not from_launch(rec, launch, None if before is None else before.get(Path(d))):
            held = holder(d)
            out["failed"].append({"job_dir": str(d), "error": "did not start (no em_job.json from this launch)"
                                  + (f"; its directory is locked by {held}" if held else "")})
            continue
        state = rec.get("state")
        if state in ("done", "skipped"):
            out[state].append({"job_dir": str(d), "models_loaded": rec.get("models_loaded"), "push": rec.get("push")})
        elif state == "interrupted":
            out["interrupted"].append({k: rec.get(k) for k in ("stage", "step", "signal", "exit_code")}
                                      | {"job_dir": str(d)})
        else:
            error = rec.get("error") or (f"ended while {state} in {rec.get('stage')} (killed? see the launcher's "
                                         f"log under {sweep_dir}/.submitit/)")
            entry = {"job_dir": str(d), "stage": rec.get("stage"), "error": error}
            if rec.get("judge_failures"):
                entry["judge_failures"] = rec["judge_failures"]
            out["failed"].append(entry)
    # a stopped launch (SIGTERM / SIGINT) never started the jobs after the interrupted one: not failed, not started
    out["not_started"] = [f for f in out["failed"] if out["interrupted"] and f["error"].startswith("did not start")
                          and "locked by" not in f["error"]]
    out["failed"] = [f for f in out["failed"] if f not in out["not_started"]]
    out["judge_failed"] = sum(bool(f.get("judge_failures")) for f in out["failed"])
    return out


def format_summary(s: dict[str, Any]) -> str:
    """The summary printed at the end of a multirun: a line of counts, one per failure or failed push, the analysis."""
    lines = [f"sweep {s['sweep_dir']}: {len(s['done'])} done, {len(s['skipped'])} skipped, {len(s['failed'])} failed"
             + (f", {len(s['interrupted'])} interrupted" if s.get("interrupted") else "")
             + (f", {len(s['not_started'])} not started" if s.get("not_started") else "")
             + (f" ({s['judge_failed']} with failed judgments: a relaunch asks them again)" if s.get("judge_failed") else "")]
    lines += [f"  INTERRUPTED {i['job_dir']}: {i.get('signal')} in {i.get('stage')}"
              + (f" at step {i['step']}" if i.get("step") is not None else "") + "; a relaunch resumes it"
              for i in s.get("interrupted", [])]
    lines += [f"  NOT STARTED {f['job_dir']}: the launch was interrupted before it; a relaunch runs it"
              for f in s.get("not_started", [])]
    lines += [f"  FAILED {f['job_dir']}: {f.get('stage') or ''}{': ' if f.get('stage') else ''}{f['error']}" for f in s["failed"]]
    lines += [f"  PUSH FAILED {j['job_dir']}: {j['push'].get('error')}" for j in s["done"] + s["skipped"]
              if (j.get("push") or {}).get("state") == "failed"]  # the job's results stand; a relaunch retries
    lines += [f"  analysis: {s['analysis']}"] if s.get("analysis") else []
    return "\n".join(lines)


CALLBACKS: list[Any] = []  # the em.jobs.sweep.SweepCallback objects of this process (one per multirun)


def summary_exit_status(summary: Optional[dict]) -> int:
    """A sweep's exit status from its summary: 1 when a job failed, else 128 + signal when one was
    interrupted (130 / 143), else 0."""
    if not summary:
        return 0
    if summary.get("failed"):
        return 1
    for i in summary.get("interrupted") or []:
        return int(i.get("exit_code") or 130)
    return 0


def exit_status(code: Any) -> Any:
    """The exit status of ``python train.py [-m]`` whose Hydra app ended with ``code`` (``SystemExit.code``):
    a multirun not summarised yet (its end hook did not run: a launcher raised, a job exited) is summarised
    now; a zero ``code`` becomes the summary's status (:func:`summary_exit_status`)."""
    status = 0
    for cb in CALLBACKS:
        if not cb.reported and cb.plan is not None and cb._config is not None:
            cb._report(cb._config)
        status = status or summary_exit_status(cb.summary)
    if code in (0, None):
        return status
    return code


__all__ = ["exit_status", "format_summary", "from_launch", "summarize", "summary_exit_status"]
