"""Safe to resume, honest when stopped (issue 19, cases 1, 2 and 8).

* Case 1: a checkpoint is an untrusted file: a crafted ``__reduce__`` payload in ``checkpoints/last.ckpt`` runs
  nothing and the run is refused in one line naming the file (exit 2); em's own checkpoints load with
  ``weights_only=True`` and hold everything a resume needs.
* Case 2: SIGTERM / SIGINT (real signals to a real ``python train.py`` process) in training, sampling and
  judging: ``em_job.json`` says ``interrupted`` with the stage and step, one line says how to resume, the exit
  status is 128 + signal, the resumed run is bit-identical; a ``-m`` sweep exits non-zero; on SLURM
  Lightning's auto-requeue is configured.
* Case 8: a wall clock stepped back during a sweep does not turn finished jobs into "did not start".
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO, compose_train

SMOKE = ["experiment=smoke", "format=[plain]", "evaluate.progress=false"]
TRAIN_ONLY = ["evaluate.enabled=false", "data.n_examples=16", "trainer.checkpoint_every_n_steps=1"]


def _env(**extra) -> dict:
    env = dict(os.environ)
    env.update({"WANDB_MODE": "offline", "WANDB_SILENT": "true", "TOKENIZERS_PARALLELISM": "false",
                "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
                "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), str(REPO), os.environ.get("PYTHONPATH", "")])})
    env.update(extra)
    return env


def _cmd(*overrides: str, multirun: bool = False) -> list[str]:
    return [sys.executable, "train.py", *(["-m"] if multirun else []), *SMOKE, *overrides]


def _run(*overrides: str, multirun: bool = False, env: dict | None = None, timeout: int = 600):
    return subprocess.run(_cmd(*overrides, multirun=multirun), cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env=env or _env())


def _signal_cb(marker: Path, at_step: int, signum: int) -> str:
    return (f"trainer.callbacks=[{{_target_:stop_helpers.SignalOnce,marker:'{marker}',at_step:{at_step},"
            f"signum:{int(signum)}}}]")


def _job(job_dir: Path) -> dict:
    return json.loads((job_dir / "em_job.json").read_text())


def _adapter(job_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(job_dir / "adapter" / "adapter_model.safetensors"))


# --------------------------------------------------------------------------- case 1: untrusted checkpoints
class Payload:
    """What a crafted checkpoint holds: unpickling it would run a shell command that creates ``marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_crafted_checkpoint_runs_nothing_and_is_refused_in_one_line(tmp_path, cache_dir):
    job_dir = tmp_path / "job"
    (job_dir / "checkpoints").mkdir(parents=True)
    marker = tmp_path / "PWNED"
    ckpt = job_dir / "checkpoints" / "last.ckpt"
    torch.save({"global_step": 2, "state_dict": {}, "em_history": [Payload(marker)]}, ckpt)
    torch.save({"global_step": 1, "callbacks": {"x": Payload(marker)}}, job_dir / "checkpoints" / "last.prev.ckpt")

    r = _run(*TRAIN_ONLY, f"cache_dir={cache_dir}", f"hydra.run.dir={job_dir}")
    assert not marker.exists()  # nothing in the file ran
    assert r.returncode == 2, r.stderr[-3000:]
    err = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith(f"error: {ckpt}: ") and "weights_only" in err[0], r.stderr[-2000:]
    assert "Traceback" not in r.stdout + r.stderr
    assert ckpt.is_file() and not (job_dir / "adapter").exists()  # left in place (not torn: refused)
    assert _job(job_dir)["state"] == "failed"

    # Lightning's own loader goes through em's CheckpointIO: weights_only whatever the caller asks
    from em.train.checkpoints import AtomicCheckpointIO, UnsafeCheckpoint

    with pytest.raises(UnsafeCheckpoint, match="last.prev.ckpt"):
        AtomicCheckpointIO().load_checkpoint(job_dir / "checkpoints" / "last.prev.ckpt", weights_only=False)
    assert not marker.exists()


# --------------------------------------------------------------------------- case 2: signals
def test_sigterm_in_training_is_recorded_and_the_resume_is_bit_identical(tmp_path, cache_dir):
    job_dir, marker = tmp_path / "job", tmp_path / "signalled"
    args = [*TRAIN_ONLY, f"cache_dir={cache_dir}", f"hydra.run.dir={job_dir}",
            _signal_cb(marker, 2, signal.SIGTERM)]
    r1 = _run(*args)
    assert r1.returncode == 143, r1.stdout[-2000:] + r1.stderr[-3000:]
    job = _job(job_dir)
    assert (job["state"], job["stage"], job["signal"], job["step"], job["checkpoint_step"]) == \
        ("interrupted", "train", "SIGTERM", 2, 2)
    lines = [ln for ln in r1.stderr.splitlines() if ln.startswith("interrupted")]
    assert len(lines) == 1 and "at step 2" in lines[0] and f"hydra.run.dir={job_dir}" in lines[0], r1.stderr[-2000:]
    assert "Traceback" not in r1.stderr and not (job_dir / "adapter").exists()

    # the checkpoint holds tensors and plain types only, and everything a resume restores
    ckpt = torch.load(job_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 2
    assert ckpt["optimizer_states"][0]["state"] and ckpt["lr_schedulers"][0]["last_epoch"] == 2
    assert any(k.startswith("ModelCheckpoint") for k in ckpt["callbacks"]) and ckpt["loops"]["fit_loop"]
    assert ckpt["ChatDataModule"]["batches_done"] == 4 and [h["step"] for h in ckpt["em_history"]] == [1, 2]
    assert all(isinstance(v, torch.Tensor) for v in ckpt["state_dict"].values())

    # the resume line's command, run as printed, finishes the job exactly as an uninterrupted run
    r2 = _run(*args)
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert _job(job_dir)["state"] == "done"
    resumed = json.loads((job_dir / "metrics.json").read_text())
    assert resumed["resumed_from_step"] == 2 and resumed["steps"] == 4

    from em.train.run import run_training

    ref = run_training(compose_train([*SMOKE, *TRAIN_ONLY, f"cache_dir={cache_dir}", f"run_dir={tmp_path / 'ref'}"]))
    assert resumed["losses"] == ref.metrics["losses"]  # bit for bit
    a, b = _adapter(job_dir), _adapter(tmp_path / "ref")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_sigint_in_a_sweep_job_exits_130_and_the_summary_says_interrupted(tmp_path, cache_dir):
    """A ``-m`` sweep (basic launcher, jobs in this process): Ctrl-C in the first job's training stops the
    sweep with 130; before, Lightning's exit went through and the sweep's status came from an atexit hook."""
    sw, marker = tmp_path / "sweep", tmp_path / "signalled"
    r = _run(*TRAIN_ONLY, "data=synthetic", "seed=0,1", f"cache_dir={cache_dir}", f"hydra.sweep.dir={sw}",
             _signal_cb(marker, 2, signal.SIGINT), multirun=True)
    assert r.returncode == 130, r.stdout[-2000:] + r.stderr[-3000:]
    job = _job(sw / "tiny_synthetic_s0")
    assert (job["state"], job["stage"], job["signal"], job["step"]) == ("interrupted", "train", "SIGINT", 2)
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("interrupted")]
    assert len(lines) == 1 and "relaunch" not in lines[0] and "-m" in lines[0]
    summary = json.loads((sw / "sweep_summary.json").read_text())
    assert [Path(i["job_dir"]).name for i in summary["interrupted"]] == ["tiny_synthetic_s0"]
    assert "1 interrupted" in r.stdout and "INTERRUPTED" in r.stdout
    # the job the stopped sweep never reached is "not started", not failed
    assert [Path(i["job_dir"]).name for i in summary["not_started"]] == ["tiny_synthetic_s1"] and not summary["failed"]


def _wait_for(cond, proc: subprocess.Popen, timeout: float = 300) -> None:
    t0 = time.monotonic()
    while not cond():
        assert proc.poll() is None, f"exited {proc.returncode} before the signal: {proc.communicate()[1][-3000:]}"
        assert time.monotonic() - t0 < timeout, "timed out waiting"
        time.sleep(0.05)


def test_sigterm_while_sampling_records_the_stage_and_resumes(tmp_path, cache_dir):
    job_dir = tmp_path / "job"
    args = ["data=base", "evaluate.samples=8", "generation.batch_size=1", f"cache_dir={cache_dir}",
            f"hydra.run.dir={job_dir}", f"evaluate.judge_cache={tmp_path / 'judge.sqlite'}"]
    p = subprocess.Popen(_cmd(*args), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    answers = job_dir / "eval" / "answers.jsonl"
    _wait_for(lambda: answers.is_file() and answers.stat().st_size > 0, p)
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 143, err[-3000:]
    job = _job(job_dir)
    assert (job["state"], job["stage"], job["signal"]) == ("interrupted", "evaluate:final", "SIGTERM")
    lines = [ln for ln in err.splitlines() if ln.startswith("interrupted")]
    assert len(lines) == 1 and "evaluate:final" in lines[0] and "resume: python train.py" in lines[0]
    n_before = len(answers.read_text().splitlines())
    assert 0 < n_before < 32

    r = _run(*args)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"{n_before} on disk" in r.stdout  # the answers written before the signal are kept
    assert _job(job_dir)["state"] == "done" and len(answers.read_text().splitlines()) == 32


def test_sigterm_while_judging_records_the_stage_and_exits_143(tmp_path, cache_dir):
    from tests.eval_helpers import KEY_ENV, openai_judge_overrides
    from tests.loopback_server import LoopbackServer

    job_dir = tmp_path / "job"
    with LoopbackServer(delay_s=30.0) as server:  # a judge that is slow to answer: the signal lands mid-request
        judge = openai_judge_overrides(server.url, **{"judge.timeout": 60.0, "judge.concurrency": 2})
        args = ["data=base", f"cache_dir={cache_dir}", f"hydra.run.dir={job_dir}",
                f"evaluate.judge_cache={tmp_path / 'judge.sqlite'}", *[f"{k}={v}" for k, v in judge.items()]]
        p = subprocess.Popen(_cmd(*args), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=_env(**{KEY_ENV: "sk-loopback"}))
        _wait_for(lambda: server.requests > 0, p)
        t0 = time.monotonic()
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=120)
        stop_s = time.monotonic() - t0
    assert p.returncode == 143, err[-3000:]
    assert stop_s < 20  # not after the judge's 60 s timeout
    job = _job(job_dir)
    assert (job["state"], job["stage"], job["signal"]) == ("interrupted", "evaluate:final", "SIGTERM")
    assert sum(ln.startswith("interrupted") for ln in err.splitlines()) == 1
    assert (job_dir / "eval" / "answers.jsonl").is_file()  # the answers stay for the resume


# --------------------------------------------------------------------------- case 2: SLURM
def test_slurm_job_gets_lightnings_auto_requeue(tmp_path, cache_dir, monkeypatch):
    """Under ``sbatch`` (SLURM_* set, no submitit) Lightning's SLURMEnvironment requeues on SIGUSR1: a real
    SIGUSR1 mid-training calls ``scontrol requeue <job id>`` (a stand-in on PATH) and the training's
    ``checkpoints/last.ckpt`` is what the requeued job resumes from."""
    from em.train.stopping import slurm_plugins

    assert slurm_plugins({}) == []
    assert slurm_plugins({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1", "SLURM_JOB_NAME": "interactive"}) == []
    (env_sbatch,) = slurm_plugins({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1", "SLURM_JOB_NAME": "em"})
    assert env_sbatch.auto_requeue and env_sbatch.requeue_signal == signal.SIGUSR1
    (env_submitit,) = slurm_plugins({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1", "SUBMITIT_EXECUTOR": "slurm"})
    assert not env_submitit.auto_requeue  # submitit requeues its own jobs

    bin_dir, calls = tmp_path / "bin", tmp_path / "scontrol.calls"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(f"#!/bin/sh\necho \"$@\" >> {calls}\n")
    (bin_dir / "scontrol").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    for k, v in {"SLURM_JOB_ID": "4242", "SLURM_NTASKS": "1", "SLURM_JOB_NAME": "em-train", "SLURM_PROCID": "0",
                 "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_NODELIST": "localhost"}.items():
        monkeypatch.setenv(k, v)
    for k in [k for k in os.environ if k.startswith("SUBMITIT_")]:
        monkeypatch.delenv(k)

    from em.train.run import run_training

    marker = tmp_path / "usr1"
    cb = f"+trainer.callbacks=[{{_target_:tests.stop_helpers.SignalOnce,marker:'{marker}',at_step:1,signum:{int(signal.SIGUSR1)}}}]"
    before = signal.getsignal(signal.SIGUSR1)
    res = run_training(compose_train([*SMOKE, *TRAIN_ONLY, f"cache_dir={cache_dir}", f"run_dir={tmp_path / 'run'}", cb]))
    assert signal.getsignal(signal.SIGUSR1) == before  # Lightning restores the handlers after fit
    assert calls.read_text().split() == ["requeue", "4242"]
    assert res.metrics["steps"] == 4
    assert torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 4


# --------------------------------------------------------------------------- case 8: clocks
def test_clock_stepped_back_during_a_sweep_does_not_fail_finished_jobs(tmp_path, cache_dir):
    """The first job steps the process' wall clock back 10 minutes: the second job's record starts "before"
    the sweep. Before: "did not start", 1 failed, exit 1. Job records (this launch's id) decide now."""
    sw, marker = tmp_path / "sweep", tmp_path / "stepped"
    cb = f"trainer.callbacks=[{{_target_:stop_helpers.ClockBack,seconds:600,marker:'{marker}'}}]"
    r = _run(*TRAIN_ONLY, "data.n_examples=8", "data=synthetic", "seed=0,1", f"cache_dir={cache_dir}",
             f"hydra.sweep.dir={sw}", cb, multirun=True)
    assert marker.exists()
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert "2 done, 0 skipped, 0 failed" in r.stdout
    summary = json.loads((sw / "sweep_summary.json").read_text())
    assert len(summary["done"]) == 2 and not summary["failed"]
    assert _job(sw / "tiny_synthetic_s1")["started"] < _job(sw / "tiny_synthetic_s0")["started"]  # the clock did step


def test_summary_decides_from_records_not_clocks(tmp_path):
    from em.jobs.sweep import summarize

    launch, now = "L-this", time.time()
    recs = {"early": {"state": "done", "launch": launch, "started": now - 3600},  # clock stepped back: still this launch
            "older": {"state": "done", "launch": "L-before", "started": now + 3600},  # a clock ahead: not this launch
            "unchanged": {"state": "done", "started": now},  # no launch id, as before the plan: not rerun
            "rewritten": {"state": "done", "started": now - 7200}}  # no launch id, rewritten since the plan
    before = {}
    for name, rec in recs.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "em_job.json").write_text(json.dumps(rec))
        before[tmp_path / name] = rec if name != "rewritten" else {"state": "running", "started": now}
    s = summarize(tmp_path, [tmp_path / n for n in recs], launch=launch, before=before)
    assert sorted(Path(d["job_dir"]).name for d in s["done"]) == ["early", "rewritten"]
    assert sorted(Path(f["job_dir"]).name for f in s["failed"]) == ["older", "unchanged"]
    assert all("did not start" in f["error"] for f in s["failed"])


def test_resume_with_lora_dropout_is_bit_identical_rng_states_in_the_checkpoint(tmp_path, cache_dir):
    """LoRA dropout draws from torch's RNG every step: the checkpoint carries the RNG state (a tensor:
    weights_only-loadable) and a resume restores it before its first batch."""
    from em.train.run import run_training

    over = [*SMOKE, *TRAIN_ONLY, f"cache_dir={cache_dir}", "lora.dropout=0.3", "evaluate.enabled=false"]
    full = run_training(compose_train([*over, f"run_dir={tmp_path / 'full'}"]))
    crash = "+trainer.callbacks=[{_target_: tests.test_training.CrashAt, step: 2}]"
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_training(compose_train([*over, f"run_dir={tmp_path / 'resumed'}", crash]))
    ckpt = torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 2 and isinstance(ckpt["em_rng"]["torch"], torch.Tensor)
    resumed = run_training(compose_train([*over, f"run_dir={tmp_path / 'resumed'}"]))
    assert resumed.metrics["resumed_from_step"] == 2
    assert resumed.metrics["losses"] == full.metrics["losses"]  # bit for bit, dropout included
    fa = {n: p for n, p in full.model.named_parameters() if p.requires_grad}
    ra = {n: p for n, p in resumed.model.named_parameters() if p.requires_grad}
    assert all(torch.equal(fa[n], ra[n]) for n in fa)
