"""Executing model-written code is opt-in: capability=standard composes with allow_code_execution=false,
HumanEval is dropped with one line saying why and how to run it, the other tasks run; a set of nothing
but code tasks is a one-line config error; the local tiny task runs while a code task beside it is dropped."""

from __future__ import annotations

import json
import logging

import pytest
from hydra import compose, initialize_config_dir

from conftest import compose_train
from em.capability.run import runnable_tasks
from em.errors import ConfigError
from em.paths import CONF_DIR
from em.config.common import validate

needs_lm_eval = pytest.mark.skipif(__import__("importlib").util.find_spec("lm_eval") is None,
                                   reason="lm-eval not installed (pip install lm-eval==0.4.13)")


def _cap(tmp_path, *overrides):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("capability_run", overrides=[f"run_dir={tmp_path}", f"cache_dir={tmp_path / 'cache'}",
                                                   *overrides])
    return cfg


def _dropped_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "executes model-written code" in r.getMessage()]


def test_standard_set_drops_humaneval_unless_allowed(tmp_path, caplog):
    cc = validate(_cap(tmp_path, "capability=standard")).capability
    assert cc.allow_code_execution is False
    assert [t.task for t in cc.tasks if t.executes_code] == ["humaneval"]
    with caplog.at_level(logging.WARNING, logger="em.capability"):
        kept = runnable_tasks(cc)
    assert [t.task for t in kept] == ["mmlu", "gsm8k", "hellaswag"]
    (line,) = _dropped_lines(caplog)
    assert "humaneval" in line and "capability.allow_code_execution=true" in line and "\n" not in line
    caplog.clear()
    allowed = validate(_cap(tmp_path, "capability=standard", "capability.allow_code_execution=true")).capability
    assert [t.task for t in runnable_tasks(allowed)] == ["mmlu", "gsm8k", "hellaswag", "humaneval"]
    assert not _dropped_lines(caplog)


def test_train_job_default_does_not_execute_code(tmp_path):
    cfg = compose_train([f"run_dir={tmp_path}", "capability.enabled=true"])
    assert cfg.capability.name == "standard" and cfg.capability.allow_code_execution is False


def test_only_code_tasks_without_permission_is_one_line(tmp_path):
    cc = validate(_cap(tmp_path, "capability=local_tiny", "capability.tasks.0.executes_code=true")).capability
    with pytest.raises(ConfigError, match=r"^capability\.allow_code_execution: every task of capability=local_tiny"):
        runnable_tasks(cc)


@needs_lm_eval
def test_local_task_runs_and_the_code_task_beside_it_is_dropped(tmp_path, cache_dir, caplog, monkeypatch):
    from em.capability.run import run_capability

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")  # humaneval would need the network: it must not be loaded
    tasks = ('[{task: tiny_choice, metric: "acc,none"},'
             ' {task: humaneval, metric: "pass@1,create_test", num_fewshot: 0, executes_code: true}]')
    cfg = _cap(tmp_path, "model=tiny", "quantization=none", "adapter=none", f"cache_dir={cache_dir}",
               "capability=local_tiny", f"capability.tasks={tasks}", "capability.limit=4", "progress=false")
    with caplog.at_level(logging.WARNING, logger="em.capability"):
        res = run_capability(cfg)
    assert [r["task"] for r in res["tasks"]] == ["tiny_choice"] and res["tasks"][0]["n"] == 4
    assert [t["task"] for t in res["identity"]["tasks"]] == ["tiny_choice"]
    assert json.loads((tmp_path / "capability.json").read_text())["hash"] == res["hash"]
    (line,) = _dropped_lines(caplog)
    assert line.startswith("capability: humaneval dropped")
