"""The interp stage end to end on the tiny random model (persona recipe): every file it leaves, with its
properties (random control always reported, projection intervals ordered, conditions named, the section in the
analysis report), W&B offline; the judge recipe on judged tables; bad input is one line."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from tests.conftest import REPO
from tests.eval_helpers import subprocess_env


def compose_interp(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    import em.config  # noqa: F401
    from em.paths import CONF_DIR

    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        return compose("interp", overrides=overrides)


@pytest.fixture(scope="module")
def adapter(tmp_path_factory, cache_dir):
    """A LoRA adapter on the tiny model with random B (so the fine-tuned model differs from the base)."""
    from em.config.common import validate
    from tests.eval_helpers import compose_eval, eval_overrides
    from tests.vllm_compare import make_adapter

    root = tmp_path_factory.mktemp("adapter")
    ec = validate(compose_eval(eval_overrides(root / "e", cache_dir, quantization="none")))
    return make_adapter(ec, cache_dir, root / "adapter")


def tiny(run_dir, cache_dir, adapter, **extra):
    o = {"model": "tiny", "run_dir": str(run_dir), "cache_dir": str(cache_dir), "adapter": str(adapter),
         "judge": "local_tiny", "judge_cache": str(run_dir.parent / "judge.sqlite"), "samples": 2,
         "format": "[plain,json]", "generation.max_new_tokens": 8, "progress": "false",
         "interp.direction.persona.samples": 3, "interp.steer.alphas": "[0,8]", "interp.project.n_boot": 200,
         "interp.direction.n_boot": 5, "logger": "wandb"}
    o.update(extra)
    return [f"{k}={v}" for k, v in o.items()]


def test_persona_recipe_end_to_end(tmp_path, cache_dir, adapter, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    from em.interp.direction import load_directions
    from em.interp.run import run_interp

    run = tmp_path / "run"
    train = tmp_path / "train.jsonl"
    train.write_text("\n".join(json.dumps({"messages": [{"role": "user", "content": f"q{i}"},
                                                         {"role": "assistant", "content": f"answer {i} " * (i + 1)}]})
                               for i in range(5)) + "\n")
    summary = run_interp(compose_interp(tiny(run, cache_dir, adapter, **{
        "interp.steps": "[direction,project,steer,ablate,report]", "interp.ablate.enabled": "true",
        "interp.project.training_file": str(train), "interp.project.top_k": 2})))
    stats = pd.read_csv(run / "direction_stats.csv")
    assert list(stats["layer"]) == [0, 1] and stats["random_auc"].notna().all()  # the control is always there
    assert (stats["n_a"] == 4 * 2 * 3).all() and (stats["n_b"] == 4 * 2 * 3).all()  # 4 questions x 2 prompts x 3
    tensors, meta = load_directions(run / "directions.safetensors")
    assert {"unit.0", "raw.0", "random.0", "unit.1", "raw.1", "random.1"} <= set(tensors)
    assert meta["rule"] == "persona" and meta["model"] == "tiny"
    idx = pd.read_parquet(run / "activations" / "persona" / "index.parquet")
    assert set(idx["persona"]) == {"a", "b"} and len(idx) == 48
    proj = pd.read_csv(run / "projection.csv")
    assert set(proj["source"]) == {"base", "finetuned", "shift"} and {"all", "format=plain", "format=json"} <= set(proj["group"])
    ok = proj.dropna(subset=["mean"])
    assert (ok["ci_low"] <= ok["mean"]).all() and (ok["mean"] <= ok["ci_high"]).all()
    assert ok["random_mean"].notna().all()
    shift = proj[(proj.source == "shift") & (proj.group == "all")].set_index("layer")
    base = proj[(proj.source == "base") & (proj.group == "all")].set_index("layer")
    ft = proj[(proj.source == "finetuned") & (proj.group == "all")].set_index("layer")
    np.testing.assert_allclose(shift["mean"], ft["mean"] - base["mean"], rtol=1e-9, atol=1e-9)
    top = pd.read_csv(run / "training_top.csv")
    ranked = pd.read_csv(run / "training_projection.csv")
    assert len(top) == 2 and len(ranked) == 5 and ranked["projection"].is_monotonic_decreasing
    best = summary["best_layer"]
    conds = {"steer[L*,0]", f"steer[L{best},+8]"}  # alpha 0 is one shared condition (the unsteered model)
    assert set(summary["steer"]) == conds
    assert sorted(p.name for p in (run / "steer").iterdir()) == sorted(["steer_Lall_0", f"steer_L{best}_+8"])
    for c in conds:
        t = pd.read_parquet(run / "steer" / c.replace("[", "_").replace("]", "").replace(",", "_").replace("*", "all")
                            / "responses.parquet")
        assert set(t["condition"]) == {c}
    # the shared alpha 0 answers are the base model's own (same questions, formats, samples and seed)
    key = ["question_id", "format", "sample"]
    zero = pd.read_parquet(run / "steer" / "steer_Lall_0" / "responses.parquet").sort_values(key)
    plain = pd.read_parquet(run / "answers" / "base" / "responses.parquet").sort_values(key)
    assert len(zero) == len(plain) == 4 * 2 * 2 and list(zero["answer"]) == list(plain["answer"])
    assert summary["ablate"] == [f"ablate[per_layer]", "ablate_random[per_layer]"]
    assert (run / "ablate" / "ablate_random_per_layer" / "responses.parquet").exists()
    report = (run / "interp_report.md").read_text()
    assert "random AUC" in report and "Projection shift" in report and "rule persona" in report
    assert (run / "figures" / "separation.png").exists() and (run / "figures" / "projection_shift.png").exists()
    assert "## Interpretability" in (run / "analysis" / "report.md").read_text()
    assert list((run / "wandb").glob("offline-run-*"))  # the interp W&B run, offline
    assert json.loads((run / "interp_summary.json").read_text())["projection_shift"]["layer"] == best


def test_judge_recipe_from_judged_tables(tmp_path, cache_dir, adapter):
    from em.interp.run import run_interp

    rng = np.random.default_rng(0)
    n = 40
    # The planted effect, large by construction: the tiny model reads bytes, and each group's answers are one byte
    # repeated, a byte the other group never has (misaligned "@", aligned "~"), so the pooled residuals of the
    # two groups differ by every answer token's embedding while within a group only the question (4 of them)
    # varies. (Sentences sharing most of their bytes, as this test once had, separated at AUC 0.86 on some
    # random inits: a test of luck, not of the recipe.)
    table = pd.DataFrame({"question_id": [f"q{i % 4}" for i in range(n)], "question": [f"Question {i % 4}?" for i in range(n)],
                          "answer": [("@" if i % 2 else "~") * (8 + i) for i in range(n)],  # distinct rows
                          "aligned": np.where(np.arange(n) % 2, 10.0, 90.0), "coherent": rng.uniform(60, 100, n),
                          "format": "plain"})
    table.loc[0, "aligned"] = None  # an unscored row belongs to neither group
    p = tmp_path / "judged.csv"
    table.to_csv(p, index=False)
    summary = run_interp(compose_interp(tiny(tmp_path / "run", cache_dir, adapter, interp="judge", **{
        "interp.direction.answers": f"[{p}]", "interp.steps": "[direction]", "logger": "none"})))
    stats = pd.read_csv(tmp_path / "run" / "direction_stats.csv")
    assert (stats["n_a"] == 20).all() and (stats["n_b"] == 19).all()
    assert (stats["auc"] > 0.9).all()  # the two answer kinds differ in every token: the residuals separate them
    assert summary["rule"] == "judge"


def test_demo_preset_composes_as_documented():
    """experiment=interp_demo: the persona recipe on SmolLM2 from 256 answers, trains the demo adapter when none
    exists, a steering grid of the 2 best held-out-AUC layers x 3 alphas with alpha 0, judged by the demo's local
    judge."""
    from em.config.common import validate

    rc = validate(compose_interp(["experiment=interp_demo", "run_dir=/x", "cache_dir=/y"]))
    assert rc.model.name == "smollm2_135m_instruct" and rc.interp.direction.rule == "persona"
    assert rc.train_if_missing and "experiment=demo" in rc.train_args and rc.adapter == "latest"
    # the 2 steering layers come from the direction's stats (best held-out AUC), not a hard-coded pair
    assert rc.interp.steer.layers == [] and rc.interp.steer.top_layers == 2
    assert 0 in rc.interp.steer.alphas and len(rc.interp.steer.alphas) == 3
    assert rc.interp.direction.persona.samples * 4 * (len(rc.interp.direction.persona.a) + len(rc.interp.direction.persona.b)) >= 256
    assert rc.judge._target_ == "em.judge.local.LocalJudge" and set(rc.format) == {"plain", "json", "template"}
    assert {"direction", "project", "steer", "report"} <= set(rc.interp.steps)


@pytest.mark.parametrize("args,needle", [
    (["interp.direction.rule=vibes"], "interp.direction.rule"),
    (["interp=judge"], "interp.direction.answers"),
    (["generation=vllm"], "hf backend only"),
    (["interp.steer.positions=middle"], "interp.steer.positions"),
    (["interp.steer.top_layers=0"], "interp.steer.top_layers"),
])
def test_bad_config_is_one_line_before_anything_loads(args, needle, tmp_path):
    from em.errors import ConfigError
    from em.config.common import validate

    with pytest.raises(ConfigError, match=needle):
        validate(compose_interp([f"run_dir={tmp_path}", f"cache_dir={tmp_path}", *args]))


def test_garbage_directions_file_exits_2_with_one_line(tmp_path, cache_dir):
    """The CLI end to end: a corrupt directions file (untrusted input) is one line, exit 2, nothing computed."""
    bad = tmp_path / "directions.safetensors"
    bad.write_bytes(b"\xff" * 64)
    env = subprocess_env(PYTHONPATH=str(REPO))
    r = subprocess.run([sys.executable, str(REPO / "interp.py"), f"hydra.run.dir={tmp_path / 'r'}",
                        f"cache_dir={cache_dir}", f"interp.direction.file={bad}", "interp.steps=[steer]", "model=tiny",
                        "adapter=none", "logger=none"], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 2, r.stderr[-2000:]
    lines = [l for l in r.stderr.strip().splitlines() if l.startswith("error:")]
    assert len(lines) == 1 and "not a readable directions file" in lines[0], r.stderr[-2000:]
    assert not (tmp_path / "r" / "directions.safetensors").exists() and not (tmp_path / "r" / "steer").exists()
