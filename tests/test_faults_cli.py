"""Bad input and secrets at the entry scripts (issue 13, cases 9, 13, 16, 18): one line, exit 2, nothing written;
no key on disk; config records that describe what is on disk."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from em.errors import ConfigError, DataError
from tests.conftest import REPO, compose_train, tiny_overrides
from tests.eval_helpers import KEY_ENV, eval_overrides, subprocess_env
from tests.loopback_server import LoopbackServer

CANARY_KEY = "sk-CANARY-envkey-7f3a9"
CANARY_URL = "CANARYurlpass-51c2"
CANARY_OVERRIDE = "sk-CANARY-override-a8e1"


def script(name: str, *args: str, env: dict | None = None, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / name), *args], cwd=REPO, env=env or subprocess_env(),
                          capture_output=True, text=True, timeout=timeout)


def one_line_exit_2(r: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2, (r.returncode, r.stderr[-1500:])
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr[-1500:]
    return lines[0]


# ------------------------------------------------------------------ case 13: Hydra composition / type errors
@pytest.mark.parametrize("name, override, names", [
    ("train.py", "trainer.batch_size=abc", "trainer.batch_size"),
    ("train.py", "+bogus=1", "bogus"),
    ("train.py", "+trainer.bogus=1", "trainer.bogus"),
    ("evaluate.py", "samples=abc", "samples"),
    ("evaluate.py", "judge=nope", "judge"),
    ("analyze.py", "alpha=abc", "alpha"),
    ("analyze.py", "+bogus=1", "bogus"),
    ("analyze.py", "logger=nope", "logger"),
])
def test_composition_errors_are_one_line(tmp_path, name, override, names):
    run_dir = tmp_path / "run"
    line = one_line_exit_2(script(name, override, f"hydra.run.dir={run_dir}", timeout=60))
    assert names in line
    assert not run_dir.exists()  # refused before Hydra made the run directory


# ------------------------------------------------------------------ case 13: input decoding errors
def test_non_utf8_question_yaml_is_one_line(tmp_path, cache_dir):
    bad = tmp_path / "questions.yaml"
    bad.write_bytes(b"- id: q1\n  paraphrases:\n  - caf\xe9 au lait?\n  judge_prompts: {}\n")
    run_dir = tmp_path / "run"
    r = script("evaluate.py", *eval_overrides(run_dir, cache_dir, judge="none"), f"questions.path={bad}",
               f"hydra.run.dir={run_dir}")
    assert f"{bad}:3: not valid UTF-8" in one_line_exit_2(r)


def test_non_utf8_analysis_csv_is_one_line(tmp_path):
    bad = tmp_path / "eval_result.csv"
    bad.write_bytes(b"question_id,question,answer,aligned,coherent\nq1,Hi?,caf\xe9,90,90\n")
    r = script("analyze.py", f"inputs=[{bad}]", f"hydra.run.dir={tmp_path / 'run'}", "figures=false")
    assert str(bad) in one_line_exit_2(r)


def test_non_utf8_jsonl_names_file_and_line(tmp_path):
    from em.data.chat import read_jsonl_conversations

    bad = tmp_path / "train.jsonl"
    bad.write_bytes(b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n'
                    b'{"messages": [{"role": "user", "content": "caf\xe9"}]}\n')
    with pytest.raises(DataError, match=rf"{bad}:2: not valid UTF-8"):
        read_jsonl_conversations(bad)


# ------------------------------------------------------------------ case 18: names used in paths
@pytest.mark.parametrize("key, value", [("experiment_name", "../../x"), ("data.name", "a/b"),
                                        ("model.name", ".."), ("questions.name", "q/../../x")])
def test_path_names_are_validated(tmp_path, key, value):
    from em.config.common import validate

    with pytest.raises(ConfigError, match=rf"^{key}: .* used in paths"):
        validate(compose_train(tiny_overrides(tmp_path / "run", tmp_path / "cache", **{key: value})))


def test_experiment_name_cannot_escape_the_sweep_root(tmp_path):
    root = tmp_path / "a" / "b" / "multirun"
    r = script("train.py", "-m", "experiment_name=../../escaped", "data=secure,insecure",
               f"hydra.sweep.dir={root}/${{experiment_name}}", timeout=60)
    assert one_line_exit_2(r).startswith("error: experiment_name: ")
    assert not (tmp_path / "a" / "escaped").exists() and not root.exists()


def test_condition_with_a_slash_is_refused(tmp_path, cache_dir):
    run_dir = tmp_path / "run"
    r = script("evaluate.py", *eval_overrides(run_dir, cache_dir, judge="none"), "condition=../x",
               f"hydra.run.dir={run_dir}", timeout=60)
    assert one_line_exit_2(r).startswith("error: condition: ")
    assert not run_dir.exists()


# ------------------------------------------------------------------ case 16: keys on the command line
@pytest.mark.parametrize("override", [f"+judge.api_key={CANARY_OVERRIDE}", f"judge.api_key={CANARY_OVERRIDE}",
                                      f"judge.base_url=http://user:{CANARY_OVERRIDE}@127.0.0.1:9/v1"])
def test_key_bearing_overrides_are_refused_before_anything_is_written(tmp_path, override):
    run_dir = tmp_path / "run"
    r = script("evaluate.py", "judge=openai", override, f"hydra.run.dir={run_dir}", f"run_dir={run_dir}",
               timeout=60)
    line = one_line_exit_2(r)
    assert "judge." in line and CANARY_OVERRIDE not in r.stderr + r.stdout
    assert not run_dir.exists()


@pytest.mark.parametrize("pasted", [f"{CANARY_OVERRIDE}-proj", "hf_CANARYtokenQ8sLx2", "CANARYa9f3e1b27c4d8e06f5b1c2"])
def test_a_key_pasted_as_api_key_env_is_refused_without_echoing_it(tmp_path, pasted):
    run_dir = tmp_path / "run"
    r = script("evaluate.py", "judge=openai", f"judge.api_key_env={pasted}", f"hydra.run.dir={run_dir}",
               f"run_dir={run_dir}", timeout=60)
    line = one_line_exit_2(r)
    assert line.startswith("error: judge.api_key_env: must name an environment variable (e.g. OPENAI_API_KEY)")
    assert pasted not in r.stderr + r.stdout and "CANARY" not in r.stderr + r.stdout
    assert not run_dir.exists()


def test_a_key_pasted_as_api_key_env_in_a_config_file_is_refused_without_echoing_it():
    from em.config.judge import OpenAIBatchJudgeSchema, OpenAIJudgeSchema

    for schema in (OpenAIJudgeSchema, OpenAIBatchJudgeSchema):
        with pytest.raises(ConfigError) as e:
            schema(api_key_env=f"{CANARY_OVERRIDE}-proj")
        assert str(e.value).startswith("judge.api_key_env: must name") and "CANARY" not in str(e.value)
        assert schema(api_key_env="MY_LAB_OPENAI_KEY_FOR_THE_JUDGE").api_key_env == "MY_LAB_OPENAI_KEY_FOR_THE_JUDGE"


def test_no_canary_in_any_file_a_judged_run_writes(tmp_path, cache_dir):
    """Keys every way the config allows (the key's environment variable, credentials in $OPENAI_BASE_URL)
    through a real evaluate.py run against the loopback judge, W&B offline: no file has them."""
    run_dir = tmp_path / "run"
    cache = tmp_path / "judge_cache.sqlite"
    with LoopbackServer() as srv:
        url = srv.url.replace("http://", f"http://canaryuser:{CANARY_URL}@")
        env = subprocess_env(**{KEY_ENV: CANARY_KEY, "OPENAI_BASE_URL": url})
        r = script("evaluate.py", *eval_overrides(run_dir, cache_dir, judge="openai", samples=1, format="[plain]",
                                                 judge_cache=str(cache), **{"wandb.enabled": "true"}),
                   f"judge.api_key_env={KEY_ENV}", "judge.max_retries=1", "judge.timeout=5",
                   f"hydra.run.dir={run_dir}", env=env, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
        assert srv.ok > 0  # the judge was really asked (through the URL with credentials)
    summary = yaml.safe_load((run_dir / "summary.json").read_text())
    assert summary["formats"]["plain"]["n_scored"] > 0
    assert "127.0.0.1" in str(summary["judges"])  # the endpoint is recorded, without its credentials
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert cache in written and any("wandb" in p.parts for p in written)
    assert (run_dir / ".hydra" / "config.yaml") in written and (run_dir / "evaluate.log") in written
    for p in written:
        data = p.read_bytes()
        for canary in (CANARY_KEY, CANARY_URL):
            assert canary.encode() not in data, f"{canary} written to {p}"
    assert CANARY_KEY not in r.stdout + r.stderr and CANARY_URL not in r.stdout + r.stderr


# ------------------------------------------------------------------ case 9: records of an accepted run only
def test_refused_rerun_keeps_the_config_records(tmp_path, cache_dir):
    run_dir = tmp_path / "run"
    args = [*eval_overrides(run_dir, cache_dir, judge="none", samples=1, format="[plain]"), f"hydra.run.dir={run_dir}"]
    first = script("evaluate.py", *args, "seed=0")
    assert first.returncode == 0, first.stderr[-2000:]
    records = [run_dir / "resolved_config.yaml", run_dir / ".hydra" / "config.yaml"]
    before = {p: p.read_bytes() for p in records}
    assert all(yaml.safe_load(b)["seed"] == 0 for b in before.values())
    assert "seed=0" in (run_dir / ".hydra" / "overrides.yaml").read_text()
    refused = script("evaluate.py", *args, "seed=7")
    assert "generated with seed=0, this run has seed=7" in one_line_exit_2(refused)
    assert {p: p.read_bytes() for p in records} == before  # still the config of the answers on disk
    assert "seed=7" not in (run_dir / ".hydra" / "overrides.yaml").read_text()
