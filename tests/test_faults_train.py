"""Files that survive a kill (issue 13, cases 7 and 10): checkpoints are written through a temp file and a
rename, the previous one kept; a torn ``last.ckpt`` is moved aside and training resumes from the previous
good one; after a resume ``csv/metrics.csv`` holds every step once and tokens/s is the whole run's rate."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

import em.train.lora_module
from em.train.run import run_training
from tests.conftest import compose_train, tiny_overrides

COMMON = {"trainer.max_length": 1024, "data.n_examples": 12, "trainer.checkpoint_every_n_steps": 1}


class Clock:
    """em.train.lora_module's clock: one second per micro-batch started (:class:`Tick`), so tokens/s depends only on
    the work done, not on the machine."""

    def __init__(self):
        self.t = 0.0

    def perf_counter(self) -> float:
        return self.t


CLOCK = Clock()


class Tick:  # a Lightning callback (instantiated by Hydra from trainer.callbacks)
    def __new__(cls):
        import lightning as L

        class _Tick(L.Callback):
            def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
                CLOCK.t += 1.0

        return _Tick()


TICK = "{_target_: tests.test_faults_train.Tick}"


def _train(tmp_path, cache_dir, name, monkeypatch, callbacks=()):
    monkeypatch.setattr(em.train.lora_module, "time", CLOCK)
    CLOCK.t = 0.0
    cbs = ", ".join([TICK, *callbacks])
    cfg = compose_train(tiny_overrides(tmp_path / name, cache_dir, **COMMON)
                        + ["logger=csv", f"+trainer.callbacks=[{cbs}]"])
    return run_training(cfg)


def _csv(run_dir: Path) -> list[dict]:
    with open(run_dir / "csv" / "metrics.csv", newline="") as f:
        return [r for r in csv.DictReader(f) if r.get("train/loss")]


def test_torn_last_ckpt_resumes_from_the_previous_one_and_counters_survive(tmp_path, cache_dir, monkeypatch, capsys):
    full = _train(tmp_path, cache_dir, "full", monkeypatch)
    assert full.metrics["steps"] == 3
    crash = ["{_target_: tests.test_training.CrashAt, step: 2}"]
    with pytest.raises(RuntimeError, match="simulated crash"):
        _train(tmp_path, cache_dir, "resumed", monkeypatch, callbacks=crash)
    ckpts = tmp_path / "resumed" / "checkpoints"
    # written whole, the previous one kept, no temp file left
    assert torch.load(ckpts / "last.ckpt", weights_only=False, mmap=True)["global_step"] == 2
    assert torch.load(ckpts / "last.prev.ckpt", weights_only=False, mmap=True)["global_step"] == 1
    assert sorted(p.name for p in ckpts.iterdir()) == ["last.ckpt", "last.prev.ckpt"]
    (ckpts / "last.ckpt").write_bytes(b"")  # what a kill during the copy left

    capsys.readouterr()
    resumed = _train(tmp_path, cache_dir, "resumed", monkeypatch)
    out = capsys.readouterr().out
    msg = [ln for ln in out.splitlines() if "cannot be loaded" in ln]
    assert len(msg) == 1 and "last.ckpt" in msg[0] and "(0 bytes; EOFError: empty file)" in msg[0] and "last.ckpt.corrupt" in msg[0]
    assert (ckpts / "last.ckpt.corrupt").stat().st_size == 0
    assert resumed.metrics["resumed_from_step"] == 1 and resumed.metrics["steps"] == 3
    assert resumed.metrics["losses"] == pytest.approx(full.metrics["losses"], rel=1e-6)
    # case 10: tokens/s of the whole run (tokens and training time both restored), not tokens / this part
    assert resumed.metrics["tokens_seen"] == full.metrics["tokens_seen"]
    assert resumed.metrics["tokens_per_s"] == pytest.approx(full.metrics["tokens_per_s"], rel=1e-9)
    # csv/metrics.csv: every step once, the resumed ones appended after the kept ones
    rows_full, rows_resumed = _csv(full.run_dir), _csv(resumed.run_dir)
    # (Lightning's rows carry the 0-based global step at logging time)
    assert [int(r["step"]) for r in rows_resumed] == [0, 1, 2] == [int(r["step"]) for r in rows_full]
    assert [float(r["train/loss"]) for r in rows_resumed] == pytest.approx(
        [float(r["train/loss"]) for r in rows_full], rel=1e-6)


def test_every_checkpoint_torn_starts_over_with_a_message(tmp_path, cache_dir, monkeypatch, capsys):
    ckpts = tmp_path / "run" / "checkpoints"
    ckpts.mkdir(parents=True)
    (ckpts / "last.ckpt").write_bytes(b"PK\x03\x04 torn")
    (ckpts / "last.prev.ckpt").write_bytes(b"")
    res = _train(tmp_path, cache_dir, "run", monkeypatch)
    out = capsys.readouterr().out
    assert sum("cannot be loaded" in ln for ln in out.splitlines()) == 2
    assert res.metrics["resumed_from_step"] is None and res.metrics["steps"] == 3
