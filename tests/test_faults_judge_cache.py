"""The judge cache is trustworthy and shared safely (issue 19, cases 3 and 4), over real SQLite files, real HTTP
on loopback and real processes.

Case 3: a stored value changed on disk (one byte: 6.31 -> 96.08 passes ``integrity_check``) fails its checksum,
is asked again and counted in one warning; a file that does not open is moved aside and rebuilt with one line
naming it, when an evaluation starts (before any sampling); a version-1 cache is migrated.
Case 4: two processes on one cache pay for each prompt once; a process waits for another's pending answer; a
killed owner's claims are taken over (at once on this host; by heartbeat silence from another host); the WAL
stays small.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from em.judge.base import run_judge
from em.judge.cache import JudgeCache, entry_checksum, request_key
from em.judge.scoring import Judgment, JudgeRequest
from tests.conftest import REPO
from tests.eval_helpers import KEY_ENV, loopback_openai_judge, subprocess_env
from tests.judge_worker import prompts
from tests.loopback_server import LoopbackServer

HEALTHY = [["50", -0.7], ["80", -0.7]]
LOW = [["6", -0.08], ["7", -2.6]]  # a coherence score of about 6.1


@pytest.fixture
def key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-loopback")


def _judge(url: str, **kw):
    return loopback_openai_judge(url, **({"max_retries": 0, "reply_retries": 0, "concurrency": 4} | kw))


def _warnings(caplog, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and text in r.getMessage()]


# ---------------------------------------------------------------------------------------------- case 3: trust
def test_a_byte_changed_on_disk_fails_the_checksum_is_asked_again_and_counted_once(tmp_path, key, caplog):
    path = tmp_path / "judge_cache.sqlite"
    reqs = [JudgeRequest("rate this [low]"), JudgeRequest("rate this [ok]")]
    with LoopbackServer(script={"[low]": LOW}, default=HEALTHY) as srv:
        cache = JudgeCache(path)
        (low, ok), _ = run_judge(_judge(srv.url), reqs, cache, progress=False)
        cache.close()  # WAL checkpointed into the file: the value is in the database pages now
        stored = json.dumps(low.to_dict()).encode()
        raw = path.read_bytes()
        assert raw.count(stored) == 1 and not Path(f"{path}-wal").exists()
        score = f'"score": {low.score!r}'.encode()
        assert score.startswith(b'"score": 6.')
        # the tester's fault: one byte inside the stored value (6.1... -> 96.1...; same length, same page)
        path.write_bytes(raw.replace(stored, stored.replace(score, b'"score": 9' + score[len(b'"score": '):][:-1])))
        assert sqlite3.connect(path).execute("PRAGMA integrity_check").fetchone()[0] == "ok"  # SQLite sees nothing

        srv.reset_counts()
        caplog.clear()
        cache = JudgeCache(path)
        (low2, ok2), stats = run_judge(_judge(srv.url), reqs, cache, progress=False)
        assert srv.requests == 1 and srv.prompts["rate this [low]"] == 1  # the changed one is asked again, once
        assert stats.cached == 1 and low2.score == pytest.approx(low.score) and ok2.score == ok.score
        lines = _warnings(caplog, "failed their checksum")
        assert len(lines) == 1 and "1 entries ignored" in lines[0] and str(path) in lines[0]
        assert cache.mismatches == 1
        # healed: the fresh judgment replaced the changed row, so the next run asks nothing
        srv.reset_counts()
        _, stats = run_judge(_judge(srv.url), reqs, cache, progress=False)
        assert srv.requests == 0 and stats.cached == 2
        cache.close()


def test_a_row_whose_key_was_changed_is_not_served_under_the_new_key(tmp_path):
    """The checksum covers the identity too: a value moved under another prompt's key is a miss."""
    path = tmp_path / "c.sqlite"
    cache = JudgeCache(path)
    a, b = request_key("judge-x", JudgeRequest("a")), request_key("judge-x", JudgeRequest("b"))
    cache.put(a, "judge-x", Judgment(score=12.0, raw=[["12", -0.1]]))
    cache._db.execute("UPDATE judgments SET key = ? WHERE key = ?", (b, a))
    assert cache.get_many([a, b]) == {} and cache.mismatches == 1
    cache.close()


def _filled_cache(path: Path, n: int = 300) -> None:
    cache = JudgeCache(path)
    for i in range(n):
        cache.put(request_key("judge-x", JudgeRequest(f"prompt {i} " + "x" * 200)), "judge-x",
                  Judgment(score=float(i % 100), raw=[[str(i % 100), -0.01]]))
    cache.close()


@pytest.mark.parametrize("damage", ["truncated", "overwritten", "text"])
def test_a_cache_that_does_not_open_is_moved_aside_and_rebuilt_with_one_line(tmp_path, key, caplog, damage):
    path = tmp_path / "judge_cache.sqlite"
    _filled_cache(path)
    raw = path.read_bytes()
    bad = {"truncated": raw[: len(raw) // 2],
           "overwritten": raw[:100] + os.urandom(4096) + raw[4196:],  # the header's tail and first pages
           "text": b"these are not the judgments you are looking for\n" * 40}[damage]
    path.write_bytes(bad)

    caplog.clear()
    cache = JudgeCache(path)
    moved = tmp_path / "judge_cache.sqlite.corrupt"
    assert cache.moved_aside == moved and moved.read_bytes() == bad  # kept for a post-mortem
    lines = _warnings(caplog, "does not open")
    assert len(lines) == 1 and str(path) in lines[0] and "judge_cache.sqlite.corrupt" in lines[0]
    reqs = [JudgeRequest(f"q{i}") for i in range(3)]
    with LoopbackServer(default=HEALTHY) as srv:
        out, stats = run_judge(_judge(srv.url), reqs, cache, progress=False)
        assert srv.requests == 3 and all(j.final for j in out) and len(cache) == 3
    cache.close()
    # a second damage later goes to the next free name, the first post-mortem copy stays
    path.write_bytes(b"garbage" * 100)
    JudgeCache(path).close()
    assert (tmp_path / "judge_cache.sqlite.corrupt.1").read_bytes() == b"garbage" * 100
    assert moved.read_bytes() == bad


def test_a_version_1_cache_is_migrated_and_its_judgments_still_served(tmp_path, key, caplog):
    path = tmp_path / "judge_cache.sqlite"
    req = JudgeRequest("rate this")
    with LoopbackServer(default=HEALTHY) as srv:
        judge = _judge(srv.url)
        k = request_key(judge.identity, req)
        old = sqlite3.connect(path)  # exactly what em wrote before checksums
        old.execute("CREATE TABLE judgments (key TEXT PRIMARY KEY, judge TEXT, value TEXT)")
        old.execute("INSERT INTO judgments VALUES (?, ?, ?)",
                    (k, judge.identity, json.dumps(Judgment(score=65.0, raw=HEALTHY).to_dict())))
        old.commit()
        old.close()
        caplog.clear()
        cache = JudgeCache(path)
        assert cache.migrated == 1 and len(_warnings(caplog, "migrated from version 1")) == 1
        (j,), stats = run_judge(judge, [req], cache, progress=False)
        assert srv.requests == 0 and stats.cached == 1 and j.score == 65.0
        cache.close()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == 2
    (c,) = db.execute("SELECT checksum FROM judgments").fetchone()
    assert c == entry_checksum(k, judge.identity, json.dumps(Judgment(score=65.0, raw=HEALTHY).to_dict()))
    caplog.clear()
    JudgeCache(path).close()  # migrated once: no second line
    assert not _warnings(caplog, "migrated")


def test_evaluation_repairs_a_damaged_cache_before_sampling(tmp_path, cache_dir, key, caplog):
    from em.evaluate.run import run_evaluation
    from tests.eval_helpers import compose_eval, eval_overrides, openai_judge_overrides

    run_dir = tmp_path / "run"
    cache_file = tmp_path / "judge_cache.sqlite"  # eval_overrides: <run_dir>/../judge_cache.sqlite
    cache_file.write_bytes(b"\x00" * 100 + b"not sqlite" * 500)
    caplog.set_level(logging.INFO)
    with LoopbackServer(default=HEALTHY) as srv:
        res = run_evaluation(compose_eval(eval_overrides(run_dir, cache_dir, samples=1, format="[plain]",
                                                         **openai_judge_overrides(srv.url))))
        assert res.generated > 0 and res.failures == 0 and srv.ok == 2 * res.generated
    assert (tmp_path / "judge_cache.sqlite.corrupt").exists()
    msgs = [r.getMessage() for r in caplog.records]
    repaired = next(i for i, m in enumerate(msgs) if "does not open" in m)
    sampled = next(i for i, m in enumerate(msgs) if m.startswith("generate") or "generated" in m)
    assert repaired < sampled  # checked when the run starts, not after the answers were sampled


# ---------------------------------------------------------------------------------------------- case 4: sharing
def _worker(url: str, cache: Path, n: int, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tests.judge_worker", url, str(cache), str(n), *args],
                            cwd=REPO, env=subprocess_env(**{KEY_ENV: "sk-loopback", "PYTHONPATH": str(REPO)}),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _result(proc: subprocess.Popen, timeout: float = 60) -> dict:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-2000:]
    return json.loads(out.strip().splitlines()[-1])


def _claims(path: Path) -> int:
    try:
        db = sqlite3.connect(path, timeout=5)
        try:
            return db.execute("SELECT COUNT(*) FROM claims").fetchone()[0]
        finally:
            db.close()
    except sqlite3.Error:  # not created yet
        return 0


def _wait_for_claims(path: Path, n: int, proc: subprocess.Popen, timeout: float = 30) -> None:
    t0 = time.monotonic()
    while _claims(path) < n:
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.monotonic() - t0 < timeout, "the worker never claimed its keys"
        time.sleep(0.05)


def test_two_processes_on_one_cache_pay_for_each_prompt_once(tmp_path):
    n, path, go = 60, tmp_path / "judge_cache.sqlite", tmp_path / "go"
    with LoopbackServer(default=HEALTHY, delay_s=0.05) as srv:
        ready = [tmp_path / f"ready{i}" for i in range(2)]
        workers = [_worker(srv.url, path, n, "--ready", str(r), "--go", str(go)) for r in ready]
        t0 = time.monotonic()
        while not all(r.exists() for r in ready):
            assert time.monotonic() - t0 < 60 and all(w.poll() is None for w in workers)
            time.sleep(0.02)
        go.touch()  # both start together (each has imported everything and opened the cache)
        a, b = (_result(w) for w in workers)
        assert srv.ok == n and set(srv.prompts.values()) == {1}  # every prompt paid exactly once
        assert sorted(srv.prompts) == sorted(r.prompt for r in prompts(n))
    for r in (a, b):
        assert r["final"] == n and r["scores"] == [65.0] * n
        s = r["stats"]
        assert s["requests"] + s["cached"] + s["extra"].get("from_another_process", 0) == n
    assert a["stats"]["requests"] + b["stats"]["requests"] == n  # the work was shared, not done twice
    assert _claims(path) == 0  # every claim released


def test_a_process_waits_for_the_answer_another_is_asking(tmp_path, key):
    n, path = 8, tmp_path / "judge_cache.sqlite"
    with LoopbackServer(default=HEALTHY, delay_s=1.0) as srv:
        first = _worker(srv.url, path, n, "--concurrency", str(n))
        _wait_for_claims(path, n, first)  # all 8 asked and pending
        cache = JudgeCache(path)
        t0 = time.monotonic()
        out, stats = run_judge(_judge(srv.url), prompts(n), cache, progress=False)
        waited = time.monotonic() - t0
        cache.close()
        other = _result(first)
        assert srv.ok == n and set(srv.prompts.values()) == {1}  # the second process paid for nothing
    assert stats.requests == 0 and stats.extra["from_another_process"] == n and stats.cached == 0
    assert [j.score for j in out] == other["scores"] == [65.0] * n and other["stats"]["requests"] == n
    assert waited < 10


def test_a_killed_owners_claims_are_taken_over_at_once(tmp_path, key, caplog):
    n, path = 8, tmp_path / "judge_cache.sqlite"
    with LoopbackServer(default=HEALTHY, slow_markers=("rate answer",), slow_s=60) as srv:
        owner = _worker(srv.url, path, n, "--concurrency", str(n), "--timeout", "120")
        _wait_for_claims(path, n, owner)
        owner.kill()  # kill -9 while its 8 requests hang: its claims stay in the file
        owner.wait()
        assert _claims(path) == n
        srv.slow_markers = ()
        srv.reset_counts()
        caplog.clear()
        cache = JudgeCache(path)  # default stale_after_s=60: only the dead pid lets it take over at once
        t0 = time.monotonic()
        out, stats = run_judge(_judge(srv.url), prompts(n), cache, progress=False)
        took = time.monotonic() - t0
        cache.close()
        assert srv.ok == n and set(srv.prompts.values()) == {1} and stats.requests == n
    assert all(j.final for j in out) and took < 10
    lines = _warnings(caplog, "taking over the claims")
    assert len(lines) == 1 and f"pid {owner.pid} on {socket.gethostname()} (process gone)" in lines[0]
    assert cache.taken_over == n


def test_a_silent_owner_on_another_host_is_taken_over_when_its_heartbeat_stops(tmp_path, key, caplog):
    path, reqs = tmp_path / "judge_cache.sqlite", [JudgeRequest(f"q{i}") for i in range(4)]
    with LoopbackServer(default=HEALTHY) as srv:
        judge = _judge(srv.url)
        JudgeCache(path).close()
        db = sqlite3.connect(path, isolation_level=None)  # what a process on node-17 left when it was lost
        db.execute("INSERT INTO owners VALUES ('node-17:4242:ab', 4242, 'node-17', 0, 7)")
        db.executemany("INSERT INTO claims VALUES (?, 'node-17:4242:ab', 0)",
                       [(request_key(judge.identity, r),) for r in reqs])
        db.close()
        cache = JudgeCache(path, stale_after_s=1.0)
        t0 = time.monotonic()
        out, stats = run_judge(judge, reqs, cache, progress=False)
        took = time.monotonic() - t0
        cache.close()
        assert srv.ok == 4 and stats.requests == 4 and all(j.final for j in out)
    assert 1.0 <= took < 20  # waited for the heartbeat to stay still for stale_after_s (1 s, not 60), then took over
    (line,) = _warnings(caplog, "taking over")
    assert re.search(r"taking over the claims of pid 4242 on node-17 \(no heartbeat for \d+ s\)", line)


def test_a_live_owners_heartbeat_keeps_its_claims(tmp_path):
    path = tmp_path / "c.sqlite"
    a, b = JudgeCache(path, heartbeat_s=0.1), JudgeCache(path, stale_after_s=0.5)
    assert a.claim("k") == ("mine", None)
    t0 = time.monotonic()
    while time.monotonic() - t0 < 1.5:  # three times stale_after_s: the beating owner keeps its claim
        assert b.claim("k") == ("busy", None)
        time.sleep(0.1)
    a.put("k", "judge-x", Judgment(score=3.0, raw=[["3", -0.01]]))
    status, j = b.claim("k")
    assert status == "cached" and j.score == 3.0
    a.close()
    b.close()


def test_the_wal_stays_small(tmp_path):
    """634 judgments (the issue's run): the WAL grew to ~4 MB and stayed; now it is checkpointed as it goes."""
    path = tmp_path / "judge_cache.sqlite"
    cache = JudgeCache(path)
    wal = Path(f"{path}-wal")
    biggest = 0
    for i in range(634):
        k = request_key("judge-x", JudgeRequest(f"prompt {i} " + "y" * 300))
        assert cache.claim(k) == ("mine", None)
        cache.put(k, "judge-x", Judgment(score=float(i % 100), raw=[[str(i % 100), -0.01]] * 20))
        biggest = max(biggest, wal.stat().st_size)
    assert len(cache) == 634
    assert biggest < 700_000, biggest  # a checkpoint every 32 writes (the old file: ~4 MB)
    cache.close()
    assert not wal.exists() or wal.stat().st_size == 0  # truncated on close
