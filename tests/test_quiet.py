"""Quiet by default: a real train.py run (tiny model, W&B offline) writing into a file prints em's lines and
no third-party deprecation warning, each Lightning line once, no Lightning advert, no tqdm carriage returns."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from tests.conftest import REPO


def _train(tmp_path, cache_dir, *extra, warnings_env="default"):
    env = {**os.environ, "PYTHONWARNINGS": warnings_env, "WANDB_MODE": "offline"}
    env.pop("TQDM_DISABLE", None)
    args = [f"hydra.run.dir={tmp_path / 'run'}", f"cache_dir={cache_dir}", "model=tiny", "data.n_examples=8",
            "trainer.batch_size=2", "trainer.accumulate_grad_batches=2", "trainer.max_length=1024", "trainer.warmup_steps=1",
            "logger=wandb", *extra]
    # stdout and stderr into one file, as under nohup / SLURM: not a terminal
    log = tmp_path / "out.log"
    with log.open("w") as f:
        r = subprocess.run([sys.executable, str(REPO / "train.py"), *args], cwd=tmp_path, env=env, stdout=f,
                           stderr=subprocess.STDOUT, timeout=600)
    return r.returncode, log.read_text()


def test_train_run_prints_no_third_party_deprecation_and_each_line_once(tmp_path, cache_dir):
    rc, out = _train(tmp_path, cache_dir)
    assert rc == 0, out[-3000:]
    assert not re.search(r"DeprecationWarning|FutureWarning|is deprecated", out), out[-3000:]
    assert "anonymous" not in out.lower(), out[-3000:]  # W&B's own "The anonymous setting has no effect"
    assert "\r" not in out, "progress-bar carriage returns in a log file"
    assert "litlogger" not in out and "Tip:" not in out
    lightning = [line.split("] - ", 1)[-1] for line in out.splitlines() if "lightning" in line or line.startswith("INFO:")]
    msgs = [m.removeprefix("INFO: ") for m in lightning]
    assert msgs and len(msgs) == len(set(msgs)), f"Lightning lines repeated: {msgs}"
    assert re.search(r"\[em\.train\.run\]\[INFO\] - step 1/\d+ +loss", out)  # the periodic line replaces the bar
    assert "run dir:" in out

    rc, out = _train(tmp_path, cache_dir, "quiet=true", f"hydra.run.dir={tmp_path / 'run2'}")
    assert rc == 0, out[-3000:]
    assert "[INFO]" not in out and "step 1/" not in out
