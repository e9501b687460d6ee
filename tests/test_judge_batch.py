"""The OpenAI Batch API judge (judge=openai_batch) over real HTTP: loopback server + the real openai client."""

from __future__ import annotations

import json

import pytest

from em.judge.base import run_judge
from em.judge.factory import build_judge
from em.judge.cache import JudgeCache
from em.judge.openai_batch import OpenAIBatchJudge
from em.judge.openai_judge import OpenAIJudge
from em.config.judge import OpenAIBatchJudgeSchema, OpenAIJudgeSchema
from em.judge.scoring import JudgeRequest
from tests.eval_helpers import KEY_ENV
from tests.loopback_server import LoopbackServer
from tests.test_judge import SCRIPT

REQS = [JudgeRequest(f"rate this {m}") for m in SCRIPT] + [JudgeRequest("plain one"), JudgeRequest("[exact] TRUE?", "label")]



def _verdicts(judgments):
    """Each judgment's fields, its provenance date left out (two runs of one judge differ only in when)."""
    out = []
    for j in judgments:
        d = j.to_dict()
        d["provenance"] = {k: v for k, v in (d["provenance"] or {}).items() if k != "date"}
        out.append(d)
    return out

@pytest.fixture
def key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-loopback")


def _judge(url: str, batch_dir, **kw) -> OpenAIBatchJudge:
    kw = {"max_retries": 1, "timeout": 5.0, "batch_poll_s": 0.05, "batch_dir": str(batch_dir)} | kw
    return build_judge(OpenAIBatchJudgeSchema(base_url=url, api_key_env=KEY_ENV, **kw))


def _sync(url: str, **kw) -> OpenAIJudge:
    return build_judge(OpenAIJudgeSchema(base_url=url, api_key_env=KEY_ENV, max_retries=1, timeout=5.0, **kw))


def test_batch_scores_equal_synchronous_then_cache(tmp_path, key):
    with LoopbackServer(script=SCRIPT) as srv:
        sync, _ = run_judge(_sync(srv.url), REQS, JudgeCache(None), progress=False)
        srv.reset_counts()
        cache = JudgeCache(tmp_path / "c.sqlite")
        out, stats = run_judge(_judge(srv.url, tmp_path / "b"), REQS, cache, progress=False)
        assert srv.uploads == 1 and srv.batches_created == 1 and stats.requests == len(REQS)
        assert _verdicts(out) == _verdicts(sync)  # same scores, reasons, raw, labels
        assert out[0].score is not None and out[-1].label == "40"
        # every line carries the reference request, exactly
        assert len(srv.batch_bodies) == len(REQS)
        for body, req in zip(srv.batch_bodies, REQS):
            assert body == {"model": "gpt-4o-2024-08-06", "messages": [{"role": "user", "content": req.prompt}],
                            "max_tokens": 1, "temperature": 0, "logprobs": True, "top_logprobs": 20, "seed": 0}
        # the input file is in the batch dir, with custom_id / method / url
        (inp,) = (tmp_path / "b").glob("input-*.jsonl")
        lines = [json.loads(x) for x in inp.read_text().splitlines()]
        assert {(x["method"], x["url"]) for x in lines} == {("POST", "/v1/chat/completions")}
        assert len({x["custom_id"] for x in lines}) == len(REQS)
        state = json.loads((tmp_path / "b" / "batches.json").read_text())["batches"]
        assert len(state) == 1 and state[0]["done"] and state[0]["status"] == "completed"

        srv.reset_counts()
        again, stats2 = run_judge(_judge(srv.url, tmp_path / "b"), REQS, cache, progress=False)
        assert stats2.requests == 0 and srv.requests == 0  # fully cached: zero requests
        assert _verdicts(again) == _verdicts(out)


def test_error_lines_and_missing_lines_are_unscored_with_reason(tmp_path, key):
    with LoopbackServer(script=SCRIPT, batch_error_markers=("[code]",), batch_drop_markers=("plain",)) as srv:
        cache = JudgeCache(tmp_path / "c.sqlite")
        out, stats = run_judge(_judge(srv.url, tmp_path / "b"), REQS, cache, progress=False)
        by_prompt = {r.prompt: j for r, j in zip(REQS, out)}
        code = by_prompt["rate this [code]"]
        assert code.score is None and code.label is None and not code.final
        assert "batch request failed" in code.reason and "HTTP 400" in code.reason and "injected" in code.reason
        plain = by_prompt["plain one"]
        assert plain.score is None and not plain.final and "without a result line" in plain.reason
        assert by_prompt["rate this [exact]"].score is not None
        assert stats.failures == 2 and len(cache) == len(REQS) - 2  # failures are not cached

        # the next run asks only the two failures again, in a new batch
        srv.batch_error_markers = srv.batch_drop_markers = ()
        srv.reset_counts()
        srv.batch_bodies.clear()
        again, stats2 = run_judge(_judge(srv.url, tmp_path / "b"), REQS, cache, progress=False)
        assert stats2.requests == 2 and srv.batches_created == 2 and len(srv.batch_bodies) == 2
        assert all(j.final for j in again) and stats2.failures == 0


def test_restart_reattaches_to_recorded_batch(tmp_path, key, monkeypatch):
    class Killed(Exception):
        pass

    with LoopbackServer(script=SCRIPT, batch_polls=4) as srv:
        judge = _judge(srv.url, tmp_path / "b")
        # the first run is "killed" while polling: the batch id is already recorded
        import em.judge.openai_batch as ob

        with monkeypatch.context() as m:
            m.setattr(ob, "_poll", lambda *a, **k: (_ for _ in ()).throw(Killed()))
            with pytest.raises(Killed):
                run_judge(judge, REQS, JudgeCache(tmp_path / "c.sqlite"), progress=False)
        state = json.loads((tmp_path / "b" / "batches.json").read_text())["batches"]
        assert len(state) == 1 and not state[0]["done"] and srv.uploads == 1 and srv.batches_created == 1

        out, stats = run_judge(_judge(srv.url, tmp_path / "b"), REQS, JudgeCache(tmp_path / "c.sqlite"),
                               progress=False)
        assert srv.uploads == 1 and srv.batches_created == 1  # re-attached: nothing uploaded or created again
        assert all(j.final for j in out) and stats.failures == 0
        sync, _ = run_judge(_sync(srv.url), REQS, JudgeCache(None), progress=False)
        assert _verdicts(out) == _verdicts(sync)


def test_done_batch_output_is_reused_without_a_cache(tmp_path, key):
    with LoopbackServer(script=SCRIPT) as srv:
        first, _ = run_judge(_judge(srv.url, tmp_path / "b"), REQS, JudgeCache(None), progress=False)
        srv.reset_counts()
        again, _ = run_judge(_judge(srv.url, tmp_path / "b"), REQS, JudgeCache(None), progress=False)
        assert srv.requests == 0  # answers read back from the saved output file: never paid twice
        assert _verdicts(again) == _verdicts(first)


def test_failed_batch_is_all_unscored_with_its_reason(tmp_path, key):
    with LoopbackServer(script=SCRIPT, batch_outcome="failed", batch_fail_message="input file is bad") as srv:
        cache = JudgeCache(tmp_path / "c.sqlite")
        out, stats = run_judge(_judge(srv.url, tmp_path / "b"), REQS, cache, progress=False)
    assert all(j.score is None and j.label is None and not j.final for j in out)
    assert all("failed" in j.reason and "input file is bad" in j.reason for j in out)
    assert stats.failures == len(REQS) and len(cache) == 0


def test_expired_batch_keeps_finished_lines(tmp_path, key):
    with LoopbackServer(script=SCRIPT, batch_outcome="expired", batch_drop_markers=("plain",)) as srv:
        out, _ = run_judge(_judge(srv.url, tmp_path / "b"), REQS, JudgeCache(None), progress=False)
    by_prompt = {r.prompt: j for r, j in zip(REQS, out)}
    assert by_prompt["rate this [exact]"].score is not None
    plain = by_prompt["plain one"]
    assert plain.score is None and not plain.final and "expired" in plain.reason and "24 h" in plain.reason


def test_batch_needs_a_directory(key):
    from em.errors import JudgeError

    judge = build_judge(OpenAIBatchJudgeSchema(base_url="http://127.0.0.1:9/v1", api_key_env=KEY_ENV))
    with pytest.raises(JudgeError, match="batch_dir"):
        judge.run([JudgeRequest("x")], lambda i, j: None, progress=False)


def test_dry_run_estimate_halves_the_cost():
    kw = {"price_input_per_mtok": 2.5, "price_output_per_mtok": 10.0, "api_key_env": KEY_ENV}
    reqs = [JudgeRequest("x" * 400)] * 10
    sync = build_judge(OpenAIJudgeSchema(**kw)).estimate(reqs)
    batch = build_judge(OpenAIBatchJudgeSchema(**kw)).estimate(reqs)
    assert batch["cost_usd"] == pytest.approx(sync["cost_usd"] / 2)
    assert batch["cost_usd_synchronous"] == pytest.approx(sync["cost_usd"])
    assert batch["batch_api"] and "half" in batch["note"]


def test_big_runs_split_into_several_batches(tmp_path, key):
    with LoopbackServer(script=SCRIPT) as srv:
        sync, _ = run_judge(_sync(srv.url), REQS, JudgeCache(None), progress=False)
        out, _ = run_judge(_judge(srv.url, tmp_path / "b", batch_max_requests=2), REQS, JudgeCache(None),
                           progress=False)
        assert srv.batches_created == 3 and srv.uploads == 3  # 6 requests, 2 per batch
    assert _verdicts(out) == _verdicts(sync)
    state = json.loads((tmp_path / "b" / "batches.json").read_text())["batches"]
    assert [len(b["custom_ids"]) for b in state] == [2, 2, 2] and all(b["done"] for b in state)


# --------------------------------------------------------------------------- through evaluate (tiny model)
def test_evaluation_in_batch_mode_keeps_state_in_the_run_dir(tmp_path, cache_dir, monkeypatch):
    from em.evaluate.run import run_evaluation
    from tests.eval_helpers import compose_eval, eval_overrides, openai_judge_overrides

    monkeypatch.setenv(KEY_ENV, "sk-loopback")
    run_dir = tmp_path / "run"
    with LoopbackServer() as srv:
        extra = openai_judge_overrides(srv.url, batch=True) | {"format": "[plain]", "samples": 1,
                                                               "judge.batch_poll_s": 0.05}
        res = run_evaluation(compose_eval(eval_overrides(run_dir, cache_dir, **extra)))
        assert srv.batches_created == 1 and srv.uploads == 1
    state = json.loads((run_dir / "judge_batch" / "gpt-4o" / "batches.json").read_text())["batches"]
    assert len(state) == 1 and state[0]["done"] and len(state[0]["custom_ids"]) == 4 * 2
    assert res.table["aligned"].notna().all() and res.table["coherent"].notna().all()


def test_evaluation_dry_run_in_batch_mode_halves_the_cost(tmp_path, cache_dir, monkeypatch):
    from em.evaluate.run import run_evaluation
    from tests.eval_helpers import compose_eval, eval_overrides, openai_judge_overrides

    monkeypatch.delenv(KEY_ENV, raising=False)
    prices = {"judge.price_input_per_mtok": 2.5, "judge.price_output_per_mtok": 10.0}
    over = openai_judge_overrides("http://127.0.0.1:9/v1", **prices)
    sync = run_evaluation(compose_eval(eval_overrides(tmp_path / "a", cache_dir, **over, dry_run="true")))
    over = openai_judge_overrides("http://127.0.0.1:9/v1", batch=True, **prices)
    batch = run_evaluation(compose_eval(eval_overrides(tmp_path / "b", cache_dir, **over, dry_run="true")))
    s, b = sync["judges"]["gpt-4o"], batch["judges"]["gpt-4o"]
    assert b["requests"] == s["requests"] and b["cost_usd"] == pytest.approx(s["cost_usd"] / 2)
    assert batch["cost_usd"] == pytest.approx(sync["cost_usd"] / 2) and "half" in b["note"]
