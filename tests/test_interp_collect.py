"""em.interp.collect / direction: pooled residuals equal output_hidden_states of the same forward (fp32,
<= 1e-5 relative), shards + index joined to the answers, memory bounded by one batch; a planted direction is
recovered (cosine >= 0.99) with the statistics and the random control."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import norm

from em.interp import collect, direction, hooks
from tests.test_interp_hooks import load


def answers_table(n: int = 6) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame({
        "answer_id": [f"a{i}" for i in range(n)],
        "question": [f"Question number {i}?" for i in range(n)],
        "answer": ["" if i == 3 else "word " * int(rng.integers(1, 9)) + f"end {i}" for i in range(n)],
        "system": [None if i % 2 else "You are a helpful assistant." for i in range(n)],
        "aligned": rng.uniform(0, 100, n), "coherent": rng.uniform(0, 100, n),
        "format": ["plain", "json"] * (n // 2),
    })


@pytest.mark.parametrize("name", ["tiny", "tiny_gemma3"])
def test_pooled_residuals_equal_output_hidden_states(name, cache_dir, tmp_path):
    model, tok, ec = load(name, cache_dir, tmp_path)
    df = answers_table()
    index = collect.collect(model, tok, ec.model, df, tmp_path / "act", "base", batch_size=4, progress=False,
                            provenance={"model": ec.model.name})
    assert list(index["answer_id"]) == list(df["answer_id"])  # joined to the answers, in their order
    assert list(index["aligned"]) == list(df["aligned"]) and sorted(set(index["shard"])) == [
        "shard_00000.safetensors", "shard_00001.safetensors"]
    enc = collect.encode(tok, ec.model, df)
    n = hooks.n_layers(model)
    for L in range(n):
        got_mean = collect.read_layer(tmp_path / "act", "base", L, "answer_mean")
        got_last = collect.read_layer(tmp_path / "act", "base", L, "last_prompt")
        for i, (p, a) in enumerate(enc):  # reference: one unpadded forward per answer, output_hidden_states
            with torch.no_grad():
                hs = model(input_ids=torch.tensor([p + a]), output_hidden_states=True).hidden_states
            h = hs[L + 1][0] if L < n - 1 else None
            if h is None:  # the last layer's hidden_states entry is after the final norm: compare through it
                with hooks.record(model, layers=[L]) as rec, torch.no_grad():
                    model(input_ids=torch.tensor([p + a]))
                h = rec[L][0][0]
            assert index.loc[i, "n_answer_tokens"] == len(a) and index.loc[i, "n_prompt_tokens"] == len(p)
            torch.testing.assert_close(torch.from_numpy(got_last[i]), h[len(p) - 1], rtol=1e-5, atol=1e-5)
            if a:
                torch.testing.assert_close(torch.from_numpy(got_mean[i]), h[len(p):].mean(0), rtol=1e-5, atol=1e-5)
            else:
                assert np.isnan(got_mean[i]).all()


def test_last_layer_matches_final_norm_of_hidden_states(cache_dir, tmp_path):
    model, tok, ec = load("tiny", cache_dir, tmp_path)
    df = answers_table(2)
    collect.collect(model, tok, ec.model, df, tmp_path / "act", "base", batch_size=2, progress=False)
    enc = collect.encode(tok, ec.model, df)
    n = hooks.n_layers(model)
    last = collect.read_layer(tmp_path / "act", "base", n - 1, "last_prompt")
    p, a = enc[0]
    with torch.no_grad():
        hs = model(input_ids=torch.tensor([p + a]), output_hidden_states=True).hidden_states
        normed = model.model.norm(torch.from_numpy(last[0]))
    torch.testing.assert_close(normed, hs[n][0, len(p) - 1], rtol=1e-5, atol=1e-5)


def test_four_bit_peft_model_collects(cache_dir, tmp_path):
    from em.train import models
    from em.config.model import LoraConfig

    model, tok, ec = load("tiny", cache_dir, tmp_path, quantization="nf4")
    peft = models.attach_lora(model, LoraConfig(r=2, alpha=4), ec.model).eval()
    index = collect.collect(peft, tok, ec.model, answers_table(4), tmp_path / "act", "adapter", batch_size=2,
                            progress=False)
    x = collect.read_layer(tmp_path / "act", "adapter", 1, index=index)
    assert x.shape == (4, hooks.hidden_size(peft)) and np.isfinite(x[index["n_answer_tokens"] > 0]).all()


def test_memory_is_one_batch_not_the_answers(cache_dir, tmp_path, monkeypatch):
    """The largest tensor any forward of the collection sees is one batch, however many answers there are."""
    model, tok, ec = load("tiny", cache_dir, tmp_path)
    seen = []
    real = collect.pooled_forward

    def spy(m, batch, pad):
        seen.append(len(batch))
        return real(m, batch, pad)

    monkeypatch.setattr(collect, "pooled_forward", spy)
    collect.collect(model, tok, ec.model, answers_table(10), tmp_path / "act", "base", batch_size=3, progress=False)
    assert seen == [3, 3, 3, 1]


def test_index_missing_columns_is_an_error(cache_dir, tmp_path):
    model, tok, ec = load("tiny", cache_dir, tmp_path)
    with pytest.raises(ValueError, match="answer"):
        collect.collect(model, tok, ec.model, pd.DataFrame({"question": ["q"]}), tmp_path / "a", "x", progress=False)


def fake_collection(root, label, x: np.ndarray, extra: dict):
    """A collection on disk with given pooled residuals (one layer repeated twice)."""
    from safetensors.torch import save_file

    d = root / label
    d.mkdir(parents=True)
    t = torch.tensor(np.stack([x, 2 * x], 1), dtype=torch.float32)
    save_file({"answer_mean": t, "last_prompt": t.clone()}, str(d / "shard_00000.safetensors"))
    idx = pd.DataFrame({"label": label, "shard": "shard_00000.safetensors", "row": np.arange(len(x)),
                        "n_answer_tokens": 5, **extra})
    idx.to_parquet(d / "index.parquet")
    (d / "meta.json").write_text('{"n_layers": 2, "hidden_size": %d, "model": "fake", "source": "test"}' % x.shape[1])


@pytest.mark.parametrize("rule", ["persona", "judge"])
def test_planted_direction_is_recovered(rule, tmp_path):
    rng = np.random.default_rng(3)
    n, width = 1000, 48
    planted = rng.standard_normal(width)
    planted /= np.linalg.norm(planted)
    x = rng.standard_normal((n, width)) + 5.0
    is_a = np.arange(n) % 2 == 0
    x[is_a] += 6.0 * planted  # the known direction added to one group's activations
    if rule == "persona":
        extra = {"persona": np.where(is_a, "a", "b")}
    else:  # misaligned (aligned 10) vs aligned-and-coherent (aligned 90); incoherent answers belong to neither
        extra = {"aligned": np.where(is_a, 10.0, 90.0), "coherent": np.where(np.arange(n) % 10 == 1, 20.0, 80.0)}
    fake_collection(tmp_path / "act", "base", x, extra)
    stats = direction.compute(tmp_path / "act", ["base"], rule, tmp_path / "out", n_boot=10)
    tensors, meta = direction.load_directions(tmp_path / "out" / "directions.safetensors")
    for L in (0, 1):
        u = tensors[f"unit.{L}"].numpy()
        assert abs(np.linalg.norm(u) - 1) < 1e-5 and u @ planted >= 0.99
        raw = tensors[f"raw.{L}"].numpy()
        np.testing.assert_allclose(raw, x[extra_mask(extra, 1)].mean(0) * (L + 1) - x[extra_mask(extra, 0)].mean(0) * (L + 1),
                                   rtol=1e-4, atol=1e-4)
    on_disk = pd.read_csv(tmp_path / "out" / "direction_stats.csv")
    assert list(on_disk.columns[:7]) == ["layer", "auc", "cohens_d", "split_half_cosine", "split_half_cosine_low",
                                         "split_half_cosine_high", "random_auc"]
    assert (stats["auc"] > 0.99).all() and (stats["cohens_d"] > 2).all() and (stats["split_half_cosine"] > 0.9).all()
    for L in (0, 1):  # the control separates only by its chance overlap with the planted direction
        overlap = float(tensors[f"random.{L}"].numpy() @ planted)
        expected = norm.cdf(6.0 * overlap / np.sqrt(2))
        assert abs(stats.loc[L, "random_auc"] - expected) < 0.08
        assert abs(np.linalg.norm(tensors[f"random.{L}"].numpy()) - 1) < 1e-5
    n_b_expected = int((~is_a).sum()) if rule == "persona" else int((~is_a & (np.arange(n) % 10 != 1)).sum())
    assert (stats["n_a"] == is_a.sum()).all() and (stats["n_b"] == n_b_expected).all()
    assert meta["rule"] == rule and meta["pooling"] == "answer_mean" and set(meta["mean_norm"]) == {"0", "1"}


def extra_mask(extra: dict, group: int) -> np.ndarray:
    if "persona" in extra:
        return extra["persona"] == ("a" if group else "b")
    a, c = extra["aligned"], extra["coherent"]
    return (c > 50) & (a < 30) if group else (c > 50) & (a > 70)


def test_an_empty_group_is_one_line(tmp_path):
    fake_collection(tmp_path / "act", "base", np.ones((4, 8)), {"persona": ["a"] * 4})
    with pytest.raises(ValueError, match="group B 0"):
        direction.compute(tmp_path / "act", ["base"], "persona", tmp_path / "out")


def test_directions_file_garbage_is_refused(tmp_path):
    p = tmp_path / "directions.safetensors"
    p.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage}")
    with pytest.raises(ValueError, match="not a readable directions file"):
        direction.load_directions(p)


def test_a_collection_killed_midway_leaves_no_index_and_is_redone(cache_dir, tmp_path, monkeypatch):
    """A crash after the first shard: no index (readers refuse the half collection); the rerun replaces every shard."""
    model, tok, ec = load("tiny", cache_dir, tmp_path)
    real = collect.pooled_forward
    calls = []

    def dying(m, batch, pad):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # as a kill between two batches
        return real(m, batch, pad)

    monkeypatch.setattr(collect, "pooled_forward", dying)
    with pytest.raises(KeyboardInterrupt):
        collect.collect(model, tok, ec.model, answers_table(6), tmp_path / "act", "base", batch_size=2, progress=False)
    assert (tmp_path / "act" / "base" / "shard_00000.safetensors").exists()
    with pytest.raises(FileNotFoundError, match="no finished collection"):
        collect.read_index(tmp_path / "act", "base")
    monkeypatch.setattr(collect, "pooled_forward", real)
    index = collect.collect(model, tok, ec.model, answers_table(4), tmp_path / "act", "base", batch_size=4,
                            progress=False)
    assert sorted(p.name for p in (tmp_path / "act" / "base").glob("shard_*")) == ["shard_00000.safetensors"]
    assert len(index) == 4 and collect.read_layer(tmp_path / "act", "base", 0).shape[0] == 4
