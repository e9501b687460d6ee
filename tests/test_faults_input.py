"""Issue 19 case 7: bad input is one line, exit 2, and nothing written -- no lock, log or .hydra/ left by a
refused run -- in train.py, evaluate.py and analyze.py; plans too large to hold are counted, not held."""

from __future__ import annotations

import subprocess
import sys
import tracemalloc

import pytest

from em.errors import ConfigError, DataError
from tests.conftest import REPO, tiny_overrides
from tests.eval_helpers import compose_eval, eval_overrides, openai_judge_overrides, subprocess_env


def script(name: str, *args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / name), *args], cwd=REPO, env=subprocess_env(),
                          capture_output=True, text=True, timeout=timeout)


def refused(r: subprocess.CompletedProcess, run_dir) -> str:
    """The one ``error:`` line of a refused run (exit 2), after checking it left no directory behind."""
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2, (r.returncode, r.stderr[-3000:])
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr[-3000:]
    left = sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*")) if run_dir.exists() else None
    assert left is None, f"a refused run left {left}"  # no .em.lock, <job>.log or .hydra/
    return lines[0]


# ------------------------------------------------------------------ training JSONL
GOOD = '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n'


def test_a_lone_surrogate_in_training_jsonl_names_file_and_line(tmp_path):
    from em.data.chat import read_jsonl_conversations

    bad = tmp_path / "train.jsonl"
    bad.write_text(GOOD + '{"messages": [{"role": "user", "content": "hi"}, '
                          '{"role": "assistant", "content": "ab\\ud800cd"}]}\n')
    with pytest.raises(DataError, match=rf"^{bad}:2: messages\[1\] \(assistant\) content is not valid Unicode: "
                                        r"a lone surrogate U\+D800 at character 3"):
        read_jsonl_conversations(bad)
    ok = tmp_path / "pair.jsonl"  # an escaped surrogate *pair* is one valid character
    ok.write_text(GOOD.replace('"yo"', '"\\ud83d\\ude00"'))
    assert read_jsonl_conversations(ok)[0][1]["content"] == "\U0001F600"


def test_a_raw_control_character_is_reported_once_by_column(tmp_path):
    from em.data.chat import read_jsonl_conversations

    bad = tmp_path / "train.jsonl"
    bad.write_bytes(GOOD.encode() + b'{"messages": [{"role": "user", "content": "a\x00b"}]}\n')
    with pytest.raises(DataError) as ei:
        read_jsonl_conversations(bad)
    assert str(ei.value) == f"{bad}:2: not valid JSON (Invalid control character at column 45)"


# ------------------------------------------------------------------ seeds: one rule in every script
@pytest.mark.parametrize("value", [-5, 2**32])
def test_seeds_outside_numpys_range_are_refused_by_every_schema(tmp_path, value):
    from tests.conftest import compose_train

    from em.config.common import validate

    train, ev = tiny_overrides(tmp_path, tmp_path), eval_overrides(tmp_path, tmp_path)
    message = rf"must be an integer in \[0, 4294967295\] \(numpy's seed range\), got {value}$"
    with pytest.raises(ConfigError, match=rf"^seed: {message}"):
        validate(compose_train([*train, f"seed={value}"]))
    with pytest.raises(ConfigError, match=rf"^seed: {message}"):
        validate(compose_eval([*ev, f"seed={value}"]))
    with pytest.raises(ConfigError, match=rf"^data.seed: {message}"):
        validate(compose_train([*train, f"data.seed={value}"]))
    validate(compose_train([*train, "seed=4294967295"]))  # the range's ends are seeds


@pytest.mark.parametrize("name", ["train.py", "evaluate.py", "analyze.py"])
def test_a_negative_seed_is_one_line_exit_2_and_leaves_nothing(tmp_path, cache_dir, name):
    run_dir = tmp_path / "run"
    if name == "train.py":
        args = tiny_overrides(run_dir, cache_dir)
    elif name == "evaluate.py":
        args = eval_overrides(run_dir, cache_dir, judge="none")
    else:
        args = [f"inputs=[{tmp_path}]"]
    line = refused(script(name, *args, "seed=-5", f"hydra.run.dir={run_dir}"), run_dir)
    assert "seed: must be an integer in [0, 4294967295] (numpy's seed range), got -5" in line, line


# ------------------------------------------------------------------ lora.r against the model
def test_lora_rank_above_the_smallest_targeted_layer_is_refused_before_training(tmp_path, cache_dir):
    run_dir = tmp_path / "run"
    r = script("train.py", *tiny_overrides(run_dir, cache_dir), "lora.r=100000", f"hydra.run.dir={run_dir}")
    line = refused(r, run_dir)
    assert line.startswith("error: lora.r: 100000 is larger than the smallest layer it adapts ("), line
    assert "choose lora.r <= " in line


def test_lora_rank_check_matches_the_layers_peft_would_adapt(cache_dir):
    """The meta-device check reads the same shapes as the loaded model: the limit is min(in, out) over targets."""
    import torch

    from em.train.lora_rank import check_lora_rank, targeted_dims
    from em.train.models import model_dir
    from tests.conftest import compose_train
    from em.config.common import validate

    tc = validate(compose_train(tiny_overrides("/tmp/unused", cache_dir)))
    targets = tc.lora.target_modules or tc.model.lora_target_modules
    source = model_dir(tc.model, tc.cache_dir)
    from transformers import AutoModelForCausalLM

    real = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    dims = targeted_dims(real, targets)
    assert dims and all(name.split(".")[-1] in targets for name, _, _ in dims)
    limit = min(min(i, o) for _, i, o in dims)
    check_lora_rank(limit, targets, source)  # the largest useful rank passes
    with pytest.raises(ConfigError, match=rf"choose lora.r <= {limit}$"):
        check_lora_rank(limit + 1, targets, source)


# ------------------------------------------------------------------ refused runs leave nothing
def test_an_unknown_question_id_leaves_no_lock_log_or_records(tmp_path, cache_dir):
    run_dir = tmp_path / "run"
    r = script("evaluate.py", *eval_overrides(run_dir, cache_dir, judge="none"), "questions.ids=[does_not_exist]",
               f"hydra.run.dir={run_dir}")
    assert "does_not_exist" in refused(r, run_dir)


def test_an_analysis_threshold_out_of_range_leaves_no_hydra_records(tmp_path):
    run_dir = tmp_path / "run"
    r = script("analyze.py", f"inputs=[{tmp_path}]", "thresholds.coherent=150", f"hydra.run.dir={run_dir}")
    assert "thresholds.coherent" in refused(r, run_dir)


def test_a_refused_rerun_keeps_an_earlier_runs_log(tmp_path, cache_dir):
    """Only what the refused run made goes: a directory with an earlier run's log lines stays as it was."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "evaluate.log").write_text("[earlier run] generated 8 answers\n")
    r = script("evaluate.py", *eval_overrides(run_dir, cache_dir, judge="none"), "questions.ids=[does_not_exist]",
               f"hydra.run.dir={run_dir}")
    assert r.returncode == 2
    assert (run_dir / "evaluate.log").read_text().startswith("[earlier run] generated 8 answers\n")


# ------------------------------------------------------------------ a dry run of a huge plan
def _dry(tmp_path, cache_dir, samples: int, **extra):
    from em.evaluate.run import run_evaluation

    judge = openai_judge_overrides("http://127.0.0.1:9/v1", **{"judge.price_input_per_mtok": 2.5,
                                                               "judge.price_output_per_mtok": 10.0})
    over = eval_overrides(tmp_path / f"run{samples}", cache_dir, samples=samples, dry_run="true", **judge, **extra)
    return run_evaluation(compose_eval(over))


def test_dry_run_counts_equal_the_materialised_plan(tmp_path, cache_dir, monkeypatch):
    """The streamed counts and token estimate equal those of every request built one by one."""
    from em.evaluate.generation import plan
    from em.evaluate.questions import build_prompts, load_question_set
    from em.judge.run import render_judge_prompt
    from em.judge.factory import build_judge
    from em.config.judge import OpenAIJudgeSchema
    from em.judge.scoring import JudgeRequest
    from em.config.common import validate

    monkeypatch.delenv("EM_TEST_JUDGE_KEY", raising=False)
    out = _dry(tmp_path, cache_dir, 5)
    ec = validate(compose_eval(eval_overrides(tmp_path / "x", cache_dir, samples=5)))
    prompts = build_prompts(load_question_set(ec.questions, ec.cache_dir), ec.format, ec.questions.ids)
    placeholder = "x" * (4 * ec.generation.max_new_tokens)
    reqs = [JudgeRequest(render_judge_prompt(t, s.question, placeholder), s.kind)
            for s in plan(prompts, 5) for _, t in s.judge_prompts]
    ref = build_judge(OpenAIJudgeSchema(base_url="http://127.0.0.1:9/v1", api_key_env="EM_TEST_JUDGE_KEY",
                                        price_input_per_mtok=2.5, price_output_per_mtok=10.0)).estimate(reqs)
    est = out["judges"]["gpt-4o"]
    assert out["answers_planned"] == out["answers_to_generate"] == len(prompts) * 5
    assert (est["requests"], est["tokens_in_estimate"], est["cost_usd"]) == (
        ref["requests"], ref["tokens_in_estimate"], ref["cost_usd"])


def test_dry_run_of_a_million_answers_holds_no_answer(tmp_path, cache_dir, monkeypatch):
    """samples=1000000: counted from the question-formats; Python memory stays in megabytes (was 12.1 GB)."""
    monkeypatch.delenv("EM_TEST_JUDGE_KEY", raising=False)
    _dry(tmp_path, cache_dir, 1)  # model / tokenizer caches built outside the measurement
    tracemalloc.start()
    try:
        out = _dry(tmp_path, cache_dir, 1_000_000)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    n_prompts = out["answers_planned"] // 1_000_000
    assert out["answers_planned"] == out["answers_to_generate"] == n_prompts * 1_000_000
    assert out["judges"]["gpt-4o"]["requests"] == 2 * n_prompts * 1_000_000
    assert peak < 64 * 2**20, f"peak {peak / 2**20:.0f} MiB"
