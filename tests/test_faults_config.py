"""Degenerate values are rejected at validation, and a single train.py job checks everything -- its judge
included -- before the first model loads (issue 13, cases 14-15)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import REPO, compose_train, tiny_overrides
from em.errors import ConfigError, JudgeError
from em.jobs.run import run_job
from em.runtime import model_loads
from em.config.common import validate


@pytest.mark.parametrize("override, key", [
    ("trainer.max_steps=0", "trainer.max_steps"), ("trainer.max_steps=-5", "trainer.max_steps"),
    ("trainer.log_every_n_steps=0", "trainer.log_every_n_steps"), ("trainer.num_workers=-1", "trainer.num_workers"),
    ("trainer.gradient_clip_val=-1", "trainer.gradient_clip_val"), ("trainer.max_epochs=inf", "trainer.max_epochs"),
])
def test_degenerate_trainer_values_are_rejected_naming_the_key(tmp_path, cache_dir, override, key):
    cfg = compose_train(tiny_overrides(tmp_path / "run", cache_dir) + [override])
    with pytest.raises(ConfigError, match=f"^{key}: "):
        validate(cfg)


def test_max_steps_0_on_the_command_line_is_one_line_exit_2_and_nothing_written(tmp_path, cache_dir):
    run_dir = tmp_path / "run"
    r = subprocess.run([sys.executable, "train.py", *tiny_overrides(run_dir, cache_dir), "trainer.max_steps=0",
                        f"hydra.run.dir={tmp_path / 'hydra'}"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == ["error: trainer.max_steps: must be > 0, or -1 (derived from "
                                             "trainer.max_epochs); got 0"]
    assert not (run_dir / "adapter").exists()
    assert not (tmp_path / "hydra").exists()  # a refused run leaves no empty run directory behind


def test_a_refused_run_keeps_an_existing_run_directory_as_it_was(tmp_path):
    run_dir = tmp_path / "eval"
    run_dir.mkdir()
    (run_dir / "answers.jsonl").write_text('{"kept": true}\n')
    r = subprocess.run([sys.executable, "evaluate.py", "model=tiny", "samples=-1", f"hydra.run.dir={run_dir}",
                        f"run_dir={run_dir}"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "samples" in r.stderr
    assert (run_dir / "answers.jsonl").read_text() == '{"kept": true}\n'


@pytest.mark.parametrize("extra, err, match", [
    (["judge=openai", "judge.api_key_env=EM_TEST_SURELY_UNSET_KEY"], JudgeError, "EM_TEST_SURELY_UNSET_KEY is not set"),
    (["judge=openai", "judge.concurrency=0"], ConfigError, "concurrency"),
])
def test_single_job_checks_its_judge_before_training(tmp_path, cache_dir, monkeypatch, extra, err, match):
    monkeypatch.delenv("EM_TEST_SURELY_UNSET_KEY", raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")  # (the concurrency case: a key is there)
    run_dir = tmp_path / "run"
    cfg = compose_train(tiny_overrides(run_dir, cache_dir) + ["evaluate.enabled=true"] + extra)
    before = model_loads()
    with pytest.raises(err, match=match):
        run_job(cfg, isolate_failures=False)
    assert model_loads() == before  # no model was loaded
    assert not (run_dir / "checkpoints").exists() and not (run_dir / "adapter").exists()
