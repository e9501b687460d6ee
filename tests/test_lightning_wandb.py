"""Lightning and W&B as their users expect: self.log (monitor-based checkpoints, the progress bar),
several loggers at once, log_every_n_steps, trainer.extra, unknown trainer keys refused, the adapter as a
W&B artifact used by the eval run, and W&B's own settings left alone in mode auto."""

from __future__ import annotations

import csv
import dataclasses
import subprocess
import sys

import lightning as L
import pytest

from em.train.run import run_training
from tests.conftest import REPO, compose_train, tiny_overrides
from tests.wandb_reader import read_offline_run


class _BarMetrics(L.Callback):
    """Keeps what the progress bar showed at the end of training."""

    shown: dict = {}

    def on_train_end(self, trainer, pl_module):
        _BarMetrics.shown = dict(trainer.progress_bar_metrics)


def test_self_log_monitor_checkpoint_two_loggers_and_log_every_n_steps(tmp_path, cache_dir, monkeypatch):
    from em.train import run as training

    monkeypatch.setenv("WANDB_MODE", "offline")
    best = tmp_path / "best"
    ckpt = ("trainer.callbacks=[{_target_:lightning.pytorch.callbacks.ModelCheckpoint,monitor:'train/loss',"
            f"mode:min,save_top_k:1,every_n_train_steps:1,dirpath:'{best}',filename:best}}]")
    run_dir = tmp_path / "run"
    cfg = compose_train(tiny_overrides(run_dir, cache_dir, **{"data.n_examples": 16, "trainer.log_every_n_steps": 2,
                                                                "trainer.max_length": 1024})
                        + ["logger=[wandb,csv]", ckpt, "+trainer.extra.limit_train_batches=6"])
    real_fit = training.fit
    monkeypatch.setattr(training, "fit", lambda *a, **k: real_fit(*a, callbacks=[_BarMetrics()], **k))
    res = run_training(cfg)
    # trainer.extra.limit_train_batches=6 reached L.Trainer: 6 micro-batches = 3 optimizer steps (of 4)
    assert res.metrics["steps"] == 3 and len(res.metrics["history"]) == 3  # metrics.json keeps every step
    assert (best / "best.ckpt").is_file(), "ModelCheckpoint(monitor='train/loss') wrote nothing"
    assert "train/loss" in _BarMetrics.shown
    rows = list(csv.DictReader((run_dir / "csv" / "metrics.csv").open()))
    logged = {int(r["step"]): float(r["train/loss"]) for r in rows if r.get("train/loss")}
    # every 2nd optimizer step only; Lightning's step is 0-based (step 1 = the 2nd optimizer step)
    assert logged == pytest.approx({1: res.metrics["history"][1]["train/loss"]}), logged
    import wandb

    wandb.teardown()  # the W&B service closes its run files (offline writes are flushed on close)
    run = read_offline_run(next((run_dir / "wandb").glob("offline-run-*/run-*.wandb")))
    w_losses = [h["train/loss"] for h in run["history"] if "train/loss" in h]
    assert w_losses == pytest.approx([res.metrics["history"][1]["train/loss"]])
    arts = [a for a in run["artifacts"] if a["type"] == "model"]
    assert arts and arts[0]["name"].startswith("adapter-") and "adapter_config.json" in arts[0]["files"]
    ref = (run_dir / "wandb_artifact.json").read_text()
    assert arts[0]["name"] in ref

    # the eval run records the adapter artifact it used (offline W&B cannot call use_artifact: config)
    from em.tracking import init_wandb, use_adapter_artifact

    eval_run = init_wandb(project="em", run_dir=str(tmp_path / "eval"), job_type="eval")
    assert use_adapter_artifact(eval_run, run_dir).startswith(arts[0]["name"])
    eval_run.finish()
    wandb.teardown()
    ev = read_offline_run(next((tmp_path / "eval" / "wandb").glob("offline-run-*/run-*.wandb")))
    assert ev["config"]["adapter_artifact"].startswith(arts[0]["name"])


@pytest.mark.parametrize("arg, line", [
    ("+trainer.logger=x", "trainer.logger: not a key of TrainerConfig; em sets it from logger=wandb|csv|none"),
    # keys renamed to lightning.Trainer's names: the old name is one line naming the new one
    ("trainer.epochs=2", "trainer.epochs: renamed trainer.max_epochs (lightning.Trainer's name)"),
    ("+trainer.grad_accum=2", "trainer.grad_accum: renamed trainer.accumulate_grad_batches (lightning.Trainer's name)"),
    ("logger=[csv,wandb]", "logger=[csv,wandb]: list wandb first: logger=[wandb,csv]"),
    ("+trainer.limit_train_batches=2", "trainer.limit_train_batches: not a key of TrainerConfig; a lightning.Trainer "
                                       "argument goes in trainer.extra"),
])
def test_unknown_trainer_key_is_one_line(arg, line, tmp_path):
    r = subprocess.run([sys.executable, str(REPO / "train.py"), arg, f"hydra.run.dir={tmp_path / 'r'}"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.strip().startswith(f"error: {line}"), r.stderr[-500:]
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "r").exists()


def test_trainer_extra_cannot_set_what_em_sets():
    from em.errors import ConfigError
    from em.config.train import TrainerConfig

    with pytest.raises(ConfigError, match="trainer.extra.max_epochs: a key of its own; use trainer.max_epochs"):
        TrainerConfig(extra={"max_epochs": 2})
    with pytest.raises(ConfigError, match="trainer.extra.default_root_dir: set by em; use run_dir"):
        TrainerConfig(extra={"default_root_dir": "x"})


def test_trainer_node_names_are_lightning_arguments():
    """Every field em passes to lightning.Trainer under its own name is an argument of lightning.Trainer."""
    import inspect

    from em.config.train import LIGHTNING_ARGS, TrainerConfig

    fields = {f.name for f in dataclasses.fields(TrainerConfig)}
    params = set(inspect.signature(L.Trainer.__init__).parameters)
    assert set(LIGHTNING_ARGS) <= fields and set(LIGHTNING_ARGS) <= params, set(LIGHTNING_ARGS) - params


@pytest.mark.parametrize("env, netrc_host, expected", [
    ({}, None, "offline"),                                             # nothing configured: offline
    ({"WANDB_BASE_URL": "https://wandb.example.org"}, None, None),     # self-hosted: W&B decides
    ({"WANDB_MODE": "online"}, None, None),
    ({"WANDB_API_KEY": "x" * 40}, None, None),
    ({}, "api.wandb.ai", None),                                        # wandb login
])
def test_mode_auto_leaves_users_wandb_settings_alone(env, netrc_host, expected, monkeypatch, tmp_path):
    from em.tracking import effective_mode, wandb_mode

    for k in ("WANDB_MODE", "WANDB_BASE_URL", "WANDB_API_KEY"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("HOME", str(tmp_path))
    if netrc_host:
        (tmp_path / ".netrc").write_text(f"machine {netrc_host}\n  login user\n  password {'y' * 40}\n")
        (tmp_path / ".netrc").chmod(0o600)
    assert wandb_mode("auto") == expected
    assert wandb_mode("offline") == "offline" and wandb_mode("disabled") == "disabled"  # asked: em sets it
    if env.get("WANDB_BASE_URL"):
        assert effective_mode("auto") == "online"


def test_entity_is_a_key_of_all_three_scripts(tmp_path):
    import yaml

    for script, args in (("train", ["logger.entity=lab"]), ("evaluate", ["wandb.entity=lab"]),
                         ("analyze", ["logger=wandb", "wandb.entity=lab"])):
        r = subprocess.run([sys.executable, str(REPO / f"{script}.py"), *args, "--cfg", "job"], cwd=tmp_path,
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, (script, r.stderr[-500:])
        cfg = yaml.safe_load(r.stdout)
        assert (cfg["logger"] if script == "train" else cfg["wandb"])["entity"] == "lab"
