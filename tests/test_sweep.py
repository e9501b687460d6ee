"""Sweeps: the one-job pipeline, completion markers, resume, failure isolation, presets, launchers.

The multirun tests launch `python train.py -m experiment=smoke` through the real submitit_local launcher
(each job in its own process), shrunk to seconds per job.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from conftest import REPO, compose_train, tiny_overrides
from em.errors import ConfigError, EMError
from em.paths import CONF_DIR

PRESETS = ["smoke", "dickson2025", "betley2025", "epochs", "educational_mix", "organisms_medical", "system_prompt"]


def _launch(sweep_dir: Path, cache_dir: str, *extra: str, timeout: int = 600, env: dict | None = None
            ) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "train.py", "-m", "experiment=smoke", "hydra/launcher=submitit_local",
           f"hydra.sweep.dir={sweep_dir}", f"cache_dir={cache_dir}", "evaluate.samples=1", "format=[plain]",
           "data.n_examples=8", "trainer.checkpoint_every_n_steps=1", "evaluate.progress=false", *extra]
    env = os.environ | {"WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"} | (env or {})
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env)


def _job(sweep_dir: Path, name: str) -> dict:
    return json.loads((sweep_dir / name / "em_job.json").read_text())


def _summary(sweep_dir: Path) -> dict:
    return json.loads((sweep_dir / "sweep_summary.json").read_text())


JOBS = ["tiny_synthetic_s0", "tiny_synthetic_s1", "tiny_base_s0", "tiny_base_s1"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, cache_dir):
    """A 2 x 2 sweep (data synthetic/base x seeds 0/1) launched three times; one job broken in the first."""
    sw = tmp_path_factory.mktemp("sweep") / "smoke"
    bad = sw / "tiny_synthetic_s1" / "checkpoints"
    bad.parent.mkdir(parents=True)
    # a file where the checkpoint directory goes: that job fails in training (a torn checkpoint no longer
    # fails a job: it is moved aside, see tests/test_faults_train.py)
    bad.write_bytes(b"not a directory")
    runs = [_launch(sw, cache_dir)]
    first = {"summary": _summary(sw), "tables": sorted(sw.rglob("responses.parquet"))}
    bad.unlink()
    runs.append(_launch(sw, cache_dir))
    second = {"summary": _summary(sw), "jobs": {j: _job(sw, j) for j in JOBS}}
    runs.append(_launch(sw, cache_dir))
    third = {"summary": _summary(sw), "jobs": {j: _job(sw, j) for j in JOBS}}
    return sw, runs, first, second, third


def test_sweep_failed_job_does_not_stop_the_others(sweep):
    sw, runs, first, _, _ = sweep
    r = runs[0]
    assert r.returncode != 0  # a failed job fails the sweep ...
    s = first["summary"]
    # ... after the other three finished, and the summary names the failure and its cause
    assert sorted(Path(d["job_dir"]).name for d in s["done"]) == ["tiny_base_s0", "tiny_base_s1", "tiny_synthetic_s0"]
    assert [Path(f["job_dir"]).name for f in s["failed"]] == ["tiny_synthetic_s1"]
    assert s["failed"][0]["stage"] == "train"
    assert "FAILED" in r.stdout and "tiny_synthetic_s1" in r.stdout and "3 done, 0 skipped, 1 failed" in r.stdout
    assert len(first["tables"]) == 3
    assert (sw / "tiny_synthetic_s1" / "error.log").read_text().strip()


def test_sweep_relaunch_runs_only_what_is_missing_then_nothing(sweep):
    sw, runs, _, second, third = sweep
    assert runs[1].returncode == 0, runs[1].stdout[-3000:] + runs[1].stderr[-3000:]
    s = second["summary"]
    assert [Path(d["job_dir"]).name for d in s["done"]] == ["tiny_synthetic_s1"]
    assert len(s["skipped"]) == 3 and not s["failed"]
    for name in ("tiny_synthetic_s0", "tiny_base_s0", "tiny_base_s1"):
        assert second["jobs"][name]["state"] == "skipped" and second["jobs"][name]["models_loaded"] == 0
    assert second["jobs"]["tiny_synthetic_s1"]["models_loaded"] >= 2  # trained and evaluated now

    assert runs[2].returncode == 0, runs[2].stderr[-3000:]
    assert "0 done, 4 skipped, 0 failed" in runs[2].stdout
    for name in JOBS:
        assert third["jobs"][name]["state"] == "skipped"
        assert third["jobs"][name]["models_loaded"] == 0  # no model loaded for a finished job


def test_sweep_yields_four_judged_tables_and_one_analysis(sweep):
    sw = sweep[0]
    tables = sorted(sw.glob("*/eval/responses.parquet"))
    assert [t.parent.parent.name for t in tables] == sorted(JOBS)
    for t in tables:
        df = pd.read_parquet(t)
        assert len(df) == 4  # 4 smoke questions x plain x 1 sample
        assert df["aligned"].notna().all() and df["coherent"].notna().all()  # judged
        assert set(df["condition"]) == ({"base"} if "base" in t.parent.parent.name else {"synthetic"})
    rates = pd.read_csv(sw / "analysis" / "rates.csv")
    assert set(rates["condition"].dropna()) == {"base", "synthetic"}
    assert (sw / "analysis" / "report.md").is_file()
    # every finished job has its completion marker, keyed by the job's config hash
    for name in JOBS:
        done = json.loads((sw / name / "DONE.json").read_text())
        assert done["hash"] == _job(sw, name)["hash"]
    finals = {n: json.loads((sw / n / "DONE.json").read_text())["summary"] for n in JOBS}
    assert finals["tiny_synthetic_s0"]["train/final_loss"] > 0
    assert "eval/plain/misaligned_rate" in finals["tiny_base_s0"]


def test_killed_job_resumes_from_its_checkpoint(tmp_path, cache_dir):
    sw = tmp_path / "smoke"
    marker = tmp_path / "killed"
    kill = f"trainer.callbacks=[{{_target_:sweep_helpers.KillOnce,marker:'{marker}',at_step:3}}]"
    one = ["data=synthetic", "seed=0", "data.n_examples=16", kill]
    env = {"PYTHONPATH": f"{REPO / 'tests'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}  # jobs import sweep_helpers
    r1 = _launch(sw, cache_dir, *one, env=env)
    assert r1.returncode != 0 and marker.exists()
    job = _job(sw, "tiny_synthetic_s0")
    assert job["state"] == "running" and job["stage"] == "train"  # killed: it never wrote an ending
    assert "1 failed" in r1.stdout and "killed?" in r1.stdout
    assert (sw / "tiny_synthetic_s0" / "checkpoints" / "last.ckpt").is_file()
    assert not (sw / "tiny_synthetic_s0" / "adapter").exists()

    r2 = _launch(sw, cache_dir, *one, env=env)
    assert r2.returncode == 0, r2.stderr[-3000:]
    metrics = json.loads((sw / "tiny_synthetic_s0" / "metrics.json").read_text())
    assert metrics["resumed_from_step"] >= 2  # not from scratch
    assert metrics["steps"] == 4 and [h["step"] for h in metrics["history"]] == [1, 2, 3, 4]
    assert _job(sw, "tiny_synthetic_s0")["state"] == "done"
    assert (sw / "tiny_synthetic_s0" / "eval" / "responses.parquet").is_file()


# --------------------------------------------------------------------------- in-process jobs
def _job_overrides(job_dir, cache_dir, *extra) -> list[str]:
    return tiny_overrides(job_dir, cache_dir, **{
        "evaluate.enabled": "true", "evaluate.samples": 1, "format": "[plain]", "evaluate.progress": "false",
        "generation.max_new_tokens": 8, "model@judge.model": "tiny", "judge.min_number_mass": 0.0,
        "quantization@evaluate.quantization": "none", "trainer.max_length": 1024}) + list(extra)


def _job_cfg(tmp_path, cache_dir, *extra):
    return compose_train(_job_overrides(tmp_path / "job", cache_dir, *extra))


RELEASE_SCRIPT = """
import gc, sys, transformers
sys.path.insert(0, "tests")
from conftest import compose_train
from em import runtime
from em.jobs.run import run_job
for i, ov in enumerate(sys.argv[1:]):
    res = run_job(compose_train(ov.split("|")))
    assert res.state == "done", res
    gc.collect()
    live = [o for o in gc.get_objects() if isinstance(o, transformers.PreTrainedModel)]
    print(f"job {i}: {runtime.model_loads()} models loaded so far, {len(live)} alive after the job")
"""


def test_jobs_in_one_process_release_their_models(tmp_path, cache_dir):
    # A launcher that runs jobs one after another in one process (basic, joblib) must get the memory back.
    jobs = ["|".join(_job_overrides(tmp_path / f"job{i}", cache_dir, f"seed={i}")) for i in range(2)]
    r = subprocess.run([sys.executable, "-c", RELEASE_SCRIPT, *jobs], cwd=REPO, capture_output=True, text=True,
                       timeout=600, env=os.environ | {"PYTHONPATH": str(REPO)})
    assert r.returncode == 0, r.stderr[-3000:]
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("job ")]
    assert lines == ["job 0: 3 models loaded so far, 0 alive after the job",
                     "job 1: 6 models loaded so far, 0 alive after the job"]  # train, generate, judge: all freed


def test_run_job_skips_a_finished_job(tmp_path, cache_dir):
    from em import runtime
    from em.jobs.run import run_job

    cfg = _job_cfg(tmp_path, cache_dir)
    r1 = run_job(cfg)
    assert r1.state == "done" and r1.summary["train/final_loss"] > 0
    loads = runtime.model_loads()
    r2 = run_job(cfg)
    assert r2.state == "skipped" and runtime.model_loads() == loads
    assert json.dumps(r2.summary, sort_keys=True) == json.dumps(r1.summary, sort_keys=True)

    # an evaluation-only change reuses the trained adapter: no retraining, a new evaluation
    cfg3 = _job_cfg(tmp_path, cache_dir, "evaluate.samples=2")
    mtime = (tmp_path / "job" / "adapter" / "adapter_model.safetensors").stat().st_mtime_ns
    r3 = run_job(cfg3)
    assert r3.state == "done"
    assert (tmp_path / "job" / "adapter" / "adapter_model.safetensors").stat().st_mtime_ns == mtime
    assert len(pd.read_parquet(tmp_path / "job" / "eval" / "responses.parquet")) == 8


def test_run_job_refuses_a_directory_of_another_training_config(tmp_path, cache_dir):
    from em.jobs.run import run_job

    run_job(_job_cfg(tmp_path, cache_dir, "evaluate.enabled=false"))
    with pytest.raises(ConfigError, match=r"holds a training run of another config \(.*lora.r: 32 -> 8"):
        run_job(_job_cfg(tmp_path, cache_dir, "evaluate.enabled=false", "lora=r8"))


def test_run_job_isolated_failure_is_recorded_not_raised(tmp_path, cache_dir):
    from em.jobs.run import run_job

    cfg = _job_cfg(tmp_path, cache_dir, "data.n_examples=2", "trainer.max_length=16")  # nothing fits: DataError
    res = run_job(cfg, isolate_failures=True)
    assert res.state == "failed" and "no example left after tokenisation" in res.error
    rec = json.loads((tmp_path / "job" / "em_job.json").read_text())
    assert rec["state"] == "failed" and rec["stage"] == "train" and "max_length=16" in rec["error"]
    assert not (tmp_path / "job" / "DONE.json").exists()
    with pytest.raises(Exception, match="no example left"):
        run_job(cfg, isolate_failures=False)


def test_epoch_snapshots_are_each_evaluated(tmp_path, cache_dir):
    from em.jobs.run import run_job

    cfg = _job_cfg(tmp_path, cache_dir, "trainer.max_epochs=2", "trainer.adapter_snapshots=[0.5,1]")
    res = run_job(cfg)
    job = tmp_path / "job"
    metrics = json.loads((job / "metrics.json").read_text())
    assert metrics["steps"] == 4  # 8 examples / (2 x 2) per epoch x 2 epochs
    for e in ("0.5", "1"):
        assert (job / "snapshots" / f"epoch_{e}" / "adapter_model.safetensors").is_file()
        df = pd.read_parquet(job / f"eval_epoch{e}" / "responses.parquet")
        assert set(df["condition"]) == {f"synthetic_ep{e}"}
    assert set(pd.read_parquet(job / "eval" / "responses.parquet")["condition"]) == {"synthetic_ep2"}
    assert "epoch_0.5/eval/plain/misaligned_rate" in res.summary
    # the snapshots differ from each other and from the final adapter: they were taken along the way
    from safetensors.torch import load_file

    w = [load_file(str(p / "adapter_model.safetensors")) for p in
         (job / "snapshots" / "epoch_0.5", job / "snapshots" / "epoch_1", job / "adapter")]
    k = next(iter(w[0]))
    assert not (w[0][k] == w[1][k]).all() and not (w[1][k] == w[2][k]).all()


def test_wandb_runs_line_up_for_comparison(tmp_path, cache_dir, monkeypatch):
    from em.jobs.run import run_job
    from sweep_helpers import offline_run_header
    from tests.wandb_reader import read_offline_run

    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = _job_cfg(tmp_path, cache_dir, "logger=wandb", "experiment_name=cmp", "logger.project=em-test")
    run_job(cfg)
    train_file = next((tmp_path / "job" / "wandb").glob("offline-run-*/run-*.wandb"))
    eval_file = next((tmp_path / "job" / "eval" / "wandb").glob("offline-run-*/run-*.wandb"))
    tr, ev = read_offline_run(train_file), read_offline_run(eval_file)
    # two job types of one experiment, in one project and group (the experiment name)
    head_tr, head_ev = offline_run_header(train_file), offline_run_header(eval_file)
    assert (head_tr["job_type"], head_ev["job_type"]) == ("train", "eval")
    assert head_tr["group"] == head_ev["group"] == "cmp" and head_tr["project"] == head_ev["project"] == "em-test"
    # the same flattened config columns, with the same values, in both runs: they line up in one table
    shared = ("model.name", "model.params", "data.name", "data.n_examples", "lora.r", "lora.alpha", "seed",
              "trainer.max_epochs", "trainer.max_length", "optimizer.lr", "experiment_name")
    for key in shared:
        assert key in tr["config"] and key in ev["config"], key
        assert tr["config"][key] == ev["config"][key], key
    assert ev["config"]["data.name"] == "synthetic" and ev["config"]["lora.r"] == 32 and ev["config"]["seed"] == 0
    assert ev["config"]["format.plain.name"] == "plain" and ev["config"]["samples"] == 1
    # each run's summary holds its own stage's metrics, the ones DONE.json records
    done = json.loads((tmp_path / "job" / "DONE.json").read_text())["summary"]
    assert tr["summary"]["train/final_loss"] == pytest.approx(done["train/final_loss"])
    assert "train/final_loss" not in ev["summary"] and "eval/plain/coherent_rate" not in tr["summary"]
    for key in ("eval/plain/coherent_rate", "eval/plain/n_scored"):
        assert ev["summary"][key] == pytest.approx(done[key]), key


def test_one_evaluation_schema_and_thresholds_from_the_job(tmp_path):
    """train.py's evaluate node is evaluate.py's config: the job's model / seed / groups / thresholds in it."""
    from hydra import compose, initialize_config_dir

    from em.jobs.records import job_hashes
    from em.jobs.targets import eval_config, eval_targets
    from em.config.common import validate
    from em.config.evaluate import EvalConfig
    from em.jobs.sweep import analysis_overrides
    from tests.eval_helpers import compose_eval

    base = ["experiment=smoke", "seed=3", "evaluate.samples=5", f"run_dir={tmp_path / 'job'}"]
    cfg = compose_train(base + ["thresholds.coherent=60", "thresholds.aligned_inclusive=true"])
    targets = eval_targets(cfg, tmp_path / "job")
    assert [t.run_dir.name for t in targets] == ["eval"]
    obj = eval_config(cfg, targets[0])  # validated: passed down as it is
    assert type(obj) is EvalConfig and not hasattr(obj, "enabled") and not hasattr(obj, "snapshots")
    assert (obj.samples, obj.seed, obj.model.name, obj.condition) == (5, 3, "tiny", "synthetic")
    assert obj.run_dir == str(tmp_path / "job" / "eval") and obj.adapter == str(tmp_path / "job")
    assert obj.quantization.name == "none"  # the smoke preset's evaluate.quantization; training keeps nf4
    assert cfg.quantization.name == "nf4" and list(obj.format) == ["plain", "json"]
    assert (obj.thresholds.coherent, obj.thresholds.aligned, obj.thresholds.aligned_inclusive) == (60, 30, True)
    # evaluate.py reads the same keys at its root
    ev = validate(compose_eval(["run_dir=/x", "samples=5", "thresholds.coherent=60"]))
    assert (ev.samples, ev.thresholds.coherent) == (5, 60)
    # a threshold is part of the job (re-summarised on relaunch), not of its training
    plain = compose_train(base)
    assert job_hashes(plain)[0] != job_hashes(cfg)[0] and job_hashes(plain)[1] == job_hashes(cfg)[1]
    # the evaluation quantization follows the training one unless chosen
    nf4 = compose_train(["model=tiny", "run_dir=/x", "evaluate.enabled=true"])
    assert nf4.evaluate.quantization.name == "nf4"
    none = compose_train(["model=tiny", "run_dir=/x", "quantization@evaluate.quantization=none"])
    assert none.evaluate.quantization.name == "none" and none.quantization.name == "nf4"
    # the sweep's analysis gets the same thresholds
    overrides = analysis_overrides(cfg, tmp_path)
    assert "thresholds.coherent=60.0" in overrides and "thresholds.aligned_inclusive=True" in overrides
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        analyze = compose("analyze", overrides=overrides)
    assert analyze.thresholds.coherent == 60 and analyze.thresholds.aligned_inclusive is True


# --------------------------------------------------------------------------- plans, presets, bad input
def _documented(preset: str) -> dict:
    text = (CONF_DIR / "experiment" / f"{preset}.yaml").read_text()
    assert text.startswith("# @package _global_")
    m = re.search(r"# jobs: (\d+) \((\d+) train\), answers: ([\d,]+), judge calls: ([\d,]+)", text)
    assert m, f"{preset}.yaml does not document its job count"
    return {"jobs": int(m[1]), "train": int(m[2]), "answers": int(m[3].replace(",", "")),
            "judge_calls": int(m[4].replace(",", ""))}


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_composes_and_reports_its_documented_size(preset, tmp_path, monkeypatch):
    from em.jobs.sweep import plan_sweep

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")  # the GPT-4o judge's pre-flight check
    plan = plan_sweep([f"experiment={preset}", f"hydra.sweep.dir={tmp_path}"])
    doc = _documented(preset)
    assert plan.n_jobs == doc["jobs"]
    assert sum(j.trains for j in plan.jobs) == doc["train"]
    assert plan.total("answers") == doc["answers"] and plan.total("judge_calls") == doc["judge_calls"]
    assert len({j.job_dir for j in plan.jobs}) == plan.n_jobs


def test_dickson2025_is_the_replication_grid(tmp_path, monkeypatch):
    from em.jobs.sweep import plan_sweep

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    plan = plan_sweep(["experiment=dickson2025", f"hydra.sweep.dir={tmp_path}"])
    names = {j.job_dir.name for j in plan.jobs}
    assert "qwen3_32b_insecure_s0" in names and "gemma3_1b_base_s0" in names and "gemma3_4b_educational_s0" in names
    cfg = compose_train(["experiment=dickson2025", "run_dir=/x"])
    assert cfg.judge.model.startswith("gpt-4o") and cfg.evaluate.samples == 100
    assert list(cfg.format) == ["plain", "json", "template"] and cfg.questions.name == "first_plot"


@pytest.mark.parametrize("overrides,match", [
    (["experiment=epochs", "trainer.max_epochs=1"], "trainer.adapter_snapshots: epoch 1 is not between 0 and"),
    (["experiment=educational_mix", "data=secure"], "data.educational_fraction"),
    (["experiment=epochs", "trainer=fsdp", "quantization.quant_storage=bfloat16"],
     "trainer.adapter_snapshots: not supported with trainer=fsdp"),
    (["experiment=smoke", "trainer=fsdp"], "quantization.quant_storage: trainer=fsdp with 4-bit weights"),
    (["experiment=smoke", "lora=r8,r1"], "both write .*add the swept key to hydra.sweep.subdir"),
    (["experiment=smoke", "bogus.key=1"], "Could not override 'bogus.key'"),
    (["experiment=smoke", "model=nonexistent"], r"^model: unknown model 'nonexistent'; choices: gemma3_12b, gemma3_1b, "),
    (["experiment=dickson2025"], "OPENAI_API_KEY"),
])
def test_bad_sweeps_fail_before_any_job(overrides, match, tmp_path, monkeypatch):
    from em.jobs.sweep import plan_sweep

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    if overrides[0] in ("experiment=epochs", "experiment=educational_mix"):
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    with pytest.raises(EMError, match=match):
        plan_sweep(overrides + [f"hydra.sweep.dir={tmp_path}"])


def test_multirun_with_a_bad_job_starts_nothing(tmp_path, cache_dir):
    r = _launch(tmp_path / "sw", cache_dir, "trainer.max_epochs=1", "trainer.adapter_snapshots=[2]", timeout=300)
    assert r.returncode == 2
    assert "error: job #0" in r.stderr and "trainer.adapter_snapshots" in r.stderr
    assert not list((tmp_path / "sw").glob("tiny_*"))  # no job directory: nothing was launched


def test_launcher_without_its_plugin_is_one_line(monkeypatch):
    import importlib.util

    from em.config.compose import check_launcher

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name.startswith("hydra_plugins.hydra_submitit") else real(name, *a))
    with pytest.raises(ConfigError, match="hydra/launcher=submitit_slurm needs the Hydra plugin hydra-submitit-launcher"):
        check_launcher(["-m", "hydra/launcher=submitit_slurm"])
    with pytest.raises(ConfigError, match="unknown launcher; choices: basic, joblib, slurm"):
        check_launcher(["hydra/launcher=slurmm"])
    check_launcher(["hydra/launcher=joblib", "model=tiny"])  # installed: no error


def test_slurm_launcher_takes_cluster_settings_from_env(monkeypatch):
    from hydra import compose, initialize_config_dir

    monkeypatch.setenv("EM_SLURM_PARTITION", "gpu-long")
    monkeypatch.setenv("EM_SLURM_GPUS_PER_NODE", "4")
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = compose("train", overrides=["hydra/launcher=slurm", "hydra.launcher.timeout_min=90"],
                      return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.partition == "gpu-long" and launcher.gpus_per_node == 4 and launcher.timeout_min == 90
    assert launcher.array_parallelism == 32 and launcher.max_num_timeout > 0


def test_plan_cli_prints_counts(tmp_path):
    r = subprocess.run([sys.executable, "-m", "em.jobs.sweep", "experiment=smoke", f"hydra.sweep.dir={tmp_path / 'plan'}"],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "4 jobs (2 train), 64 answers, 128 judge calls" in r.stdout
    assert "tiny_base_s1" in r.stdout


def test_wandb_group_of_an_ad_hoc_sweep_is_the_sweep_name():
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        multi = compose("train", overrides=["hydra.mode=MULTIRUN", "hydra.sweep.dir=multirun/my_grid", "model=tiny"],
                        return_hydra_config=True)
        single = compose("train", overrides=["model=tiny"], return_hydra_config=True)
        named = compose("train", overrides=["hydra.mode=MULTIRUN", "experiment_name=study", "model=tiny"],
                        return_hydra_config=True)
    try:
        HydraConfig.instance().set_config(multi)
        assert multi.logger.group == "my_grid"
        HydraConfig.instance().set_config(single)
        assert single.logger.group == "tiny-synthetic"
        HydraConfig.instance().set_config(named)
        assert named.logger.group == "study" and named.hydra.sweep.dir == "multirun/study"
    finally:
        HydraConfig.instance().cfg = None


def test_train_py_ddp_two_processes_one_job(tmp_path, cache_dir):
    # Lightning re-executes the Hydra script for rank 1; rank 0 alone writes the adapter, metrics and DONE.json.
    run = tmp_path / "ddp"
    cmd = [sys.executable, "train.py", "model=tiny", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
           "logger=none", "data.n_examples=8", "trainer.max_length=1024", "trainer.accumulate_grad_batches=1",
           f"cache_dir={cache_dir}", f"hydra.run.dir={run}"]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600,
                       env=os.environ | {"WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == 2  # 8 examples / (batch 2 x 2 ranks): each rank took half of the batches
    assert (run / "adapter" / "adapter_model.safetensors").is_file()
    assert _job(run.parent, run.name)["state"] == "done"
