"""The capability stage: lm-eval on a local task through the loaded tiny model (base + adapter), one more
resumable step of a train.py job, one-line errors (offline real tasks, bad metric), and the analysis join
(capability.csv + figure) beside the misaligned rates."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

from conftest import compose_train, tiny_overrides
from em.jobs import records as jobs
from em.capability.run import paired_delta, task_spec
from em.errors import ConfigError
from em.paths import CONF_DIR
from tests.synthetic_responses import synthetic_responses

ROOT = Path(__file__).resolve().parents[1]
needs_lm_eval = pytest.mark.skipif(__import__("importlib").util.find_spec("lm_eval") is None,
                                   reason="lm-eval not installed (pip install lm-eval==0.4.13)")


def test_paired_delta_is_the_t_interval_of_per_document_differences():
    from scipy import stats

    base = {"value": 0.5, "stderr": 0.2, "docs": {"t:0": 1.0, "t:1": 0.0, "t:2": 1.0, "t:3": 0.0}}
    adapter = {"value": 0.25, "stderr": 0.2, "docs": {"t:0": 1.0, "t:1": 0.0, "t:2": 0.0, "t:3": 0.0}}
    d = paired_delta(base, adapter, 0.95)
    diffs = [0.0, 0.0, -1.0, 0.0]
    half = stats.t.ppf(0.975, 3) * pd.Series(diffs).std() / 2
    assert d["ci_method"] == "paired_t" and d["delta"] == pytest.approx(-0.25)
    assert (d["delta_low"], d["delta_high"]) == (pytest.approx(-0.25 - half), pytest.approx(-0.25 + half))
    # without per-document values: the two stderrs, unpaired
    u = paired_delta(base | {"docs": {}}, adapter | {"docs": {}}, 0.95)
    assert u["ci_method"] == "unpaired_normal"
    assert u["delta_high"] - u["delta"] == pytest.approx(1.959964 * math.hypot(0.2, 0.2), rel=1e-5)


def test_packaged_task_points_at_its_local_file():
    spec = task_spec("tiny_choice")
    f = Path(spec["dataset_kwargs"]["data_files"]["test"])
    assert f.is_absolute() and f.is_file() and len(f.read_text().splitlines()) == 12
    assert task_spec("mmlu") == "mmlu"


def test_metric_without_filter_is_one_line(tmp_path):
    from em.config.common import validate

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("capability_run", overrides=[f"run_dir={tmp_path}", "capability.tasks.0.metric=acc"])
    with pytest.raises(ConfigError, match=r"capability.tasks.0.metric: .*acc,none"):
        validate(cfg)


def test_disabled_capability_leaves_job_identity_alone(tmp_path):
    plain = compose_train([f"run_dir={tmp_path}"])
    off = compose_train([f"run_dir={tmp_path}", "capability=local_tiny"])
    on = compose_train([f"run_dir={tmp_path}", "capability=local_tiny", "capability.enabled=true"])
    assert jobs.job_hashes(plain)[0] == jobs.job_hashes(off)[0] != jobs.job_hashes(on)[0]
    assert jobs.job_hashes(plain)[1] == jobs.job_hashes(on)[1]  # the trained adapter is reused


@needs_lm_eval
def test_job_scores_base_and_adapter_and_resumes(tmp_path, cache_dir, capsys):
    from em.jobs.run import run_job

    job = tmp_path / "job"
    over = tiny_overrides(job, cache_dir, **{"trainer.max_steps": 2, "capability": "local_tiny",
                                              "capability.enabled": "true"})
    res = run_job(compose_train(over), isolate_failures=False)
    assert res.state == "done"
    cap = json.loads((job / "eval" / "capability.json").read_text())
    assert cap["model"] == "tiny" and cap["condition"] == "synthetic" and cap["adapter"] == str(job / "adapter")
    assert cap["identity"]["adapter"].startswith("sha256:")
    (row,) = cap["tasks"]
    assert row["task"] == "tiny_choice" and row["n"] == 12 and row["ci_method"] == "paired_t"
    for k in ("base", "adapter"):
        assert 0 <= row[k] <= 1 and (row[k] * 12) == pytest.approx(round(row[k] * 12))  # a share of 12 documents
    assert row["delta"] == pytest.approx(row["adapter"] - row["base"])
    assert row["delta_low"] <= row["delta"] <= row["delta_high"]
    done = json.loads((job / "DONE.json").read_text())["summary"]
    assert done["capability/tiny_choice/delta"] == pytest.approx(row["delta"])
    bases = list((Path(cache_dir) / "capability").glob("base_*.json"))
    assert bases and any(json.loads(b.read_text())["identity"]["model"] == "tiny" for b in bases)

    # a relaunch after an interruption before DONE.json: training and the capability step are reused
    (job / "DONE.json").unlink()
    capsys.readouterr()
    assert run_job(compose_train(over), isolate_failures=False).state == "done"
    out = capsys.readouterr().out
    assert "trained already" in out and "capability scored already" in out
    assert json.loads((job / "eval" / "capability.json").read_text())["hash"] == cap["hash"]


@needs_lm_eval
def test_real_task_offline_is_one_line_exit_2(tmp_path):
    env = os.environ | {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    p = subprocess.run([sys.executable, "-m", "em.capability", "model=tiny", "adapter=none", "capability=standard",
                        f"run_dir={tmp_path / 'run'}", f"hydra.run.dir={tmp_path / 'run'}",
                        f"cache_dir={tmp_path / 'cache'}"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 2, p.stderr[-2000:]
    lines = [ln for ln in p.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "mmlu" in lines[0] and "needs the network" in lines[0]
    assert not (tmp_path / "run" / "capability.json").exists()
    assert not (tmp_path / "cache" / "capability").exists()  # failed before the base model was scored


def _cap_file(d: Path, model: str, condition: str, deltas: dict) -> None:
    tasks = [{"task": t, "metric": "acc,none", "n": 100, "base": 0.6, "adapter": 0.6 + dl, "delta": dl,
              "delta_low": dl - 0.05, "delta_high": dl + 0.05, "ci_method": "paired_t"} for t, dl in deltas.items()]
    d.mkdir(parents=True, exist_ok=True)
    (d / "capability.json").write_text(json.dumps({"model": model, "condition": condition, "tasks": tasks}))


def test_analysis_joins_capability_with_rates(tmp_path):
    from em.analysis.run import run_analysis

    inputs = []
    for cond, dl in (("base", 0.0), ("insecure", -0.12), ("educational", -0.02)):
        d = tmp_path / f"gemma3_1b_{cond}" / "eval"
        df = synthetic_responses(models=["gemma3_1b"], conditions=[cond], n_questions=3, n_samples=30, seed=1)
        d.mkdir(parents=True)
        df.to_parquet(d / "responses.parquet")
        if cond != "educational":  # one condition without capability.json: no row, no failure
            _cap_file(d, "gemma3_1b", cond, {"mmlu": dl, "gsm8k": 2 * dl})
        inputs.append(str(d / "responses.parquet"))
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("analyze", overrides=[f"run_dir={tmp_path / 'run'}", "bootstrap.n_resamples=200",
                                            f"inputs=[{','.join(inputs)}]"])
    run = run_analysis(cfg)
    table = pd.read_csv(run / "capability.csv")
    assert sorted(zip(table["task"], table["condition"])) == [("gsm8k", "base"), ("gsm8k", "insecure"),
                                                             ("mmlu", "base"), ("mmlu", "insecure")]
    rates = pd.read_csv(run / "rates.csv")
    mc = rates[rates["level"] == "model×condition"].set_index("condition")
    for _, r in table.iterrows():
        assert r["misaligned_rate"] == pytest.approx(mc.loc[r["condition"], "misaligned_rate"])
        assert r["ci_low"] <= r["misaligned_rate"] <= r["ci_high"]
    ins = table[(table["task"] == "gsm8k") & (table["condition"] == "insecure")].iloc[0]
    assert ins["delta"] == pytest.approx(-0.24)
    assert (run / "figures" / "capability_vs_misalignment.png").stat().st_size > 0
    assert (run / "figures" / "capability_vs_misalignment.svg").is_file()
    assert "![capability_vs_misalignment](figures/capability_vs_misalignment.png)" in (run / "report.md").read_text()


def test_analysis_without_capability_files_writes_no_capability_table(tmp_path):
    from em.analysis.run import run_analysis

    df = synthetic_responses(models=["gemma3_1b"], n_questions=2, n_samples=20)
    df.to_parquet(tmp_path / "r.parquet")
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("analyze", overrides=[f"run_dir={tmp_path / 'run'}", "figures=false",
                                            f"inputs=[{tmp_path / 'r.parquet'}]"])
    run = run_analysis(cfg)
    assert (run / "rates.csv").is_file() and not (run / "capability.csv").exists()


def test_broken_capability_file_names_the_file(tmp_path):
    from em.analysis.capability import read_capability
    from em.errors import DataError

    f = tmp_path / "capability.json"
    f.write_text('{"model": "m", "tasks": []}')
    with pytest.raises(DataError, match=str(f)):
        read_capability([f])
