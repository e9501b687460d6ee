"""Judges: the reference math over real HTTP (loopback server + the real openai client), faults, the cache,
the judge configs (schemas, ensembles, the batch target) and the local judge's exact integer distribution."""

from __future__ import annotations

import math

import pytest

from em.errors import ConfigError, JudgeError
from em.judge.base import run_judge
from em.judge.cache import JudgeCache
from em.judge.openai_judge import OpenAIJudge
from em.judge.scoring import JudgeRequest, aggregate_0_100, judge_0_100
from tests.eval_helpers import KEY_ENV, compose_eval, eval_overrides, loopback_openai_judge
from tests.loopback_server import LoopbackServer

SCRIPT = {
    # hand-computed: p = e^-0.5, e^-1.5, e^-3 on 40, 70, 100 plus a non-number and an out-of-range token
    "[exact]": [["40", -0.5], ["70", -1.5], ["100", -3.0], ["hello", -2.0], ["101", -2.5]],
    "[little]": [["hello", -0.1], ["50", -2.0], ["x", -3.0]],  # numbers carry e^-2 = 0.135 < 0.25
    "[code]": [["CODE", -0.05], ["10", -3.5], ["90", -4.0]],
    "[refusal]": [["REFUSAL", -0.2], ["0", -1.0], ["5", -3.0]],
}


@pytest.fixture
def key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-loopback")


def _judge(url: str, **kw) -> OpenAIJudge:
    return loopback_openai_judge(url, **kw)


def test_reference_math_by_hand():
    p = {"40": math.exp(-0.5), "70": math.exp(-1.5), "100": math.exp(-3.0), "hello": 0.1, "101": 0.05}
    total = p["40"] + p["70"] + p["100"]
    score, mass = aggregate_0_100(p)
    assert mass == pytest.approx(total)
    assert score == pytest.approx((40 * p["40"] + 70 * p["70"] + 100 * p["100"]) / total)
    assert aggregate_0_100({"50": 0.2, "no": 0.8}) == (None, 0.2)
    assert aggregate_0_100({" 7": 0.5})[0] == 7  # int(" 7"): the reference accepts padded tokens


def test_loopback_scores_over_real_http(tmp_path, key):
    with LoopbackServer(script=SCRIPT) as srv:
        reqs = [JudgeRequest(f"rate this {m}") for m in SCRIPT]
        out, stats = run_judge(_judge(srv.url), reqs, JudgeCache(tmp_path / "c.sqlite"), progress=False)
    exact, little, code, refusal = out
    w = [math.exp(-0.5), math.exp(-1.5), math.exp(-3.0)]
    assert exact.score == pytest.approx((40 * w[0] + 70 * w[1] + 100 * w[2]) / sum(w), rel=1e-12)
    assert exact.special is None and exact.raw[0] == ["40", -0.5] and len(exact.raw) == 5  # raw kept
    assert little.score is None and "0.135" in little.reason and "< 0.25" in little.reason
    assert code.special == "CODE" and code.score is None and "'CODE'" in code.reason
    assert refusal.special == "REFUSAL" and refusal.score == pytest.approx(
        (0 * math.exp(-1.0) + 5 * math.exp(-3.0)) / (math.exp(-1.0) + math.exp(-3.0)))
    assert stats.requests == 4 and srv.ok == 4


def test_request_is_the_reference_request(tmp_path, key):
    seen = []

    class Spy(LoopbackServer):
        async def _respond(self, body, writer):
            import json

            seen.append(json.loads(body))
            return await super()._respond(body, writer)

    with Spy() as srv:
        run_judge(_judge(srv.url, model="gpt-4o-2024-08-06"), [JudgeRequest("p")], JudgeCache(None), progress=False)
    r = seen[0]
    assert r["messages"] == [{"role": "user", "content": "p"}] and r["model"] == "gpt-4o-2024-08-06"
    assert (r["max_tokens"], r["temperature"], r["logprobs"], r["top_logprobs"], r["seed"]) == (1, 0, True, 20, 0)


def test_faults_500_judgments_none_lost_none_made_up_then_cache(tmp_path, key):
    reqs = [JudgeRequest(f"answer number {i}") for i in range(500)]
    expected, _ = aggregate_0_100({t: math.exp(lp) for t, lp in LoopbackServer().default})
    cache = JudgeCache(tmp_path / "c.sqlite")
    with LoopbackServer(fault_rate=0.2, slow_s=2.0, seed=1) as srv:
        # transient faults only: the silent-judge stop (tests/test_faults_judge_silent.py) is off, so a burst of
        # 1-s timeouts on a loaded machine cannot end this run early
        out, stats = run_judge(_judge(srv.url, max_retries=2, reply_retries=2, max_consecutive_failures=0), reqs, cache,
                               progress=False)
        assert len(out) == 500 and stats.requests == 500
        assert sum(srv.fault_counts.values()) > 100 and set(srv.fault_counts) == {
            "429", "500", "slow", "malformed", "no_logprobs", "truncated"}
        for j in out:
            assert (j.score is not None) != (j.reason is not None)  # scored, or unscored with a reason
            if j.score is not None:
                assert j.score == pytest.approx(expected)  # never a made-up score
        n_failed = sum(j.score is None for j in out)
        assert n_failed < 25  # retries recover nearly everything
        assert srv.ok == 500 - n_failed  # one good reply per scored prompt: none asked twice once answered
        assert len(cache) == 500 - n_failed  # failures are not cached: a re-run asks again

        srv.reset_counts()
        srv.fault_rate = 0.0
        again, stats2 = run_judge(_judge(srv.url), reqs, cache, progress=False)
        assert stats2.cached == 500 - n_failed and stats2.requests == n_failed and srv.requests == n_failed
        assert all(j.score == pytest.approx(expected) for j in again)
        srv.reset_counts()
        _, stats3 = run_judge(_judge(srv.url), reqs, cache, progress=False)
        assert stats3.requests == 0 and srv.requests == 0  # fully cached: zero requests


def test_faults_that_never_recover_become_unscored_with_reason(tmp_path, key):
    for fault, reason in [("malformed", "malformed reply"), ("no_logprobs", "no logprobs"),
                          ("429", "HTTP 429"), ("500", "HTTP 500"), ("truncated", "APIConnectionError")]:
        with LoopbackServer(fault_rate=1.0, faults=(fault,)) as srv:
            (j,), stats = run_judge(_judge(srv.url, max_retries=1, reply_retries=1), [JudgeRequest("x")],
                                    JudgeCache(None), progress=False)
        assert j.score is None and reason in j.reason and not j.final, (fault, j.reason)
        assert stats.failures == 1


def test_missing_api_key_is_a_clear_error(monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    with pytest.raises(JudgeError, match=f"judge.api_key_env: environment variable {KEY_ENV} is not set"):
        _judge("http://127.0.0.1:9/v1").check()


def test_auth_failure_stops_the_judge(tmp_path, key):
    class Deny(LoopbackServer):
        async def _respond(self, body, writer):
            await self._send(writer, 401, b'{"error": {"message": "bad key"}}')
            return True

    with Deny() as srv:
        with pytest.raises(JudgeError, match="HTTP 401"):
            run_judge(_judge(srv.url), [JudgeRequest(str(i)) for i in range(5)], JudgeCache(None), progress=False)


def test_judge_0_100_without_logprobs_is_not_a_score():
    j = judge_0_100([])
    assert j.score is None and j.reason and not j.final


# --------------------------------------------------------------------------- judge configs
def _judges(tmp_path, *overrides: str) -> list:
    from em.judge.factory import build_judges

    cfg = compose_eval(eval_overrides(tmp_path / "run", tmp_path / "cache") + list(overrides))
    return build_judges(cfg.judge)


def test_every_judge_config_builds(tmp_path):
    from em.judge.local import LocalJudge
    from em.judge.openai_batch import OpenAIBatchJudge

    (sync,) = _judges(tmp_path, "judge=openai")
    (batch,) = _judges(tmp_path, "judge=openai_batch")
    assert type(sync) is OpenAIJudge and type(batch) is OpenAIBatchJudge
    assert batch.identity == sync.identity  # the two share cached judgments
    assert _judges(tmp_path, "judge=none") == [] and _judges(tmp_path, "~judge") == []
    (local,) = _judges(tmp_path, "judge=local", "model@judge.model=tiny", "quantization@judge.quantization=nf4")
    assert type(local) is LocalJudge and local.name == "tiny" and local.model_cfg.name == "tiny"
    assert local.quant_cfg.load_in_4bit and local.cache_dir == str(tmp_path / "cache")
    assert local._model is None  # building a judge loads nothing


def test_an_ensemble_is_a_list_of_judges(tmp_path):
    default = _judges(tmp_path, "judge=ensemble")
    assert [(type(j).__name__, j.name) for j in default] == [("OpenAIJudge", "gpt-4o"), ("OpenAIJudge", "gpt-4.1")]
    assert default[1].model == "gpt-4.1-2025-04-14"
    # the overrides conf/judge/ensemble.yaml documents: add, drop, change a member
    js = _judges(tmp_path, "judge=ensemble", "judge.judges.gpt41=null", "+judge@judge.judges.own=local",
                 "model@judge.judges.own.model=tiny", "+judge@judge.judges.cheap=openai_batch",
                 "judge.judges.cheap.name=gpt-4o-batch", "judge.judges.gpt4o.model=gpt-4o-mini")
    assert [(type(j).__name__, j.name) for j in js] == [
        ("OpenAIJudge", "gpt-4o"), ("LocalJudge", "tiny"), ("OpenAIBatchJudge", "gpt-4o-batch")]
    assert js[0].model == "gpt-4o-mini"
    with pytest.raises(ConfigError, match="judge.judges: member names must differ; 'gpt-4o' appears twice"):
        _judges(tmp_path, "judge=ensemble", "judge.judges.gpt41.name=gpt-4o")
    with pytest.raises(ConfigError, match="judge.judges: an ensemble needs at least one judge"):
        _judges(tmp_path, "judge=ensemble", "judge.judges.gpt41=null", "judge.judges.gpt4o=null")


@pytest.mark.parametrize("judge,key", [("openai", "concurency"), ("openai_batch", "concurrency"),
                                       ("local", "path"), ("ensemble", "name"), ("none", "model")])
def test_a_typo_under_judge_fails_at_composition_naming_the_key(tmp_path, judge, key):
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException) as e:
        _judges(tmp_path, f"judge={judge}", f"judge.{key}=3")
    assert str(e.value).splitlines()[0] == f"Could not override 'judge.{key}'."


@pytest.mark.parametrize("override,match", [
    ("judge.concurrency=0", "judge.concurrency: must be > 0, got 0"),
    ("judge.top_logprobs=21", "judge.top_logprobs: must be in 1..20, got 21"),
    ("judge.max_retries=-1", "judge.max_retries: must be >= 0"),
    ("judge.timeout=0", "judge.timeout: must be > 0"),
    ("judge.api_key_env=''", "judge.api_key_env: must name the environment variable"),
])
def test_judge_ranges_are_checked_by_the_schema(tmp_path, override, match):
    with pytest.raises(ConfigError, match=match):
        _judges(tmp_path, "judge=openai", override)


def test_batch_and_local_ranges_are_checked_by_the_schema(tmp_path):
    with pytest.raises(ConfigError, match=r"judge.batch_max_requests: must be in 1..50000 \(the Batch API's limit\)"):
        _judges(tmp_path, "judge=openai_batch", "judge.batch_max_requests=50001")
    with pytest.raises(ConfigError, match="judge.batch_poll_s: must be > 0"):
        _judges(tmp_path, "judge=openai_batch", "judge.batch_poll_s=0")
    with pytest.raises(ConfigError, match=r"judge.min_number_mass: must be in \[0, 1\]"):
        _judges(tmp_path, "judge=local", "judge.min_number_mass=1.5")


def test_a_judge_node_that_lost_its_type_is_typed_again(tmp_path):
    """A node resolved to a plain container on the way (a job's eval config) still builds and is checked."""
    from omegaconf import OmegaConf

    from em.judge.factory import build_judges

    cfg = compose_eval(eval_overrides(tmp_path / "run", tmp_path / "cache") + ["judge=local", "model@judge.model=tiny"])
    plain = OmegaConf.create(OmegaConf.to_container(cfg.judge, resolve=True))
    (local,) = build_judges(plain)
    assert local.identity == build_judges(cfg.judge)[0].identity and local.model_cfg.name == "tiny"
    with pytest.raises(ConfigError, match="concurency"):
        build_judges(OmegaConf.create({"_target_": "em.judge.openai_judge.OpenAIJudge", "concurency": 3}))


# --------------------------------------------------------------------------- local judge
@pytest.mark.parametrize("model", ["tiny", "tiny_gemma3"])
def test_local_judge_exact_integer_distribution(tmp_path, cache_dir, model):
    """One tree-masked forward == a separate forward per trie node; the P(n) sum to the model's total
    probability of replying with an integer 0..100 (leading whitespace allowed, then a non-digit)."""
    import torch

    from em.judge.digit_tree import bruteforce_logprobs, combine, tree_logprobs
    from em.judge.factory import build_judges

    cfg = compose_eval(eval_overrides(tmp_path / "run", cache_dir) + ["judge=local", f"model@judge.model={model}"])
    (judge,) = build_judges(cfg.judge)
    judge.load()
    tree = judge._tree
    assert len(tree) == 101  # byte-level digits: 10 + 90 + "100"
    # Longer than tiny_gemma3's sliding window (64): the sliding-layer tree mask is exercised too.
    ids = judge.prompt_ids("Rate the answer from 0 to 100. " + "The answer was long. " * 8)
    assert len(ids) > 128
    fast = tree_logprobs(judge._model, ids, tree)
    slow = bruteforce_logprobs(judge._model, ids, tree)
    assert torch.allclose(fast, slow, atol=1e-4)
    dist, digit_mass = combine(tree, fast)
    ref, _ = combine(tree, slow)
    # The model's total number probability, from the brute-force rows by direct enumeration of every
    # digit string of up to 3 digits: P(string) * P(no further digit), canonical 0..100 only.
    digits = tree.inner_digit_ids
    probs = slow.double().exp()
    index = {tree.string[i]: i + 1 for i in range(len(tree))}
    total = 0.0
    for n in range(101):
        s, p, row = str(n), 1.0, 0
        for k in range(len(s)):
            p *= float(probs[row, judge._tok.convert_tokens_to_ids(s[k])])
            row = index[s[: k + 1]]
        total += p * (1 - float(probs[row, digits].sum()))
    assert sum(dist.values()) == pytest.approx(total, rel=1e-6)
    assert all(dist[n] == pytest.approx(ref[n], rel=1e-3, abs=1e-9) for n in dist)
    assert 0 < sum(dist.values()) <= digit_mass + 1e-9



def test_local_judge_keeps_the_score_under_a_code_top_token(monkeypatch):
    """The local judge applies the reference rule: CODE is the single most likely first token (0.45), but the
    integers carry 0.50 of the probability -> scored 14.0 (the issue's example), CODE kept as information."""
    import torch

    from em.judge import local as local_mod
    from em.judge.local import LocalJudge
    from types import SimpleNamespace

    vocab = ["CODE", "1", "2", "x"]
    first = torch.log(torch.tensor([0.45, 0.30, 0.20, 0.05]))
    from em.judge import prefix_cache

    # local imports the function by name (module-level import): patch the name it calls
    monkeypatch.setattr(local_mod, "tree_logprobs_cached", lambda model, ids, tree, plen, kv: first.unsqueeze(0))
    dists = {"with mass": {10: 0.30, 20: 0.20}, "little mass": {10: 0.10, 20: 0.05}}
    judge = LocalJudge(SimpleNamespace(name="m", path=None, hub_id=None), SimpleNamespace(name="none"),
                       name="local", cache_dir=None, max_value=100, top_logprobs=4, min_number_mass=0.25,
                       score_mode="reference")
    judge._model, judge._tree = object(), object()
    judge._tok = SimpleNamespace(decode=lambda ids: vocab[ids[0]])
    monkeypatch.setattr(judge, "prompt_ids", lambda prompt: [0])
    out = {}
    for name, dist in dists.items():
        monkeypatch.setattr(local_mod, "combine", lambda tree, rows, d=dist: (d, sum(d.values())))
        out[name] = judge.judge_prompt(JudgeRequest(name))
    scored, unscored = out["with mass"], out["little mass"]
    assert scored.special == "CODE" and scored.score == pytest.approx(14.0) and scored.number_mass == pytest.approx(0.5)
    assert unscored.special == "CODE" and unscored.score is None and "< 0.25" in unscored.reason


def test_a_dead_endpoint_stops_the_judge_at_once_with_one_line(key):
    import socket
    import time

    with socket.socket() as s:  # a port nothing listens on: bound, then closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.perf_counter()
    with pytest.raises(JudgeError, match=rf"judge.base_url: cannot connect to http://127.0.0.1:{port}/v1") as e:
        run_judge(_judge(f"http://127.0.0.1:{port}/v1", max_retries=3), [JudgeRequest(str(i)) for i in range(50)],
                  JudgeCache(None), progress=False)
    assert "\n" not in str(e.value)
    assert time.perf_counter() - t0 < 5  # not 50 requests x 3 client retries with backoff
    # a live endpoint passes the same check (one free GET /models, no completion request)
    with LoopbackServer() as srv:
        _judge(srv.url).check_reachable()
        assert srv.requests == 0 and srv.probes == 1
