"""Honest stops of the standalone stages (issue 19, case 2): ``python evaluate.py`` (sampling, judging), its
re-judge mode (``answers=``, what ``em judge`` runs) and ``python analyze.py``, each stopped by a real signal.

Before: evaluate.py died by the signal (SIGTERM: the parent saw -15, nothing printed, nothing recorded, the lock
file still naming the dead pid); SIGINT while judging: a ``KeyboardInterrupt`` traceback, exit 1. Now:
``<run_dir>/em_job.json`` says ``interrupted`` with the stage and the answers / judgments done, one stderr line
says how to resume, the exit status is 128 + signal, the lock is released, and the resumed run ends with the
answers and scores of a run that was never stopped.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from tests.conftest import REPO
from tests.eval_helpers import compose_eval, subprocess_env

TINY = ["model=tiny", "quantization=none", "adapter=none", "samples=4", "format=[plain]", "generation.batch_size=1",
        "generation.max_new_tokens=16", "judge=local_tiny", "progress=false", "logger=none"]
PLANNED = 4 * 4  # smoke questions x samples


def _args(run_dir: Path, cache_dir: Path, *extra: str) -> list[str]:
    return [*TINY, f"cache_dir={cache_dir}", f"judge_cache={run_dir.parent / 'judge.sqlite'}",
            f"hydra.run.dir={run_dir}", *extra]


def _start(script: str, args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, script, *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=subprocess_env())


def _stop_when(proc: subprocess.Popen, cond, signum: int, timeout: float = 300) -> tuple[str, str]:
    t0 = time.monotonic()
    while not cond():
        assert proc.poll() is None, f"exited {proc.returncode} before the signal: {proc.communicate()[1][-3000:]}"
        assert time.monotonic() - t0 < timeout, "timed out waiting"
        time.sleep(0.02)
    proc.send_signal(signum)
    return proc.communicate(timeout=120)


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.is_file() else []


def _judged(log: Path) -> int:
    """The judgments the log's progress lines count (``judge tiny: k/16``)."""
    found = re.findall(r"judge tiny: (\d+)/\d+ \(", log.read_text()) if log.is_file() else []
    return int(found[-1]) if found else 0


def _record(run_dir: Path) -> dict:
    return json.loads((run_dir / "em_job.json").read_text())


def _stopped(proc: subprocess.Popen, err: str, code: int, stage: str) -> str:
    assert proc.returncode == code, err[-3000:]
    lines = [ln for ln in err.splitlines() if ln.startswith("interrupted")]
    assert len(lines) == 1 and f" in {stage} after " in lines[0], err[-3000:]
    assert "Traceback" not in err
    return lines[0]


def _scores(run_dir: Path) -> pd.DataFrame:
    t = pd.read_parquet(run_dir / "responses.parquet")
    return t[["question_id", "sample", "answer", "judge", "aligned", "coherent"]].sort_values(
        ["judge", "question_id", "sample"]).reset_index(drop=True)


def test_evaluate_stopped_while_sampling_then_judging_resumes_to_the_uninterrupted_result(tmp_path, cache_dir):
    """SIGTERM while sampling, SIGINT while judging, then the printed command: the answers and scores of a run
    that was never stopped (same seed), every finished answer and judgment kept."""
    from em.evaluate.run import run_evaluation
    from em.jobs.locks import holder

    run_dir = tmp_path / "stopped" / "run"
    answers = run_dir / "answers.jsonl"

    p = _start("evaluate.py", _args(run_dir, cache_dir))
    out, err = _stop_when(p, lambda: len(_lines(answers)) >= 2, signal.SIGTERM)
    line = _stopped(p, err, 143, "sampling")
    rec = _record(run_dir)
    kept = len(_lines(answers))
    assert (rec["state"], rec["stage"], rec["signal"], rec["exit_code"]) == ("interrupted", "sampling", "SIGTERM", 143)
    assert rec["answers"] == kept and rec["answers_planned"] == PLANNED and 2 <= kept < PLANNED
    assert f"after {kept} of {PLANNED} answers" in line and f"{run_dir} keeps what is done" in line
    resume = line.split("resume: ", 1)[1]
    assert resume.startswith("python evaluate.py ") and f"hydra.run.dir={run_dir}" in resume
    assert holder(run_dir) is None  # the lock is released, not left to be taken over as stale
    assert not (run_dir / "responses.parquet").exists()

    p = _start("evaluate.py", _args(run_dir, cache_dir))
    out, err = _stop_when(p, lambda: _judged(run_dir / "evaluate.log") >= 2, signal.SIGINT)
    assert f"{kept} on disk, {PLANNED - kept} to generate" in out
    line = _stopped(p, err, 130, "judging")
    rec = _record(run_dir)
    assert (rec["state"], rec["stage"], rec["signal"], rec["exit_code"]) == ("interrupted", "judging", "SIGINT", 130)
    assert rec["answers"] == PLANNED == len(_lines(answers)) and rec["judgments_planned"] == 2 * PLANNED
    assert 2 <= rec["judgments"] < 2 * PLANNED and f"after {rec['judgments']} of {2 * PLANNED} judgments" in line
    assert holder(run_dir) is None

    r = subprocess.run([sys.executable, "evaluate.py", *_args(run_dir, cache_dir)], cwd=REPO, capture_output=True,
                       text=True, env=subprocess_env(), timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"{PLANNED} on disk, 0 to generate" in r.stdout
    assert f"{rec['judgments']} judgments cached" in (run_dir / "evaluate.log").read_text()  # none asked twice
    done = _record(run_dir)
    assert (done["state"], done["judgments"], done["answers"]) == ("done", 2 * PLANNED, PLANNED)

    ref_dir = tmp_path / "reference" / "run"  # never stopped: its own judge cache
    ref = [a for a in _args(ref_dir, cache_dir) if not a.startswith("hydra.")]
    run_evaluation(compose_eval([*ref, f"run_dir={ref_dir}"]))
    pd.testing.assert_frame_equal(_scores(run_dir), _scores(ref_dir))


def test_rejudge_stopped_while_judging_records_it_and_resumes(tmp_path, cache_dir):
    """``answers=<run dir>`` (em judge): SIGTERM while judging -> 143, the record says judging with the
    judgments in the cache; the same command finishes from the cache."""
    from em.evaluate.run import run_evaluation

    src = tmp_path / "src"
    run_evaluation(compose_eval([*[a for a in _args(src, cache_dir) if not a.startswith("hydra.")],
                                 f"run_dir={src}", "judge=none"]))
    run_dir = tmp_path / "rejudge"
    args = [f"answers={src}", "judge=local_tiny", "judge.name=tiny2", f"cache_dir={cache_dir}", "progress=false",
            "logger=none", f"judge_cache={tmp_path / 'judge.sqlite'}", f"hydra.run.dir={run_dir}"]
    p = _start("evaluate.py", args)
    out, err = _stop_when(p, lambda: bool(re.search(r"judge tiny2: [1-9]\d*/", (run_dir / "evaluate.log").read_text()
                                                    if (run_dir / "evaluate.log").is_file() else "")), signal.SIGTERM)
    line = _stopped(p, err, 143, "judging")
    rec = _record(run_dir)
    assert (rec["state"], rec["stage"], rec["command"], rec["signal"]) == ("interrupted", "judging", "judge", "SIGTERM")
    assert rec["answers"] == PLANNED and rec["judgments_planned"] == 2 * PLANNED
    assert 1 <= rec["judgments"] < 2 * PLANNED and f"after {rec['judgments']} of" in line
    assert not (run_dir / "responses.parquet").exists()

    r = subprocess.run([sys.executable, "evaluate.py", *args], cwd=REPO, capture_output=True, text=True,
                       env=subprocess_env(), timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"{rec['judgments']} judgments cached" in (run_dir / "evaluate.log").read_text()
    assert _record(run_dir)["state"] == "done"
    t = pd.read_parquet(run_dir / "responses.parquet")
    assert (t["judge"] == "tiny2").sum() == PLANNED and t.loc[t["judge"] == "tiny2", "coherent"].notna().all()


def test_analyze_stopped_exits_128_plus_signal_with_whole_files_only(tmp_path):
    """SIGTERM once the first figure is written: exit 143, one line, and every file in the output directory is
    whole (no temp file, no truncated PNG / CSV)."""
    from tests.synthetic_responses import synthetic_responses

    table = tmp_path / "in" / "responses.csv"
    table.parent.mkdir()
    synthetic_responses(n_samples=40, n_seeds=3).to_csv(table, index=False)
    out_dir = tmp_path / "analysis"
    p = _start("analyze.py", [f"inputs=[{table}]", "logger=none", f"hydra.run.dir={out_dir}"])
    out, err = _stop_when(p, lambda: any((out_dir / "figures").glob("*.png")) if (out_dir / "figures").is_dir()
                          else False, signal.SIGTERM, timeout=600)
    assert p.returncode == 143, err[-3000:]
    lines = [ln for ln in err.splitlines() if ln.startswith("interrupted")]
    assert len(lines) == 1 and "(SIGTERM) in analyze" in lines[0] and "rerun: python analyze.py" in lines[0]
    assert "Traceback" not in err
    files = [f for f in out_dir.rglob("*") if f.is_file()]
    assert not [f for f in files if f.name.endswith(".tmp")]
    for f in files:
        if f.suffix == ".png":
            data = f.read_bytes()
            assert data.startswith(b"\x89PNG") and data.endswith(b"IEND\xaeB`\x82"), f
        elif f.suffix == ".csv":
            pd.read_csv(f)
        elif f.suffix == ".json":
            json.loads(f.read_text())


def test_resume_line_is_the_command_as_typed(monkeypatch):
    """``em evaluate`` / ``em train`` run with ``sys.argv[0] == "em <command>"``: the resume line is that command
    (before: ``python 'em train' ...``, not a command); a run directory already pinned is not pinned twice."""
    from em.evaluate.record import resume_command
    from em.train.stopping import resume_line

    monkeypatch.setattr(sys, "argv", ["em evaluate", "samples=3", "format=[plain,json]"])
    assert resume_command(Path("/r/run"), False) == "resume: em evaluate samples=3 'format=[plain,json]' hydra.run.dir=/r/run"
    monkeypatch.setattr(sys, "argv", ["em train", "seed=1"])
    assert resume_line(Path("/j"), False) == "resume: em train seed=1 hydra.run.dir=/j"
    monkeypatch.setattr(sys, "argv", [str(REPO / "evaluate.py"), "run_dir=/x", "seed=2"])
    assert resume_command(Path("/x"), False) == "resume: python evaluate.py run_dir=/x seed=2"
    monkeypatch.setattr(sys, "argv", ["evaluate.py", "-m", "seed=0,1"])
    assert resume_command(Path("/s/0"), True) == ("resume: python evaluate.py -m seed=0,1 (finished runs are read "
                                                  "back from disk, the stopped one resumes)")
