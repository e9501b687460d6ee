"""experiment=mitigations_tiny: plain fine-tuning against each mitigation, one sweep, one report (CI time)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
CONDITIONS = ["synthetic_plain", "synthetic_inoculated", "synthetic_mix25", "synthetic_kl1"]


def test_presets_document_their_size(tmp_path, monkeypatch):
    from em.jobs.sweep import plan_sweep
    from tests.test_sweep import _documented

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")  # the GPT-4o judge's pre-flight check
    for preset in ("mitigations", "mitigations_tiny"):
        plan = plan_sweep([f"experiment={preset}", f"hydra.sweep.dir={tmp_path / preset}"])
        doc = _documented(preset)
        assert plan.n_jobs == doc["jobs"] and sum(j.trains for j in plan.jobs) == doc["train"]
        assert plan.total("answers") == doc["answers"] and plan.total("judge_calls") == doc["judge_calls"]
        assert len({j.job_dir for j in plan.jobs}) == plan.n_jobs


def test_mitigations_tiny_sweep_ends_in_one_report(tmp_path, cache_dir):
    sw = tmp_path / "mit"
    cmd = [sys.executable, "train.py", "-m", "experiment=mitigations_tiny", f"hydra.sweep.dir={sw}",
           f"cache_dir={cache_dir}", "evaluate.progress=false"]
    env = os.environ | {"WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    jobs = {c: sw / f"tiny_{c}_s0" for c in CONDITIONS}
    for c, d in jobs.items():
        assert (d / "DONE.json").is_file(), c
        df = pd.read_parquet(d / "eval" / "responses.parquet")
        assert set(df["condition"]) == {c}
        assert (d / "lora_geometry.csv").is_file()  # the dynamics of every run
    cards = {c: json.loads((d / "adapter" / "em_adapter.json").read_text()).get("mitigations", {}) for c, d in jobs.items()}
    assert cards["synthetic_plain"] == {}
    assert set(cards["synthetic_inoculated"]) == {"inoculation_prompt"}
    assert cards["synthetic_mix25"]["data_mix"]["share"] == 0.25
    assert cards["synthetic_kl1"]["kl"]["weight"] == 1.0
    # the mixed run trained on 8 + round(0.25 * 8 / 0.75) = 11 examples; the others on 8
    ex = {c: json.loads((d / "metrics.json").read_text())["examples"] for c, d in jobs.items()}
    assert ex == {"synthetic_plain": 8, "synthetic_inoculated": 8, "synthetic_mix25": 11, "synthetic_kl1": 8}
    # the KL run's side batches: KL 0 at step 1 (B starts at zero), logged per step
    kl_hist = json.loads((jobs["synthetic_kl1"] / "metrics.json").read_text())["history"]
    assert kl_hist[0]["train/kl"] == 0.0
    # one report over the four conditions
    rates = pd.read_csv(sw / "analysis" / "rates.csv")
    assert set(CONDITIONS) <= set(rates["condition"])
    report = (sw / "analysis" / "report.md").read_text()
    assert all(c in report for c in CONDITIONS)
