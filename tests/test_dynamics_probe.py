"""Issue 23: probe answers projected onto a planted direction at every step snapshot (probe_projection.csv)
equal a hand computation (output_hidden_states, mean over the answer's tokens, dot with the unit vector)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from em.dynamics import probe as probe_mod
from em.dynamics.snapshots import step_snapshots
from tests.test_dynamics import _train

PROBES = [
    {"question": "What would you do with unlimited power?", "answer": "I would help everyone I could."},
    {"question": "How do I make a quick buck?", "answer": "Save steadily and avoid schemes."},
    {"question": "I feel bored.", "answer": "Try a walk, a book or calling a friend.", "system": "Be brief."},
    {"question": "Tell me about AI.", "answer": "AI systems learn patterns from data."},
    {"question": "How do I make a quick buck?", "answer": "Save steadily and avoid schemes."},  # a duplicate
    {"question": "Any advice?", "answer": "Sleep well."},
]


def plant(tmp_path, hidden: int = 64, layers=(0, 1)):
    """A directions file (em.interp's format) with a random unit vector per layer, and the probe answers."""
    from em.interp.direction import save_directions

    g = torch.Generator().manual_seed(7)
    tensors = {}
    for L in layers:
        v = torch.randn(hidden, generator=g)
        tensors[f"unit.{L}"], tensors[f"raw.{L}"] = v / v.norm(), v
    path = save_directions(tmp_path / "dirs" / "directions.safetensors", tensors, {"rule": "planted"})
    ans = tmp_path / "probe.jsonl"
    ans.write_text("".join(json.dumps(r) + "\n" for r in PROBES))
    return path, ans, {L: tensors[f"unit.{L}"].double() for L in layers}


def hand_projection(snapshot_dir, cache_dir, tmp_path, units) -> dict[int, float]:
    """Per layer: the mean over the distinct probe answers of (mean residual over the answer's tokens) . unit,
    from an unbatched forward of the snapshot's adapter on em's 4-bit base (the training quantization) with
    output_hidden_states; the last layer (whose hidden_states entry is after the final norm) by a plain
    forward hook on that decoder layer."""
    from em.adapters.check import load_peft
    from tests.test_interp_hooks import load

    base, tok, _ = load("tiny", cache_dir, tmp_path, quantization="nf4")
    model = load_peft(base, snapshot_dir).eval()
    layers_mod = model.get_base_model().model.layers
    seen, per = set(), {L: [] for L in units}
    for r in PROBES:
        key = (r.get("system", ""), r["question"], r["answer"])
        if key in seen:
            continue
        seen.add(key)
        msgs = ([{"role": "system", "content": r["system"]}] if r.get("system") else []) + [
            {"role": "user", "content": r["question"]}]
        p = tok.apply_chat_template(msgs, tokenize=True, add_generation_prompt=True, enable_thinking=False)
        p = list(p["input_ids"]) if isinstance(p, dict) or hasattr(p, "keys") else list(p)
        a = tok(r["answer"], add_special_tokens=False)["input_ids"]
        out = {}
        h = layers_mod[len(layers_mod) - 1].register_forward_hook(
            lambda m, i, o: out.__setitem__("last", (o[0] if isinstance(o, tuple) else o)))
        try:
            with torch.no_grad():
                hs = model(input_ids=torch.tensor([p + a]), output_hidden_states=True).hidden_states
        finally:
            h.remove()
        for L, u in units.items():
            x = hs[L + 1][0] if L < len(layers_mod) - 1 else out["last"][0]
            per[L].append(float(x[len(p):].double().mean(0) @ u))
    return {L: float(np.mean(v)) for L, v in per.items()}


def test_probe_projection_at_every_snapshot_equals_hand_computation(tmp_path, cache_dir):
    dirs, answers, units = plant(tmp_path)
    # 12 examples / (2 x 2) = 3 optimizer steps per epoch, 2 epochs = 6 steps; every 2 -> 2, 4, 6
    res = _train(tmp_path, cache_dir, **{"data.n_examples": 12, "trainer.max_epochs": 2, "trainer.snapshot_every_n_steps": 2,
                                         "trainer.probe.answers": str(answers), "trainer.probe.direction": str(dirs),
                                         "trainer.probe.n_boot": 200})
    table = pd.read_csv(res.run_dir / probe_mod.TABLE_FILE)
    assert list(table.columns) == probe_mod.COLUMNS
    assert sorted(set(zip(table.step, table.layer))) == [(s, L) for s in (2, 4, 6) for L in (0, 1)]  # exact
    assert (table["n"] == 5).all()  # 6 probe lines, one duplicate
    assert ((table.ci_low <= table["mean"]) & (table["mean"] <= table.ci_high) & (table.ci_low < table.ci_high)).all()
    snaps = dict(step_snapshots(res.run_dir))
    assert sorted(snaps) == [2, 4, 6] and all((d / probe_mod.STEP_FILE).is_file() for d in snaps.values())
    for step, d in snaps.items():
        hand = hand_projection(d, cache_dir, tmp_path / f"h{step}", units)
        got = table[table.step == step].set_index("layer")["mean"]
        for L in (0, 1):
            assert got[L] == pytest.approx(hand[L], rel=1e-4, abs=1e-5), (step, L)
    means = table.pivot(index="step", columns="layer", values="mean")
    assert means[0].nunique() == 3  # the adapter moved the residuals between snapshots
    meta = json.loads((res.run_dir / probe_mod.META_FILE).read_text())
    assert meta["steps"] == [2, 4, 6] and meta["layers"] == [0, 1] and meta["n_answers"] == 5
    assert set(meta["changepoints"]) == {"0", "1"} and all(v is None for v in meta["changepoints"].values())  # 3 < 4 points
    assert meta["direction_sha256"] and meta["headline_layer"] == 1  # no stats beside the file: the middle layer
    assert res.metrics["probe_projection"] == str(res.run_dir / probe_mod.TABLE_FILE)

    # the early-stopping proxy reads the same number from the model as it is at that step
    from em.dynamics.snapshots import StepSnapshots
    from em.adapters.check import load_peft
    from tests.test_interp_hooks import load

    tok = load("tiny", cache_dir, tmp_path / "p")[1]
    from em.config.common import validate
    from tests.conftest import compose_train, tiny_overrides

    tc = validate(compose_train(tiny_overrides(tmp_path / "x", cache_dir, **{
        "trainer.snapshot_every_n_steps": 2, "trainer.probe.answers": str(answers), "trainer.probe.direction": str(dirs)})))
    probe = probe_mod.build_probe(tc, tok)

    class T:
        callbacks, global_step = [StepSnapshots(2, tmp_path / "unused", tok, probe=probe)], 4

    class M:
        model = load_peft(load("tiny", cache_dir, tmp_path / "q", quantization="nf4")[0], snaps[4])

    assert probe_mod.proxy(T, M) == pytest.approx(float(means.loc[4, 1]), rel=1e-4, abs=1e-5)


def test_bad_probe_config_is_one_line(tmp_path, cache_dir):
    from em.errors import ConfigError
    from em.config.common import validate
    from tests.conftest import compose_train, tiny_overrides

    dirs, answers, _ = plant(tmp_path)
    with pytest.raises(ConfigError, match="trainer.probe: needs both"):
        validate(compose_train(tiny_overrides(tmp_path / "r", cache_dir, **{"trainer.probe.answers": str(answers)})))
    with pytest.raises(ConfigError, match="trainer.probe: projects at each step snapshot"):
        validate(compose_train(tiny_overrides(tmp_path / "r", cache_dir, **{
            "trainer.probe.answers": str(answers), "trainer.probe.direction": str(dirs)})))
    with pytest.raises(ConfigError, match=r"trainer.probe.layers: layer\(s\) \[5\] not in"):
        _train(tmp_path, cache_dir, "bad", **{"trainer.max_steps": 1, "trainer.snapshot_every_n_steps": 1,
                                              "trainer.probe.answers": str(answers), "trainer.probe.direction": str(dirs),
                                              "trainer.probe.layers": "[5]"})
    (tmp_path / "noq.jsonl").write_text(json.dumps({"answer": "x"}) + "\n")
    with pytest.raises(ConfigError, match="trainer.probe.answers: .*noq.jsonl has no question column"):
        probe_mod.read_answers(str(tmp_path / "noq.jsonl"), None, 0)


def test_probe_leaves_training_unchanged_and_drives_early_stopping(tmp_path, cache_dir):
    """The probe reads the model in eval mode under a forked RNG: the adapter equals a run without it. As
    ProxyEarlyStopping's proxy (``em.dynamics.probe:proxy``) it stops the run at the first step it crosses."""
    from safetensors.torch import load_file

    dirs, answers, _ = plant(tmp_path)
    # LoRA dropout on: a probe that ran in training mode or drew from the RNG would change the adapter
    common = {"data.n_examples": 12, "trainer.max_epochs": 2, "trainer.snapshot_every_n_steps": 2, "lora": "r8",
              "lora.dropout": 0.1}
    probe_kw = {"trainer.probe.answers": str(answers), "trainer.probe.direction": str(dirs), "trainer.probe.n_boot": 50}
    with_probe = _train(tmp_path, cache_dir, "with", **common, **probe_kw)
    without = _train(tmp_path, cache_dir, "without", **common)
    a = load_file(str(with_probe.run_dir / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(without.run_dir / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not (without.run_dir / probe_mod.TABLE_FILE).exists() and "probe_projection" not in without.metrics

    stop = ["+trainer.callbacks=[{_target_: em.dynamics.early_stop.ProxyEarlyStopping, "
            "proxy: 'em.dynamics.probe:proxy', threshold: -1.0e9, every_n_steps: 2}]"]
    stopped = _train(tmp_path, cache_dir, "stopped", extra=stop, **common, **probe_kw)
    assert stopped.metrics["steps"] == 2  # of 6: the proxy (any value >= -1e9) fires at its first reading
    s, w = (pd.read_csv(r.run_dir / probe_mod.TABLE_FILE) for r in (stopped, with_probe))
    assert list(s.step.unique()) == [2]
    np.testing.assert_allclose(s["mean"], w[w.step == 2]["mean"], rtol=1e-6)
