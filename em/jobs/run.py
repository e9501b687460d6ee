"""One job = the whole pipeline: ``run_job(cfg)`` (what train.py calls) trains, evaluates and judges.

Train (unless data=base), then, with ``evaluate.enabled=true``, sample and judge answers into
``<job dir>/eval/`` (plus ``eval_epoch<e>/`` per adapter snapshot) by calling
:func:`em.evaluate.run.run_evaluation` with the job's ``evaluate`` node -- evaluate.py's own schema --
and write ``DONE.json`` keyed by the hash of the job's identity (:mod:`em.jobs`).

Relaunching: a job whose ``DONE.json`` hash matches is skipped before anything heavy is imported; an
interrupted one resumes (training from ``checkpoints/last.ckpt``, evaluation from the answers on disk,
judging from the judge cache). In a multirun a failing job records its error in ``em_job.json`` and
returns, so the launcher runs the others.

Light at import (no torch): training and evaluation are imported only when a job really runs them.
"""

from __future__ import annotations

import gc
import logging
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig

from em.adapters.card import add_eval_summary
from em.adapters.run import push_once
from em.capability.run import run_for_target
from em.config.common import validate
from em.config.evaluate import EvalConfig
from em.dynamics.figure import draw_quietly
from em.dynamics.step_eval import step_targets
from em.errors import EMError
from em.evaluate.report import eval_metrics
from em.evaluate.run import run_evaluation
from em.jobs import records as jobs
from em.jobs.locks import DirectoryLocked, DirLock
from em.jobs.targets import eval_config, eval_targets
from em.judge.factory import build_judges
from em.runtime import atomic_write_json, in_multirun, model_loads, read_json
from em.train.checkpoints import LAST, checkpoint_step
from em.train.lora_rank import check_lora_rank
from em.train.models import model_dir
from em.train.run import run_training
from em.train.stopping import resume_line

log = logging.getLogger("em.jobs.run")


@dataclass
class JobResult:
    """What :func:`run_job` did: ``state`` done / skipped / failed, and the job's final metrics.

    A job whose judgments failed (retryable) is ``failed`` (stage ``judge``): no DONE.json, so a relaunch
    asks them again; train.py exits 1 for it."""

    state: str
    job_dir: Path
    summary: dict[str, Any] = field(default_factory=dict)
    error: Optional[str] = None


def release_memory() -> None:
    """Free what a finished stage left: jobs run one after another in one process under some launchers."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_job(cfg: DictConfig, isolate_failures: Optional[bool] = None) -> JobResult:
    """Train -> evaluate -> judge for one composed train config (one grid point of a sweep).

    Args:
        cfg: the composed ``train`` config (``run_dir`` set).
        isolate_failures: record an error in ``em_job.json`` and return a failed result instead of
            raising, so one bad job does not stop a launcher's other jobs (default: in a multirun).

    Raises:
        ConfigError: a bad value, or a job directory holding a training run of another config (before
            anything is loaded); with ``isolate_failures`` false, any error of a stage.
        DirectoryLocked: another live process writes the job directory (with ``isolate_failures``: a
            failed result instead, and the other process' records are left alone).
    """
    isolate = in_multirun() if isolate_failures is None else isolate_failures
    loads0 = model_loads()  # (several jobs may share this process)
    # the job's one validation, before anything is loaded; only the typed config goes down from here. The
    # composed ``cfg`` stays in this entry: the job's identity hashes and config records are of it.
    tc = validate(cfg)
    job_dir = Path(tc.run_dir)
    full_hash, train_hash, ident = jobs.job_hashes(cfg)
    evals = [(t, eval_config(tc, t)) for t in (eval_targets(tc, job_dir) if tc.evaluate.enabled else [])]
    if evals and not evals[0][1].dry_run:  # the judges' checks (ranges, API key) too, before training

        for judge in build_judges(evals[0][1].judge):
            judge.check()
    if tc.data.source != "none" and not tc.trainer.init_adapter:  # lora.r vs the layers it adapts (em.train.lora_rank)

        check_lora_rank(tc.lora.r, tc.lora.target_modules or tc.model.lora_target_modules,
                        model_dir(tc.model, tc.cache_dir))
    jobs.check_job_dir(job_dir, train_hash, ident)
    lock = DirLock(job_dir, "job")
    try:  # one writer per job directory (a relaunch while the old job still runs is refused)
        lock.acquire()
    except DirectoryLocked as e:
        if not isolate:
            raise
        print(f"error: {e}", file=sys.stderr)
        return JobResult("failed", job_dir, error=str(e))
    try:
        jobs.write_config_records(job_dir, cfg)  # accepted: the records describe this job (Hydra writes none)
        return _run_locked(tc, job_dir, (full_hash, train_hash, ident), evals, isolate, loads0)
    finally:
        lock.release()


def _run_locked(tc: Any, job_dir: Path, hashes: tuple, evals: list, isolate: bool, loads0: int) -> JobResult:
    """:func:`run_job` once the job directory's lock is held: skip, or train -> evaluate -> judge."""
    full_hash, train_hash, ident = hashes
    record = jobs.JobRecord(job_dir, full_hash, train_hash, ident, loads_before=loads0)
    done = jobs.read_done(job_dir)
    if done and jobs.judge_failures(job_dir):  # an older version's DONE.json over failed judgments
        done = None
        jobs.clear_done(job_dir)
    if tc.sweep.skip_done and done and done.get("hash") == full_hash:
        print(f"{job_dir}: done already (config hash {full_hash}); skipped")
        record.end("skipped", models_loaded=model_loads(), **_push(tc, job_dir))  # a failed push is retried
        return JobResult("skipped", job_dir, done.get("summary", {}))
    if done:  # an older result of another config: it no longer describes this directory
        jobs.clear_done(job_dir)

    stage = "train"
    record.write("running", stage=stage)
    try:
        summary: dict[str, Any] = {}
        trained = _train(tc, job_dir, train_hash, summary)
        if not trained:  # DDP / FSDP: rank 0 writes, evaluates and judges
            return JobResult("done", job_dir)
        for t, ec in evals:
            stage = f"evaluate:{t.label}"
            record.write("running", stage=stage)
            summary.update(_evaluate(ec, prefix="" if t.label == "final" else f"{t.label}/"))
        if tc.evaluate.enabled and tc.trainer.snapshot_every_n_steps:  # the step snapshots' cheap evaluation

            for t, ec in step_targets(tc, job_dir):
                stage = f"evaluate:{t.label}"
                record.write("running", stage=stage)
                summary.update(_evaluate(ec, prefix=f"{t.label}/"))

            draw_quietly(job_dir, tc.thresholds)  # dynamics.png: rates per step + LoRA geometry
        for t in (eval_targets(tc, job_dir) if tc.capability.enabled else []):  # lm-eval, beside each evaluation
            stage = f"capability:{t.label}"
            record.write("running", stage=stage)

            summary.update(run_for_target(tc, t.run_dir, t.adapter, t.condition, "" if t.label == "final" else f"{t.label}/"))
    except KeyboardInterrupt as e:  # SIGTERM / SIGINT (em.train.stopping): recorded, one line, then the exit

        fields = _interruption(e, stage, job_dir)
        record.end("interrupted", stage=stage, **fields)
        at = f" at step {fields['step']}" if fields.get("step") is not None else ""
        print(f"interrupted ({fields['signal']}) in {stage}{at}: {job_dir} keeps what is done; "
              f"{resume_line(job_dir, in_multirun())}", file=sys.stderr, flush=True)
        raise
    except Exception as e:
        line = str(e).splitlines()[0] if str(e) else type(e).__name__
        error = line if isinstance(e, EMError) else f"{type(e).__name__}: {line}"
        (job_dir / "error.log").write_text(traceback.format_exc())
        record.end("failed", models_loaded=model_loads(), stage=stage, error=error)
        if not isolate:
            raise
        log.error("job %s failed in %s: %s (traceback: %s)", job_dir, stage, error, job_dir / "error.log")
        print(f"error: {job_dir}: {stage}: {error}", file=sys.stderr)
        return JobResult("failed", job_dir, error=error)
    finally:
        release_memory()

    failed = jobs.judge_failures(job_dir)
    if failed:  # not done: a relaunch re-asks the failed judgments (answers and trained adapter are reused)
        error = f"{failed['count']} judgments failed (most common, {failed['top_count']}x: {failed['reason']})"
        record.end("failed", models_loaded=model_loads(), stage="judge", error=error, judge_failures=failed["count"])
        print(f"error: {job_dir}: judge: {error}; a relaunch asks them again", file=sys.stderr)
        return JobResult("failed", job_dir, summary, error=error)
    jobs.write_done(job_dir, full_hash, train_hash, summary)
    record.end("done", models_loaded=model_loads(), **_push(tc, job_dir))
    return JobResult("done", job_dir, summary)


def _interruption(e: BaseException, stage: str, job_dir: Path) -> dict[str, Any]:
    """``em_job.json``'s fields for an interrupted job: the signal, the training step (in training: the steps
    done; later stages: the trained adapter's steps) and the checkpoint step a resume starts from."""
    import signal as _signal

    signum = getattr(e, "signum", _signal.SIGINT)
    out: dict[str, Any] = {"signal": _signal.Signals(signum).name, "exit_code": 128 + int(signum)}
    step = getattr(e, "step", None)
    if stage != "train":
        step = (read_json(job_dir / "metrics.json") or {}).get("steps", step)
    out["step"] = step
    if stage == "train":

        try:
            out["checkpoint_step"] = checkpoint_step(job_dir / "checkpoints" / LAST)
        except Exception:  # noqa: BLE001  no (whole) checkpoint yet: a resume starts over
            out["checkpoint_step"] = None
    return out


def _push(tc: Any, job_dir: Path) -> dict[str, Any]:
    """``push_to_hub.enabled``: the job's adapter to the Hub once (:func:`em.adapters.run.push_once`; never raises);
    returns ``{"push": record}`` for ``em_job.json``, or ``{}``."""
    if not tc.push_to_hub.enabled:
        return {}
    if tc.data.source == "none" or not (job_dir / "adapter").is_dir():
        log.warning("push_to_hub: %s has no trained adapter (data=%s); nothing pushed", job_dir, tc.data.name)
        return {"push": {"state": "no adapter"}}

    rec = push_once(job_dir / "adapter", job_dir, tc.push_to_hub)
    return {"push": {k: rec.get(k) for k in ("state", "repo_id", "url", "commit", "error") if rec.get(k)}}


def _train(tc: Any, job_dir: Path, train_hash: str, summary: dict[str, Any]) -> bool:
    """The training stage (reused when ``metrics.json`` names this training hash); False on a non-zero rank."""
    if tc.data.source == "none":
        print(f"data={tc.data.name}: no fine-tuning; evaluation uses the base model {tc.model.name}.")
        return True
    prev = read_json(job_dir / "metrics.json")
    if prev and prev.get("train_hash") == train_hash and (job_dir / "adapter").is_dir():
        print(f"{job_dir}: trained already (training hash {train_hash}); evaluating")
    else:

        result = run_training(tc)
        if not result.is_global_zero:
            return False
        prev = result.metrics
        del result
        release_memory()
        # which training config produced adapter/: a relaunch with other eval settings reuses it
        atomic_write_json(job_dir / "metrics.json", prev | {"train_hash": train_hash})
    summary["train/final_loss"] = prev.get("final_loss")
    return True


def _evaluate(ec: EvalConfig, prefix: str) -> dict[str, float]:
    """One evaluation target: run it, return its ``eval/*`` metrics with ``prefix`` (``epoch_<e>/``)."""
    res = run_evaluation(ec)
    out = {f"{prefix}{k}": v for k, v in eval_metrics(res.summary).items()}
    if not prefix and ec.adapter and (Path(str(ec.adapter)) / "adapter").is_dir():  # the model card gets the rates

        add_eval_summary(Path(str(ec.adapter)) / "adapter", res.summary)
    del res
    release_memory()
    return out
