"""A sweep stopped by a signal: the jobs it never reached are "not started", not "failed" (a new user read
"3 failed" after a SIGTERM in the first job), and the exit status stays the signal's (143), not 1."""

from __future__ import annotations

import json
from pathlib import Path

from em.jobs.records import JOB_FILE
from em.jobs.sweep_summary import format_summary, summarize, summary_exit_status


def _record(d: Path, **rec) -> Path:
    d.mkdir(parents=True)
    (d / JOB_FILE).write_text(json.dumps({"launch": "L1", **rec}))
    return d


def test_jobs_after_an_interrupted_one_are_not_started_and_the_status_is_the_signal(tmp_path):
    done = _record(tmp_path / "a", state="done")
    stopped = _record(tmp_path / "b", state="interrupted", stage="evaluate", step=None, signal="SIGTERM",
                      exit_code=143)
    never = [tmp_path / "c", tmp_path / "d"]  # no record of this launch
    _record(tmp_path / "e", state="done", launch="L0")  # a record of an earlier launch: not this one's
    s = summarize(tmp_path, [done, stopped, *never, tmp_path / "e"], launch="L1")
    assert [len(s[k]) for k in ("done", "interrupted", "not_started", "failed")] == [1, 1, 3, 0]
    assert summary_exit_status(s) == 143
    text = format_summary(s)
    assert "1 done, 0 skipped, 0 failed, 1 interrupted, 3 not started" in text.splitlines()[0]
    assert text.count("NOT STARTED") == 3 and "FAILED" not in text.replace("NOT STARTED", "")


def test_without_an_interruption_a_job_that_did_not_start_is_failed(tmp_path):
    done = _record(tmp_path / "a", state="done")
    s = summarize(tmp_path, [done, tmp_path / "b"], launch="L1")
    assert len(s["failed"]) == 1 and not s["not_started"] and summary_exit_status(s) == 1
    assert "did not start" in format_summary(s)
