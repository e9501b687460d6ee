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
