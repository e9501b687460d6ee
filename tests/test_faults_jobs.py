"""A job is done only when its judgments are (issue 13, cases 4-5): evaluate.py and a sweep against a judge
that answers HTTP 500 print the failures with their most common reason and exit non-zero (1: results kept on
disk); no DONE.json is written; a relaunch against a healthy judge asks the failed judgments again."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO
from tests.eval_helpers import KEY_ENV, eval_overrides, openai_judge_overrides, subprocess_env
from tests.loopback_server import LoopbackServer

def _evaluate(run_dir: Path, cache_dir: str, url: str) -> subprocess.CompletedProcess:
    o = eval_overrides(run_dir, cache_dir, **openai_judge_overrides(url, **{"judge.max_retries": 0}),
                       format="[plain]", samples=1)
    return subprocess.run([sys.executable, "evaluate.py", *o, f"hydra.run.dir={run_dir}"], cwd=REPO,
                          capture_output=True, text=True, timeout=300, env=subprocess_env(**{KEY_ENV: "sk-x"}))


def test_evaluate_with_every_judgment_failing_says_so_and_exits_1(tmp_path, cache_dir):
    run_dir = tmp_path / "run"
    with LoopbackServer(fault_rate=1.0, faults=("500",)) as srv:
        r = _evaluate(run_dir, cache_dir, srv.url)
        assert r.returncode == 1, r.stderr[-2000:]
        assert "8 of 8 judgments failed" in r.stderr and "HTTP 500" in r.stderr  # most common reason named
        summary = json.loads((run_dir / "summary.json").read_text())  # results kept on disk
        assert summary["judges"]["gpt-4o"]["failures"] == 8
        assert (run_dir / "responses.parquet").exists()
        # the judge is healthy again (same endpoint): a rerun asks the 8 failed judgments, exits 0
        srv.fault_rate = 0.0
        srv.reset_counts()
        r2 = _evaluate(run_dir, cache_dir, srv.url)
        assert r2.returncode == 0, r2.stderr[-2000:]
        assert srv.ok == 8 and "failed" not in r2.stderr
    assert json.loads((run_dir / "summary.json").read_text())["judges"]["gpt-4o"]["failures"] == 0


def _sweep(sweep_dir: Path, cache_dir: str, url: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "train.py", "-m", "model=tiny", "logger=none", "data=base", "seed=0,1",
           "evaluate.enabled=true", "quantization@evaluate.quantization=none", "generation.max_new_tokens=8",
           f"hydra.sweep.dir={sweep_dir}", f"cache_dir={cache_dir}", "evaluate.samples=1", "format=[plain]",
           "evaluate.progress=false", "judge=openai", f"judge.base_url={url}", f"judge.api_key_env={KEY_ENV}",
           "judge.max_retries=0", "judge.timeout=1.0", "judge.retry_backoff=0.01"]
    env = os.environ | {"WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                        KEY_ENV: "sk-x"}
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)


def test_sweep_with_failed_judgments_is_not_done_and_a_relaunch_asks_again(tmp_path, cache_dir):
    sw = tmp_path / "sweep"
    with LoopbackServer(fault_rate=1.0, faults=("500",)) as srv:
        r = _sweep(sw, cache_dir, srv.url)
        out = r.stdout + r.stderr
        assert r.returncode != 0, out[-3000:]
        assert "0 done, 0 skipped, 2 failed (2 with failed judgments" in out, out[-3000:]
        summary = json.loads((sw / "sweep_summary.json").read_text())
        assert summary["judge_failed"] == 2 and all("HTTP 500" in f["error"] for f in summary["failed"])
        assert not list(sw.rglob("DONE.json"))
        srv.fault_rate = 0.0
        srv.reset_counts()
        r2 = _sweep(sw, cache_dir, srv.url)
        out2 = r2.stdout + r2.stderr
        assert r2.returncode == 0, out2[-3000:]
        assert "2 done, 0 skipped, 0 failed" in out2 and srv.ok > 0
    assert len(list(sw.rglob("DONE.json"))) == 2
