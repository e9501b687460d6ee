"""Issue 23: step snapshots, LoRA geometry, change points, early stopping (tiny random models, few steps)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from em.dynamics import geometry
from em.dynamics.snapshots import step_snapshots
from em.train.run import run_training
from tests.conftest import compose_train, tiny_overrides

SHORT = {"trainer.max_length": 1024, "lora": "r1"}


def _train(tmp_path, cache_dir, name="run", extra=(), **kw):
    cfg = compose_train(tiny_overrides(tmp_path / name, cache_dir, **{**SHORT, **kw}) + list(extra))
    return run_training(cfg)


def _hand_geometry(dirs: list[tuple[int, Path]]) -> pd.DataFrame:
    """The geometry by a second, direct computation: numpy, the whole stacked adapter, SVD for the PCA."""
    from safetensors.numpy import load_file

    states = [load_file(str(d / "adapter_model.safetensors")) for _, d in dirs]
    mods = sorted(k[: -len(".lora_A.weight")] for k in states[0] if k.endswith(".lora_A.weight"))
    flat = np.stack([np.concatenate([np.concatenate([s[m + ".lora_A.weight"].ravel(), s[m + ".lora_B.weight"].ravel()])
                                     for m in mods]).astype(np.float64) for s in states])
    x = flat - flat.mean(0)
    u, sv, _ = np.linalg.svd(x, full_matrices=False)
    pcs = u * sv
    pcs = pcs * np.where(pcs[-1] < 0, -1, 1)  # the sign rule: last snapshot >= 0
    rows = []
    for i, ((step, _), s) in enumerate(zip(dirs, states)):
        for m in mods:
            a, b = s[m + ".lora_A.weight"].ravel().astype(np.float64), s[m + ".lora_B.weight"].ravel().astype(np.float64)
            cos = lambda x, y: float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y)))  # noqa: E731
            prev = states[i - 1] if i else None
            rows.append({"step": step, "module": m, "norm_A": np.linalg.norm(a), "norm_B": np.linalg.norm(b),
                         "cos_A_prev": cos(a, prev[m + ".lora_A.weight"].ravel().astype(np.float64)) if i else np.nan,
                         "cos_B_prev": cos(b, prev[m + ".lora_B.weight"].ravel().astype(np.float64)) if i else np.nan,
                         "pc1": pcs[i, 0], "pc2": pcs[i, 1] if pcs.shape[1] > 1 else 0.0,
                         "pc1_share": sv[0] ** 2 / (sv ** 2).sum()})
    return pd.DataFrame(rows)


def test_snapshots_at_exactly_the_requested_steps_and_geometry_equals_hand_computation(tmp_path, cache_dir):
    # 12 examples / (2 x 2) = 3 optimizer steps per epoch, 2 epochs = 6 steps; every 2 -> 2, 4, 6
    res = _train(tmp_path, cache_dir, **{"data.n_examples": 12, "trainer.max_epochs": 2, "trainer.snapshot_every_n_steps": 2})
    assert res.metrics["steps"] == 6
    snaps = step_snapshots(res.run_dir)
    assert [s for s, _ in snaps] == [2, 4, 6]
    assert sorted(p.name for p in (res.run_dir / "snapshots").iterdir()) == ["step_2", "step_4", "step_6"]
    # the last snapshot is the final adapter (same step)
    from safetensors.torch import load_file

    last, final = load_file(str(snaps[-1][1] / "adapter_model.safetensors")), load_file(str(res.run_dir / "adapter" / "adapter_model.safetensors"))
    assert last.keys() == final.keys() and all(torch.equal(last[k], final[k]) for k in last)

    geo = geometry.read_geometry(res.run_dir / "lora_geometry.csv")
    hand = _hand_geometry(snaps)
    assert list(geo.columns) == geometry.COLUMNS and len(geo) == len(hand) == 3 * hand["module"].nunique()
    assert (geo["rank"] == 1).all()
    merged = geo.merge(hand, on=["step", "module"], suffixes=("", "_hand"))
    assert len(merged) == len(geo)
    for col in ("norm_A", "norm_B", "cos_A_prev", "cos_B_prev", "pc1", "pc2", "pc1_share"):
        np.testing.assert_allclose(merged[col].astype(float), merged[col + "_hand"].astype(float), rtol=1e-5, atol=1e-6,
                                   err_msg=col)
    assert geo.loc[geo.step == 2, "cos_B_prev"].isna().all() and geo.loc[geo.step > 2, "cos_B_prev"].notna().all()
    cps = json.loads((res.run_dir / "lora_changepoints.json").read_text())
    assert set(geometry.SERIES) <= set(cps)  # 3 points: fewer than MIN_POINTS -> None
    assert all(cps[k] is None for k in geometry.SERIES)
    assert res.metrics["lora_geometry"] == str(res.run_dir / "lora_geometry.csv")


def test_resume_mid_run_writes_each_snapshot_once(tmp_path, cache_dir):
    common = {"data.n_examples": 12, "trainer.max_epochs": 2, "trainer.checkpoint_every_n_steps": 1,
              "trainer.snapshot_every_n_steps": 1}
    crash = ["+trainer.callbacks=[{_target_: tests.test_training.CrashAt, step: 4}]"]
    with pytest.raises(RuntimeError, match="simulated crash"):
        _train(tmp_path, cache_dir, "r", extra=crash, **common)
    before = {s: (d / "adapter_model.safetensors").stat().st_mtime_ns for s, d in step_snapshots(tmp_path / "r")}
    assert sorted(before) == [1, 2, 3, 4]
    resumed = _train(tmp_path, cache_dir, "r", **common)
    assert resumed.metrics["resumed_from_step"] == 4
    names = sorted(p.name for p in (tmp_path / "r" / "snapshots").iterdir())
    assert names == [f"step_{i}" for i in range(1, 7)]  # no duplicate, no temp dir left
    after = {s: (d / "adapter_model.safetensors").stat().st_mtime_ns for s, d in step_snapshots(tmp_path / "r")}
    assert all(after[s] == before[s] for s in before)  # the earlier ones were not rewritten
    geo = geometry.read_geometry(tmp_path / "r" / "lora_geometry.csv")
    assert not geo.duplicated(["step", "module"]).any() and sorted(geo.step.unique()) == list(range(1, 7))
    # the same geometry as an uninterrupted run
    full = _train(tmp_path, cache_dir, "full", **common)
    g_full = geometry.read_geometry(full.run_dir / "lora_geometry.csv")
    np.testing.assert_allclose(geo["norm_B"], g_full["norm_B"], rtol=1e-5)
    np.testing.assert_allclose(geo["cos_B_prev"].fillna(2), g_full["cos_B_prev"].fillna(2), rtol=1e-4, atol=1e-6)


def _write_adapter(d: Path, a: np.ndarray, b: np.ndarray) -> None:
    from safetensors.numpy import save_file

    d.mkdir(parents=True)
    save_file({"m.layers.0.q_proj.lora_A.weight": a.astype(np.float32), "m.layers.0.q_proj.lora_B.weight": b.astype(np.float32)},
              str(d / "adapter_model.safetensors"))


def test_rank1_b_rotation_is_found_at_its_step(tmp_path):
    """A rank-1 adapter whose B vector grows along e1 and turns to e2 at step 50: the consecutive cosine
    drops there, and the change point of that series is step 50."""
    rng = np.random.default_rng(0)
    a = rng.normal(size=(1, 8))
    for step in range(10, 101, 10):
        b = np.zeros((16, 1))
        b[0 if step < 50 else 1, 0] = step / 100
        b[:, 0] += rng.normal(scale=1e-3, size=16)
        _write_adapter(tmp_path / "snapshots" / f"step_{step}", a, b)
    (tmp_path / "snapshots" / "step_110.tmp").mkdir()  # a killed run's temp dir: ignored
    geometry.write_geometry(tmp_path)
    geo = geometry.read_geometry(tmp_path / "lora_geometry.csv")
    assert list(geo.step) == list(range(10, 101, 10))
    cos = dict(zip(geo.step, geo.cos_B_prev))
    assert cos[50] < 0.1 and all(cos[s] > 0.99 for s in cos if s not in (10, 50))
    assert geo.cos_A_prev.dropna().round(6).eq(1).all()
    cps = json.loads((tmp_path / "lora_changepoints.json").read_text())
    assert cps["pc1"] == 50
    assert geometry.change_point([1, 2, 3, 4, 5, 6], [0, 0, 0, 1, 1, 1]) == 4
    assert geometry.change_point([1, 2, 3], [0, 0, 1]) is None  # too short
    assert geometry.change_point([1, 2, 3, 4], [1, 1, 1, 1]) is None  # constant


def test_pca_from_gram_equals_svd():
    x = torch.randn(7, 30, dtype=torch.float64)
    coords, share = geometry.pca_from_gram(x @ x.T)
    xc = (x - x.mean(0)).numpy()
    u, s, _ = np.linalg.svd(xc, full_matrices=False)
    ref = (u * s)[:, :2]
    ref = ref * np.where(ref[-1] < 0, -1, 1)
    np.testing.assert_allclose(coords.numpy(), ref, atol=1e-9)
    assert share == pytest.approx(s[0] ** 2 / (s ** 2).sum())


def test_bad_snapshot_every_n_steps_is_one_line(tmp_path):
    from em.errors import ConfigError
    from em.config.common import validate

    with pytest.raises(ConfigError, match="trainer.snapshot_every_n_steps"):
        validate(compose_train([f"run_dir={tmp_path}", "trainer.snapshot_every_n_steps=0"]))


# --------------------------------------------------------------------------- early stopping
def scripted_proxy(trainer, pl_module) -> float:
    """A proxy that rises by 0.1 per optimizer step (crosses 0.3 at step 3)."""
    return trainer.global_step / 10


def test_early_stop_at_the_step_the_proxy_crosses(tmp_path, cache_dir):
    cb = ["+trainer.callbacks=[{_target_: em.dynamics.early_stop.ProxyEarlyStopping, "
          "proxy: 'tests.test_dynamics:scripted_proxy', threshold: 0.3}]"]
    res = _train(tmp_path, cache_dir, extra=cb, **{"data.n_examples": 12, "trainer.max_epochs": 3})
    assert res.metrics["steps"] == 3  # of 9
    assert [h["step"] for h in res.metrics["history"]] == [1, 2, 3]


def test_early_stop_on_a_loss_plateau():
    from em.dynamics.early_stop import ProxyEarlyStopping

    class T:  # the two things the callback reads of a trainer
        should_stop, global_step, callback_metrics = False, 0, {}

    cb, t = ProxyEarlyStopping(monitor="train/loss", patience=3, window=2), T()
    losses = [5, 4, 3, 2, 2, 2, 2, 2, 2]
    for step, loss in enumerate(losses, 1):
        t.global_step, t.callback_metrics = step, {"train/loss": torch.tensor(float(loss))}
        cb.on_train_batch_end(t, None, None, None, 0)
        if t.should_stop:
            break
    # the 2-step mean is best (2.0) at step 5; 3 steps later without improvement: stop at 8
    assert cb.stopped_step == 8 and "plateau" in cb.reason
    with pytest.raises(ValueError):
        ProxyEarlyStopping()


# --------------------------------------------------------------------------- step evaluations and the figure
def test_step_snapshots_are_evaluated_on_the_cheap_subset_with_a_step_column(tmp_path, cache_dir):
    from em.dynamics.figure import step_rates, write_figure
    from em.jobs.run import run_job

    job = tmp_path / "job"
    over = tiny_overrides(job, cache_dir, **{**SHORT, "trainer.max_steps": 2, "trainer.snapshot_every_n_steps": 1,
                                             "evaluate.enabled": "true", "judge": "local_tiny",
                                             "evaluate.steps.enabled": "true", "evaluate.steps.format": "json",
                                             "evaluate.steps.samples": 3, "evaluate.samples": 1,
                                             "generation.max_new_tokens": 4, "format": "[plain,json]",
                                             "quantization@evaluate.quantization": "none"})
    over += ["evaluate.steps.ids=[magic_lamp,easy_money]"]
    res = run_job(compose_train(over), isolate_failures=False)
    assert res.state == "done"
    final = pd.read_parquet(job / "eval" / "responses.parquet")
    assert "step" not in final.columns  # the final adapter is not a snapshot
    for step in (1, 2):
        df = pd.read_parquet(job / f"eval_step{step}" / "responses.parquet")
        answers = df.drop_duplicates(["question_id", "paraphrase", "sample"])
        assert len(answers) == 2 * 3  # 2 questions x 1 format x 3 samples
        assert set(df["question_id"]) == {"magic_lamp", "easy_money"} and set(df["format"]) == {"json"}
        assert df["step"].dtype.kind == "i" and (df["step"] == step).all()
        assert (df["condition"] == "synthetic").all()
        assert "step" in pd.read_csv(job / f"eval_step{step}" / "responses.csv").columns
    rates = step_rates(job)
    assert list(rates["step"]) == [1, 2] and (rates["n_scored"] > 0).all()
    png = write_figure(job)
    assert png.is_file() and png.stat().st_size > 1000
    table = pd.read_csv(job / "dynamics.csv")
    assert list(table["step"]) == [1, 2] and "misaligned_rate/json" in table.columns
    done = json.loads((job / "DONE.json").read_text())["summary"]
    assert "step_2/eval/json/misaligned_rate" in done
