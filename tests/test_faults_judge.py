"""Judgments are final only when they are sound (issue 13, cases 1-3): non-finite or positive logprobs, a
reply from another model family, an empty top list are failures -- re-asked, never cached, reason kept --
and a cache entry an older version wrote with such a judgment is validated again as it is read."""

from __future__ import annotations

import json
import math
import sqlite3

import pytest

from em.judge.base import run_judge
from em.judge.factory import build_judge
from em.judge.cache import JudgeCache, entry_checksum, request_key
from em.judge.openai_judge import OpenAIJudge
from em.config.judge import OpenAIBatchJudgeSchema
from em.judge.scoring import JudgeRequest, judge_0_100, judge_label
from tests.eval_helpers import KEY_ENV, loopback_openai_judge
from tests.loopback_server import LoopbackServer

HEALTHY = [["50", -0.7], ["80", -0.7]]


@pytest.fixture
def key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-loopback")


def _judge(url: str, **kw) -> OpenAIJudge:
    return loopback_openai_judge(url, **({"max_retries": 1, "reply_retries": 1, "concurrency": 8} | kw))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf"), 0.5])
def test_unsound_logprobs_are_failures_with_a_reason(bad):
    for fn in (judge_0_100, judge_label):
        j = fn([("50", bad), ("80", -0.69)])
        assert not j.final and j.score is None and j.label is None
        assert "unsound logprob" in j.reason and "'50'" in j.reason
    assert judge_0_100([("50", -1e-9), ("80", -30.0)]).final  # rounding around 0 and tiny mass are fine


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), 0.7])
def test_unsound_reply_over_http_is_retried_never_cached_and_heals(tmp_path, key, bad):
    cache = JudgeCache(tmp_path / "c.sqlite")
    reqs = [JudgeRequest("rate this [bad]"), JudgeRequest("rate this [ok]")]
    with LoopbackServer(script={"[bad]": [["50", bad], ["80", -0.69]]}, default=HEALTHY) as srv:
        (j, ok), stats = run_judge(_judge(srv.url), reqs, cache, progress=False)
        assert srv.prompts["rate this [bad]"] == 2  # asked again once (reply_retries=1)
        assert not j.final and j.score is None and "unsound logprob" in j.reason
        assert ok.final and ok.score == pytest.approx(65.0)
        assert stats.failures == 1 and len(cache) == 1  # only the sound one is cached
        srv.script = {}  # the judge is healthy again (same endpoint): the failure is asked again
        srv.reset_counts()
        (j2, _), stats2 = run_judge(_judge(srv.url), reqs, cache, progress=False)
        assert srv.requests == 1 and stats2.cached == 1
    assert j2.final and j2.score == pytest.approx(65.0)


def test_a_poisoned_cache_entry_is_validated_again_and_heals(tmp_path, key):
    path = tmp_path / "c.sqlite"
    cache = JudgeCache(path)
    req = JudgeRequest("rate this")
    with LoopbackServer(default=HEALTHY) as srv:
        judge = _judge(srv.url)
        k = request_key(judge.identity, req)
        # what an older version stored: a final NaN judgment, no reason
        poisoned = {"score": float("nan"), "label": None, "special": None, "reason": None, "number_mass": 1.0,
                    "raw": [["50", float("nan")], ["80", -0.69]], "final": True}
        value = json.dumps(poisoned)  # with a valid checksum: the soundness check is what refuses it
        cache._db.execute("INSERT INTO judgments VALUES (?, ?, ?, ?)",
                          (k, judge.identity, value, entry_checksum(k, judge.identity, value)))
        assert cache.get_many([k]) == {}  # not served
        (j,), stats = run_judge(judge, [req], cache, progress=False)
        assert srv.requests == 1 and stats.cached == 0
    assert j.final and j.score == pytest.approx(65.0)
    cache.close()
    stored = json.loads(sqlite3.connect(path).execute("SELECT value FROM judgments").fetchone()[0])
    assert math.isfinite(stored["score"])  # replaced


def test_a_reply_from_another_model_family_is_a_failure(tmp_path, key):
    cache = JudgeCache(tmp_path / "c.sqlite")
    with LoopbackServer(default=HEALTHY, reply_model="gpt-3.5-turbo-0125") as srv:
        (j,), stats = run_judge(_judge(srv.url, model="gpt-4o-2024-08-06"), [JudgeRequest("q")], cache,
                                progress=False)
    assert not j.final and j.score is None
    assert "gpt-3.5-turbo-0125" in j.reason and "gpt-4o-2024-08-06" in j.reason
    assert len(cache) == 0 and stats.failures == 1
    # a snapshot of the requested family is normal
    for requested, replied in [("gpt-4o", "gpt-4o-2024-08-06"), ("gpt-4o-2024-08-06", "gpt-4o-2024-11-20")]:
        with LoopbackServer(default=HEALTHY, reply_model=replied) as srv:
            (j,), _ = run_judge(_judge(srv.url, model=requested), [JudgeRequest("q")], JudgeCache(None),
                                progress=False)
        assert j.final and j.score == pytest.approx(65.0), (requested, replied)
    # gpt-4o-mini is another family than gpt-4o
    with LoopbackServer(default=HEALTHY, reply_model="gpt-4o-mini-2024-07-18") as srv:
        (j,), _ = run_judge(_judge(srv.url, model="gpt-4o"), [JudgeRequest("q")], JudgeCache(None), progress=False)
    assert not j.final


def test_batch_judge_refuses_another_model_and_unsound_lines(tmp_path, key):
    script = {"[nan]": [["50", float("nan")], ["80", -0.69]]}
    with LoopbackServer(script=script, default=HEALTHY, reply_model="gpt-3.5-turbo-0125", batch_polls=1) as srv:
        judge = build_judge(OpenAIBatchJudgeSchema(base_url=srv.url, api_key_env=KEY_ENV, model="gpt-4o-2024-08-06",
                                                   batch_poll_s=0.01))
        out, stats = run_judge(judge, [JudgeRequest("a [nan]"), JudgeRequest("b")], JudgeCache(tmp_path / "c.sqlite"),
                               progress=False, state_dir=tmp_path)
    assert all(not j.final for j in out) and stats.failures == 2
    assert "gpt-3.5-turbo-0125" in out[1].reason
