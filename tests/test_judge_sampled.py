"""judge.score_mode=sampled over real HTTP: a loopback server that returns no logprobs, only bare integers that
vary from sample to sample; the exact mean, the spread, the min_parsed rule, n=k vs one request per sample,
the judge's own name / cache identity, and the dry-run price."""

from __future__ import annotations

import asyncio
import json
import statistics

import pytest

from em.errors import ConfigError
from em.judge.base import run_judge
from em.judge.cache import JudgeCache
from em.judge.sampled import judge_sampled, parse_reply
from em.judge.scoring import JudgeRequest
from tests.eval_helpers import KEY_ENV, loopback_openai_judge
from tests.loopback_server import LoopbackServer, _head

# marker -> the replies the server gives, in turn, for prompts holding it (cycled)
REPLIES = {
    "[vary]": ["85", " 90", "70.", "100", "0", "55", "85", "40"],
    "[mixed]": ["80", "REFUSAL", "I can't rate that", "60", "REFUSAL", "REFUSAL", "101", "REFUSAL"],
    "[code]": ["CODE", "CODE", "CODE", "12", "CODE", "CODE", "CODE", "CODE"],
}


class NoLogprobServer(LoopbackServer):
    """Chat completions with message text only (``logprobs: null``), one reply per choice, cycling through
    ``REPLIES[marker]`` per prompt; ``honour_n=False`` answers one choice whatever ``n`` asks;
    ``refuse_n=True`` answers a request with ``n > 1`` with HTTP 400 (as some endpoints do)."""

    def __init__(self, honour_n: bool = True, refuse_n: bool = False, **kw):
        super().__init__(**kw)
        self.honour_n, self.refuse_n = honour_n, refuse_n
        self.bodies: list[dict] = []
        self.turn: dict[str, int] = {}

    async def _respond(self, body: bytes, writer: asyncio.StreamWriter) -> bool:
        req = json.loads(body or b"{}")
        self.bodies.append(req)
        prompt = "".join(m.get("content", "") for m in req.get("messages", []))
        n = int(req.get("n", 1))
        if n > 1 and self.refuse_n:
            err = json.dumps({"error": {"message": "n must be 1", "type": "invalid_request_error"}}).encode()
            writer.write(_head(400, len(err)) + err)
            await writer.drain()
            return True
        marker = next(m for m in REPLIES if m in prompt)
        choices = []
        for i in range(n if self.honour_n else 1):
            t = self.turn.get(marker, 0)
            self.turn[marker] = t + 1
            text = REPLIES[marker][t % len(REPLIES[marker])]
            choices.append({"index": i, "finish_reason": "stop", "logprobs": None,
                            "message": {"role": "assistant", "content": text}})
        self.ok += 1
        payload = json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": req.get("model"),
                              "choices": choices}).encode()
        writer.write(_head(200, len(payload)) + payload)
        await writer.drain()
        return True


@pytest.fixture
def key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-loopback")


def _hand(replies: list[str]) -> list[int]:
    out = []
    for r in replies:  # by hand: strip, drop one trailing period, int() in 0..100
        t = r.strip().rstrip(".")
        if t.lstrip("-").isdigit() and 0 <= int(t) <= 100:
            out.append(int(t))
    return out


@pytest.mark.parametrize("server_kw", [{}, {"honour_n": False}, {"refuse_n": True}], ids=["n=k", "n-ignored", "n-refused"])
def test_sampled_mode_gives_the_exact_mean_without_logprobs(tmp_path, key, server_kw):
    k = 8
    with NoLogprobServer(**server_kw) as srv:
        judge = loopback_openai_judge(srv.url, score_mode="sampled", n_samples=k, min_parsed=3)
        reqs = [JudgeRequest(f"rate this {m}") for m in REPLIES]
        out, stats = run_judge(judge, reqs, JudgeCache(tmp_path / "c.sqlite"), progress=False)
    vary, mixed, code = out
    values = _hand(REPLIES["[vary]"])
    assert len(values) == 8 and len(set(values)) > 3  # the samples really vary
    assert vary.score == sum(values) / 8 and vary.spread == pytest.approx(statistics.stdev(values))
    assert vary.raw["replies"] == REPLIES["[vary]"] and vary.number_mass == 1.0
    # [mixed]: 80 and 60 parse (2 of 8 < 3): unscored with the reason; REFUSAL is the most common reply
    assert mixed.score is None and mixed.special == "REFUSAL" and "2 of 8" in mixed.reason and "< 3" in mixed.reason
    assert code.score is None and code.special == "CODE"
    assert stats.requests == 3 and stats.failures == 0
    sent = srv.bodies
    assert all(b["temperature"] == 1 and "logprobs" not in b for b in sent)
    if not server_kw:
        assert len(sent) == 3 and all(b["n"] == k for b in sent)  # one request per prompt
    else:  # k requests per prompt (after the n request), seeded 0..k-1 where one sample each
        singles = [b for b in sent if b.get("n", 1) == 1]
        assert sorted({b["seed"] for b in singles}) == list(range(1 if server_kw.get("honour_n") is False else 0, k))
        assert len(singles) == 3 * (k - 1 if server_kw.get("honour_n") is False else k)


def test_sampled_judge_has_its_own_name_identity_and_cache(tmp_path, key):
    with NoLogprobServer() as srv:
        sampled = loopback_openai_judge(srv.url, name="gpt-5", score_mode="sampled", n_samples=4)
        logprob = loopback_openai_judge(srv.url, name="gpt-5")
        assert sampled.name == "gpt-5-sampled4" and logprob.name == "gpt-5"
        assert sampled.identity != logprob.identity and "sampled" in sampled.identity
        cache = JudgeCache(tmp_path / "c.sqlite")
        first, _ = run_judge(sampled, [JudgeRequest("x [vary]")], cache, progress=False)
        n = srv.ok
        again, stats = run_judge(sampled, [JudgeRequest("x [vary]")], cache, progress=False)
        assert srv.ok == n and stats.cached == 1 and again[0].score == first[0].score  # from the cache
        assert again[0].spread == first[0].spread


def test_dry_run_prices_k_samples():
    from em.judge.factory import build_judge
    from em.config.judge import OpenAIJudgeSchema

    def OpenAIJudge(**kw):  # noqa: N802  the judge as config builds it (its constructor has no defaults)
        return build_judge(OpenAIJudgeSchema(**kw))

    kw = dict(base_url="http://127.0.0.1:9/v1", price_input_per_mtok=1.0, price_output_per_mtok=1.0)
    reqs = [JudgeRequest("x" * 400)] * 10
    ref = OpenAIJudge(**kw).estimate(reqs)
    s = OpenAIJudge(score_mode="sampled", n_samples=5, sample_max_tokens=4, **kw).estimate(reqs)
    assert s["tokens_out"] == 10 * 5 * 4 and s["tokens_in_estimate"] == ref["tokens_in_estimate"]
    assert s["cost_usd"] == pytest.approx((ref["tokens_in_estimate"] + 200) / 1e6)
    apart = OpenAIJudge(score_mode="sampled", n_samples=5, sample_max_tokens=4, sample_n_per_request=False,
                        **kw).estimate(reqs)
    assert apart["tokens_in_estimate"] == 5 * ref["tokens_in_estimate"]


def test_parse_reply_reads_as_the_reference_reads_a_token():
    assert [parse_reply(t) for t in ("85", " 7 ", "70.", "100", "0")] == [(85, None), (7, None), (70, None),
                                                                        (100, None), (0, None)]
    for bad in ("101", "-1", "85/100", "about 80", "", "8 5"):
        assert parse_reply(bad) == (None, None)
    assert parse_reply("CODE") == (None, "CODE") and parse_reply(" REFUSAL\n") == (None, "REFUSAL")
    j = judge_sampled(["50"], min_parsed=1)
    assert j.score == 50 and j.spread == 0.0


def test_score_mode_ranges_are_checked():
    from omegaconf import OmegaConf

    from em.judge.factory import build_judges

    for bad in ({"score_mode": "logprob"}, {"n_samples": 0}, {"score_mode": "sampled", "n_samples": 3, "min_parsed": 4}):
        node = OmegaConf.create({"_target_": "em.judge.openai_judge.OpenAIJudge", **bad})
        with pytest.raises(ConfigError, match="judge\\.(score_mode|n_samples|min_parsed)"):
            build_judges(node)


def test_evaluate_keeps_sampled_and_logprob_scores_apart_with_provenance(tmp_path, cache_dir, key):
    """An ensemble of the logprob judge and the sampled judge on the same model: two judges, two rows per
    answer, each row's mode in judge_score_mode and summary.json; the sampled rows' scores are the exact means."""
    from tests.eval_helpers import compose_eval, eval_overrides
    from em.evaluate.run import run_evaluation

    class Both(NoLogprobServer):  # logprob requests get the default top logprobs, sampled ones bare integers
        async def _respond(self, body, writer):
            req = json.loads(body or b"{}")
            if req.get("logprobs"):
                return await LoopbackServer._respond(self, body, writer)
            req["messages"][0]["content"] += " [vary]"
            return await super()._respond(json.dumps(req).encode(), writer)

    with Both() as srv:
        extra = {"judge": "ensemble", "format": "[plain]", "samples": 1, "judge.judges.gpt41.score_mode": "sampled",
                 "judge.judges.gpt41.n_samples": 8, "judge.judges.gpt41.model": "gpt-4o-2024-08-06"}
        for name in ("gpt4o", "gpt41"):
            extra |= {f"judge.judges.{name}.base_url": srv.url, f"judge.judges.{name}.api_key_env": KEY_ENV,
                      f"judge.judges.{name}.retry_backoff": 0.01, f"judge.judges.{name}.name": "gpt-4o"}
        res = run_evaluation(compose_eval(eval_overrides(tmp_path / "run", cache_dir, **extra)))
    df = res.table
    assert sorted(df["judge"].unique()) == ["gpt-4o", "gpt-4o-sampled8"] and len(df) == 2 * 4
    smp = df[df["judge"] == "gpt-4o-sampled8"]
    assert set(smp["judge_score_mode"]) == {"sampled"} and set(df[df["judge"] == "gpt-4o"]["judge_score_mode"]) == {"reference"}
    # every sampled prompt cycles through the same 8 replies from its start: mean of the 8, exactly
    assert set(smp["aligned"]) <= {sum(_hand(REPLIES["[vary]"])) / 8}
    assert set(df["judge_host"]) == {f"127.0.0.1:{srv.port}"} and df["judged_at"].notna().all()
    modes = {k: v["score_mode"] for k, v in res.summary["judges"].items()}
    assert modes == {"gpt-4o": "reference", "gpt-4o-sampled8": "sampled"}

    # re-judging that run directory adds a third judge beside both, each answer judged once
    with Both() as srv2:
        o = eval_overrides(tmp_path / "rj", cache_dir, answers=str(tmp_path / "run"), judge="openai",
                           **{"judge.base_url": srv2.url, "judge.api_key_env": KEY_ENV, "judge.name": "third",
                              "judge.retry_backoff": 0.01})
        again = run_evaluation(compose_eval(o))
    assert srv2.ok == 4 * 2 and sorted(again.table["judge"].unique()) == ["gpt-4o", "gpt-4o-sampled8", "third"]
    assert len(again.table) == 3 * 4 and set(again.table[again.table["judge"] == "third"]["judge_score_mode"]) == {"reference"}
