"""A silent judge stops the run early (issue 19, case 5), over real HTTP on loopback, bounded in time.

A server that accepts connections and never answers (a stuck proxy) passed the old start-up check (a TCP
connect) and cost every request timeout x tries; a judge that stops answering mid-run was never given up on.
Now the start-up check makes one real request (``GET /models``) with a short timeout, before any sampling, and
``judge.max_consecutive_failures`` requests in a row without an answer stop the run: everything kept, one
line, exit 2.
"""

from __future__ import annotations

import json
import socket
import threading
import time

import pandas as pd
import pytest

from em.errors import JudgeError
from em.judge.base import run_judge
from em.judge.cache import JudgeCache
from em.judge.scoring import JudgeRequest
from tests.eval_helpers import KEY_ENV, eval_overrides, loopback_openai_judge, openai_judge_overrides
from tests.loopback_server import LoopbackServer

HEALTHY = [["50", -0.7], ["80", -0.7]]


@pytest.fixture
def key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-loopback")


class StuckProxy:
    """A loopback socket server that accepts every connection, reads what comes and never replies."""

    def __enter__(self) -> "StuckProxy":
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/v1"
        self.accepted = 0
        self.conns: list[socket.socket] = []
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()
        return self

    def _serve(self) -> None:
        self.sock.settimeout(0.1)
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.accepted += 1
            self.conns.append(conn)  # held open, never answered

    def __exit__(self, *exc) -> None:
        self._stop = True
        self._thread.join(2)
        for c in self.conns:
            c.close()
        self.sock.close()


def test_the_start_up_check_catches_a_server_that_accepts_and_never_answers(key):
    with StuckProxy() as proxy:
        judge = loopback_openai_judge(proxy.url, timeout=1.0, max_retries=3)
        t0 = time.perf_counter()
        with pytest.raises(JudgeError, match=r"judge.base_url: http://127.0.0.1:\d+/v1 did not answer in 1 s") as e:
            judge.check_reachable()
        took = time.perf_counter() - t0
        assert proxy.accepted == 1  # a TCP connect succeeds: the old check passed here
    assert "\n" not in str(e.value) and 0.9 < took < 3


def test_the_start_up_check_is_one_free_request(key):
    with LoopbackServer() as srv:
        loopback_openai_judge(srv.url).check_reachable()
        assert srv.probes == 1 and srv.requests == 0 and srv.ok == 0  # GET /models: nothing billed


def test_a_judge_that_stops_answering_stops_the_run_after_max_consecutive_failures(tmp_path, key):
    ok = [JudgeRequest(f"rate this #{i}") for i in range(10)]
    dead = [JudgeRequest(f"rate this [dead] #{i}") for i in range(100)]
    cache = JudgeCache(tmp_path / "c.sqlite")
    with LoopbackServer(default=HEALTHY, slow_markers=("[dead]",), slow_s=5) as srv:
        judge = loopback_openai_judge(srv.url, timeout=0.3, max_retries=0, concurrency=4,
                                      max_consecutive_failures=16)
        t0 = time.perf_counter()
        with pytest.raises(JudgeError, match=r"16 requests in a row got no answer .* stopped asking "
                                             r"\(judge.max_consecutive_failures=16\)") as e:
            run_judge(judge, ok + dead, cache, progress=False)
        took = time.perf_counter() - t0
        assert srv.ok == 10 and srv.fault_counts["slow"] <= 16 + 4  # not 100: the run stopped after 16 (+ in flight)
    assert "\n" not in str(e.value) and "the 10 judgments of this run are kept" in str(e.value)
    assert len(cache) == 10 and took < 30  # everything judged before is kept; bounded (before: all 100 asked)
    cache.close()


def test_max_consecutive_failures_zero_never_stops(tmp_path, key):
    with LoopbackServer(default=HEALTHY, slow_markers=("[dead]",), slow_s=5) as srv:
        judge = loopback_openai_judge(srv.url, timeout=0.2, max_retries=0, concurrency=8, max_consecutive_failures=0)
        out, stats = run_judge(judge, [JudgeRequest(f"[dead] {i}") for i in range(24)], JudgeCache(None),
                               progress=False)
        assert srv.fault_counts["slow"] == 24 and stats.failures == 24
    assert all("APITimeoutError" in j.reason for j in out)


def test_evaluation_with_a_stuck_proxy_stops_before_sampling(tmp_path, cache_dir, key):
    from em.evaluate.run import run_evaluation
    from tests.eval_helpers import compose_eval

    run_dir = tmp_path / "run"
    with StuckProxy() as proxy:
        cfg = compose_eval(eval_overrides(run_dir, cache_dir, samples=2, format="[plain]",
                                          **openai_judge_overrides(proxy.url, **{"judge.timeout": 0.5})))
        t0 = time.perf_counter()
        with pytest.raises(JudgeError, match=r"did not answer in 0.5 s") as e:
            run_evaluation(cfg)
        took = time.perf_counter() - t0
    assert "\n" not in str(e.value)  # evaluate.py prints it as one line and exits 2 (em.commands.run_main)
    answers = run_dir / "answers.jsonl"
    assert not answers.exists() or not answers.read_text().strip()  # caught before any answer was sampled
    assert took < 60


def test_evaluation_whose_judge_goes_silent_keeps_everything_and_exits_2(tmp_path, cache_dir, key, capsys):
    from em.commands import run_main
    from em.evaluate.run import run_evaluation
    from tests.eval_helpers import compose_eval

    run_dir = tmp_path / "run"
    with LoopbackServer(default=HEALTHY, slow_markers=("",), slow_s=5) as srv:  # answers GET /models only
        cfg = compose_eval(eval_overrides(run_dir, cache_dir, samples=2, format="[plain]", **openai_judge_overrides(
            srv.url, **{"judge.timeout": 0.5, "judge.max_retries": 0, "judge.concurrency": 2,
                        "judge.max_consecutive_failures": 4})))
        capsys.readouterr()
        with pytest.raises(SystemExit) as e:
            run_main(run_evaluation, cfg)  # what evaluate.py runs: one line, exit 2
        asked = srv.fault_counts["slow"]
    assert e.value.code == 2
    (line,) = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert "4 requests in a row got no answer" in line and "max_consecutive_failures=4" in line
    answers = [json.loads(ln) for ln in (run_dir / "answers.jsonl").read_text().splitlines() if ln.strip()]
    table = pd.read_parquet(run_dir / "responses.parquet")  # every sampled answer kept, unscored with a reason
    assert len(table) == len(answers) == 8 and table["coherent"].isna().all()
    assert asked <= 4 + 2 < 2 * len(answers)  # stopped after 4 (+ the ones in flight), not all 16 requests
