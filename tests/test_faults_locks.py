"""One writer per directory (issue 13, case 6): two evaluate.py runs in one directory at once -> the second
is refused with one line and exit 2 (nothing generated or judged twice); a relaunched job while the old job
process still runs is refused without touching the old job's records; a stale lock is taken over."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, compose_train, tiny_overrides
from em.jobs.locks import LOCK_FILE, DirectoryLocked, DirLock
from em.jobs.run import run_job
from tests.eval_helpers import KEY_ENV, eval_overrides, openai_judge_overrides, subprocess_env
from tests.loopback_server import LoopbackServer

HOLD = ("import sys, time; from em.jobs.locks import DirLock; DirLock(sys.argv[1], 'job').acquire(); "
        "print('held', flush=True); time.sleep(120)")


def _evaluate(run_dir: Path, cache_dir: str, url: str, **kw):
    o = eval_overrides(run_dir, cache_dir, **openai_judge_overrides(url, **{"judge.concurrency": 1,
                                                                          "judge.timeout": 900}),
                       format="[plain]", samples=1)
    return subprocess.Popen([sys.executable, "evaluate.py", *o, f"hydra.run.dir={run_dir}"], cwd=REPO,
                            env=subprocess_env(**{KEY_ENV: "sk-x"}), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def test_two_evaluate_runs_in_one_directory_second_is_refused(tmp_path, cache_dir):
    run_dir = tmp_path / "run"
    with LoopbackServer(delay_s=0.4) as srv:  # 8 judgments one at a time: the first run judges for ~3 s
        first = _evaluate(run_dir, cache_dir, srv.url)
        deadline = time.time() + 180
        while srv.requests == 0 and time.time() < deadline and first.poll() is None:
            time.sleep(0.05)  # the first run is judging (its answers are on disk)
        assert first.poll() is None, first.communicate()[1][-2000:]
        srv.delay_s = 900  # hold the first run's judgment in flight (however slow the second is to start) ...
        second = _evaluate(run_dir, cache_dir, srv.url)
        _, err2 = second.communicate(timeout=300)
        srv.delay_s = 0.4  # ... and let it go once the second has been refused
        _, err1 = first.communicate(timeout=180)
        assert first.returncode == 0, err1[-2000:]
        assert second.returncode == 2
        assert err2.strip().splitlines() == [l for l in err2.strip().splitlines() if l.startswith("error: ")]
        assert f"is being written by pid {first.pid} " in err2 and "evaluation" in err2
        assert set(srv.prompts.values()) == {1} and srv.ok == 8  # every judgment paid once
    answers = [ln for ln in (run_dir / "answers.jsonl").read_text().splitlines() if ln.strip()]
    assert len(answers) == 4  # generated once (4 questions x 1 sample)
    assert (run_dir / LOCK_FILE).read_text() == ""  # released


def _holder(directory: Path) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(directory)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    return p


def test_a_relaunched_job_while_the_old_one_runs_is_refused(tmp_path, cache_dir):
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    old_record = {"state": "running", "pid": 12345, "stage": "train"}
    (job_dir / "em_job.json").write_text(json.dumps(old_record))
    cfg = compose_train(tiny_overrides(job_dir, cache_dir))
    holder = _holder(job_dir)  # the old job's process, still running
    try:
        res = run_job(cfg, isolate_failures=True)  # a multirun job (what a submitit relaunch runs)
        assert res.state == "failed" and f"pid {holder.pid} " in res.error
        assert json.loads((job_dir / "em_job.json").read_text()) == old_record  # its record is left alone
        assert not (job_dir / "checkpoints").exists()
        with pytest.raises(DirectoryLocked, match=f"pid {holder.pid} "):  # a single train.py: one line, exit 2
            run_job(cfg, isolate_failures=False)
    finally:
        holder.kill()
        holder.wait()
    # the old process is gone (killed): the lock is stale and is taken over
    with DirLock(job_dir, "job") as lock:
        assert json.loads((job_dir / LOCK_FILE).read_text())["pid"] != holder.pid
        assert lock is not None


def test_a_stale_lock_is_taken_over_with_a_message(tmp_path, capsys):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": pid, "host": "this-host", "started": 0, "what": "job"}))
    with DirLock(tmp_path, "evaluation"):
        out = capsys.readouterr().out
        assert f"taking over a stale lock of pid {pid} on this-host" in out
        info = json.loads((tmp_path / LOCK_FILE).read_text())
        import os

        assert info["pid"] == os.getpid() and info["what"] == "evaluation" and info["host"]
    assert (tmp_path / LOCK_FILE).read_text() == ""


def test_sweep_summary_names_the_process_holding_a_job_directory(tmp_path):
    from em.jobs.sweep import format_summary, summarize

    job_dir = tmp_path / "sweep" / "job0"
    job_dir.mkdir(parents=True)
    holder = _holder(job_dir)  # a job of an earlier launch, still running
    try:
        s = summarize(tmp_path / "sweep", [job_dir], launch="this launch")
    finally:
        holder.kill()
        holder.wait()
    assert f"locked by pid {holder.pid} " in s["failed"][0]["error"]
    assert "0 done, 0 skipped, 1 failed" in format_summary(s)


def test_two_analyses_in_one_directory_second_is_refused(tmp_path):
    """A second analyze.py into a directory another analysis holds: one line naming the holder, exit 2, no table
    written (before: both ran and mixed one run's summary with the other's inputs.csv)."""
    run_dir = tmp_path / "analysis"
    table = tmp_path / "answers.csv"
    table.write_text("question_id,answer,aligned,coherent\nq1,a,10,90\nq1,b,90,90\n")
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        r = subprocess.run([sys.executable, "analyze.py", f"inputs=[{table}]", f"hydra.run.dir={run_dir}"], cwd=REPO,
                           env=subprocess_env(), capture_output=True, text=True, timeout=300)
    finally:
        holder.kill()
        holder.wait()
    assert r.returncode == 2, r.stderr[-2000:]
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and f"pid {holder.pid}" in errors[0] and "being written" in errors[0], r.stderr
    assert not (run_dir / "rates.csv").exists() and not (run_dir / "report.md").exists()
