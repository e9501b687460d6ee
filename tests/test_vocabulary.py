"""One CLI vocabulary across train.py / evaluate.py / analyze.py: each --help lists its own groups, and
``--cfg job --resolve`` prints a resolved config (no traceback) for all three."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from tests.conftest import REPO

OWN = {"train": {"model", "data", "lora", "trainer", "optimizer", "logger", "format", "judge"},
       "evaluate": {"model", "questions", "format", "judge", "generation", "quantization"},
       "analyze": {"logger"}}
TRAIN_ONLY = {"data", "lora", "trainer", "optimizer", "experiment"}


def _run(script: str, *args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / f"{script}.py"), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=180)


def _groups(help_text: str) -> set[str]:
    block = help_text.split("== Configuration groups ==", 1)[1].split("== Config ==", 1)[0]
    return {line.split(":", 1)[0] for line in block.splitlines() if ": " in line and not line.startswith("Compose")}


@pytest.mark.parametrize("script", ["train", "evaluate", "analyze"])
def test_help_lists_own_groups(script, tmp_path):
    r = _run(script, "--help", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    groups = _groups(r.stdout)
    assert OWN[script] <= groups
    if script != "train":
        assert not groups & TRAIN_ONLY, f"{script} --help lists train's groups {groups & TRAIN_ONLY}"
    assert "_schema" not in r.stdout.split("== Config ==")[0]
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("script", ["train", "evaluate", "analyze"])
def test_cfg_job_resolve_prints_the_config(script, tmp_path):
    r = _run(script, "--cfg", "job", "--resolve", "seed=7" if script != "analyze" else "condition=insecure",
             cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    cfg = yaml.safe_load(r.stdout)
    assert cfg["run_dir"].startswith(f"outputs/{script}/") and "${" not in r.stdout
    if script != "analyze":
        assert cfg["seed"] == 7
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("script", ["train", "evaluate", "analyze"])
def test_same_logger_seed_project_keys_in_all_three(script, tmp_path):
    """logger=wandb|csv|none, logger.project/entity/group, seed, quiet, progress: one spelling everywhere."""
    keys = ["logger=wandb", "logger.project=lab-proj", "logger.entity=lab", "logger.group=pilot", "seed=7",
            "quiet=true", "progress=false"]
    r = _run(script, "--cfg", "job", "--resolve", *keys, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    cfg = yaml.safe_load(r.stdout)
    assert cfg["seed"] == 7 and cfg["quiet"] is True and cfg["progress"] is False
    assert {k: cfg["logger"][k] for k in ("project", "entity", "group")} == {
        "project": "lab-proj", "entity": "lab", "group": "pilot"}
    # where each script's W&B run reads them
    run = {"train": cfg.get("evaluate", {}).get("wandb"), "evaluate": cfg.get("wandb"), "analyze": cfg.get("wandb")}[script]
    assert {k: run[k] for k in ("project", "entity", "group")} == {"project": "lab-proj", "entity": "lab", "group": "pilot"}
    if script == "analyze":
        assert cfg["bootstrap"]["seed"] == 7 and cfg["judges"]["seed"] == 7  # seed drives the bootstrap
    for off in ("logger=none", "logger=csv"):
        r = _run(script, "--cfg", "job", "--resolve", off, cwd=tmp_path)
        assert r.returncode == 0, (off, r.stderr[-1000:])
        c = yaml.safe_load(r.stdout)
        if script != "analyze":
            assert (c["evaluate"]["wandb"] if script == "train" else c["wandb"])["enabled"] is False
    assert not list(tmp_path.iterdir())


def test_analyze_bootstrap_seed_stays_an_explicit_override(tmp_path):
    r = _run("analyze", "--cfg", "job", "--resolve", "seed=7", "bootstrap.seed=3", cwd=tmp_path)
    cfg = yaml.safe_load(r.stdout)
    assert cfg["bootstrap"]["seed"] == 3 and cfg["judges"]["seed"] == 7


def test_sweep_analysis_gets_the_jobs_logger_keys():
    """The end-of-sweep analysis is composed with logger.* overrides and its W&B run reads them."""
    from pathlib import Path

    from hydra import compose, initialize_config_dir

    from em.paths import CONF_DIR
    from em.config.analysis import load_analysis_config
    from em.jobs.sweep import analysis_overrides
    from tests.conftest import compose_train

    cfg = compose_train(["model=tiny", "run_dir=/x", "logger=wandb", "logger.project=P", "logger.entity=E"])
    overrides = analysis_overrides(cfg, Path("/sweep"))
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        a = compose("analyze", overrides=[*overrides, "run_dir=/sweep/analysis", "seed=4"])
    s = load_analysis_config(a)
    assert s.use_wandb and (s.wandb.project, s.wandb.entity, s.wandb.group) == ("P", "E", "tiny-synthetic")
    assert s.bootstrap.seed == 4
