"""Sampling exactly as configured: a checkpoint's generation_config.json never reaches generation; the
effective parameters are recorded with every answer; adapters that match nothing are an error; paths and
fallbacks say what they do."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest

from em.errors import ConfigError, ModelLoadError
from em.evaluate.run import run_evaluation
from tests.eval_helpers import compose_eval, eval_overrides

# What Qwen2.5-Instruct checkpoints ship (Qwen/Qwen2.5-7B-Instruct generation_config.json), every sampling
# field of it different from em's settings.
QWEN25 = {"bos_token_id": 151643, "do_sample": True, "eos_token_id": [151645, 151643], "pad_token_id": 151643,
          "repetition_penalty": 1.05, "temperature": 0.7, "top_p": 0.8, "top_k": 20, "no_repeat_ngram_size": 3,
          "min_p": 0.05, "transformers_version": "4.37.0"}


def _tiny_copy(tmp_path: Path, cache_dir: str, with_config: bool) -> Path:
    from em.train import models

    ec = __import__("em.config.common", fromlist=["validate"]).validate(
        compose_eval(eval_overrides(tmp_path / "x", cache_dir)))
    src = Path(models.model_dir(ec.model, cache_dir))
    dst = tmp_path / ("qwen25_style" if with_config else "plain")
    shutil.copytree(src, dst)
    (dst / "generation_config.json").unlink(missing_ok=True)
    if with_config:
        cfg = dict(QWEN25)
        tok_eos = json.loads((src / "config.json").read_text()).get("eos_token_id")
        cfg["eos_token_id"] = tok_eos  # the tiny vocabulary's own ids; every sampling field stays Qwen's
        cfg["bos_token_id"] = cfg["pad_token_id"] = tok_eos
        (dst / "generation_config.json").write_text(json.dumps(cfg))
    return dst


def test_a_qwen25_generation_config_changes_nothing(tmp_path, cache_dir):
    runs = {}
    for with_config in (True, False):
        path = _tiny_copy(tmp_path, cache_dir, with_config)
        run_dir = tmp_path / f"run_{with_config}"
        runs[with_config] = run_evaluation(compose_eval(eval_overrides(
            run_dir, cache_dir, judge="none", format="[plain]", **{"model.path": str(path),
                                                                   "generation.max_new_tokens": 24})))
    qwen, plain = runs[True], runs[False]
    # the same seeds and settings give the same answers: nothing of the checkpoint's config was applied
    assert list(qwen.table["answer"]) == list(plain.table["answer"])
    recs = [json.loads(x) for x in (qwen.run_dir / "answers.jsonl").read_text().splitlines() if x.startswith("{")]
    recs = [r for r in recs if "sampling" in r]
    assert len(recs) == 8
    s = recs[0]["sampling"]
    assert s["repetition_penalty"] == 1.0 and s["top_k"] == 0 and s["top_p"] == 1.0 and s["temperature"] == 1.0
    assert s["no_repeat_ngram_size"] == 0 and s["min_p"] == 0.0 and s["min_new_tokens"] == 1 and s["do_sample"]
    assert s["max_new_tokens"] == 24 and s["backend"] == "hf"
    for key in ("repetition_penalty", "temperature", "top_p", "top_k", "no_repeat_ngram_size", "min_p"):
        assert s[key] != QWEN25[key], key
    assert qwen.summary["sampling"] == s
    assert all(r["n_tokens"] >= 1 for r in recs)  # min 1 new token: never an empty answer by an immediate EOS


def test_the_effective_config_is_transformers_own_merge(tmp_path, cache_dir):
    from transformers import AutoModelForCausalLM, GenerationConfig

    from em.evaluate import sampling
    from types import SimpleNamespace

    path = _tiny_copy(tmp_path, cache_dir, True)
    model = AutoModelForCausalLM.from_pretrained(path)
    assert model.generation_config.repetition_penalty == 1.05  # the checkpoint's, as loaded
    gen = SimpleNamespace(temperature=1.0, top_p=1.0, max_new_tokens=5, ignore_eos=False)
    partial = GenerationConfig(do_sample=True, temperature=1.0, top_p=1.0, max_new_tokens=5)
    leaked = sampling.effective_hf(model, partial)
    assert leaked["repetition_penalty"] == 1.05 and leaked["top_k"] == 20  # the trap em avoids
    sampling.neutralize(model)
    s = sampling.effective_hf(model, sampling.hf_config(sampling.settings(gen, [1]), 0))
    assert (s["repetition_penalty"], s["top_k"], s["min_p"], s["no_repeat_ngram_size"]) == (1.0, 0, 0.0, 0)


def _adapter(tmp_path: Path, cache_dir: str, rename: dict | None = None) -> Path:
    from safetensors.torch import load_file, save_file

    from em.train import models
    from em.config.model import LoraConfig
    from em.config.common import validate

    ec = validate(compose_eval(eval_overrides(tmp_path / "x", cache_dir)))
    peft = models.attach_lora(models.load_model(ec.model, ec.quantization, cache_dir), LoraConfig(r=2, alpha=4),
                              ec.model)
    out = tmp_path / "adapter"
    peft.save_pretrained(out)
    if rename:
        f = out / "adapter_model.safetensors"
        t = load_file(str(f))
        save_file({k.replace(*next(iter(rename.items()))): v for k, v in t.items()}, str(f))
    return out


def test_an_adapter_matching_nothing_is_an_error_not_a_no_op(tmp_path, cache_dir):
    from em.adapters.check import adapter_for, adapter_modules, check_targets
    from em.train import models
    from em.config.common import validate

    good = _adapter(tmp_path / "g", cache_dir)
    assert adapter_modules(good)[0].startswith("model.layers.")
    # keys under a prefix no layout rule maps (model.language_model.* would be renamed back: a known layout)
    bad = _adapter(tmp_path / "b", cache_dir, {"model.layers.": "model.decoder.layers."})
    ec = validate(compose_eval(eval_overrides(tmp_path / "x", cache_dir)))
    model = models.load_model(ec.model, ec.quantization, cache_dir)
    check_targets(model, good)
    with pytest.raises(ModelLoadError, match=r"none of its \d+ target modules exists in the served Qwen3ForCausalLM"):
        check_targets(model, bad)
    # the stage refuses it on the hf backend, before generating
    with pytest.raises(ModelLoadError, match="would change nothing"):
        run_evaluation(compose_eval(eval_overrides(tmp_path / "run", cache_dir, judge="none", format="[plain]",
                                                   adapter=str(bad), samples=1)))
    # the vLLM path: a served class that matches as-is gets the adapter unchanged
    assert adapter_for(good, models.model_dir(ec.model, cache_dir), tmp_path / "served") == good


def test_multimodal_gemma3_adapter_is_renamed_for_the_served_class(tmp_path):
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration

    from em.adapters.check import adapter_for, adapter_modules

    text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                num_key_value_heads=1, head_dim=16, vocab_size=300, sliding_window=32)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                  image_size=28, patch_size=14)
    Gemma3ForConditionalGeneration(Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4)
                                   ).save_pretrained(tmp_path / "mm")
    ad = tmp_path / "adapter"  # em's adapter of the text model: model.layers.*
    ad.mkdir()
    keys = {f"base_model.model.model.layers.{i}.self_attn.{m}.lora_{ab}.weight": torch.randn(2, 32)
            for i in range(2) for m in ("q_proj", "v_proj") for ab in "AB"}
    save_file(keys, str(ad / "adapter_model.safetensors"))
    (ad / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 2, "lora_alpha": 4,
                                                        "target_modules": ["q_proj", "v_proj"]}))
    served = adapter_for(ad, tmp_path / "mm", tmp_path / "served")
    assert served != ad and all(m.startswith("model.language_model.layers.") for m in adapter_modules(served))
    renamed = load_file(str(served / "adapter_model.safetensors"))
    assert torch.equal(renamed["base_model.model.model.language_model.layers.1.self_attn.v_proj.lora_B.weight"],
                       keys["base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight"])


def test_data_path_with_a_source_that_ignores_it_is_an_error(tmp_path):
    from em.config.data import DataConfig

    with pytest.raises(ConfigError, match=r"^data\.path: data=synthetic \(source synthetic\) ignores a file"):
        DataConfig(name="synthetic", source="synthetic", path=str(tmp_path / "mine.jsonl"))


def test_adapter_latest_without_a_run_says_it_falls_back_to_base(tmp_path, cache_dir, capsys, monkeypatch):
    from em.adapters.resolve import resolve_adapter
    from em.config.common import validate

    ec = validate(compose_eval(eval_overrides(tmp_path / "x", cache_dir)))
    monkeypatch.chdir(tmp_path)
    info = resolve_adapter("latest", "outputs/train", ec.model, "s")
    line = capsys.readouterr().out.strip()
    assert info.adapter_dir is None and "\n" not in line
    assert f"under {tmp_path / 'outputs/train'}" in line and "evaluating the BASE model" in line


def test_redaction_by_exact_secret_keys(monkeypatch):
    from em.tracking import flatten, scrub

    monkeypatch.setenv("EM_SOME_API_KEY", "sk-from-the-environment-123")
    cfg = {"generation": {"max_new_tokens": 600}, "model": {"random_init": {"num_key_value_heads": 2}},
           "judge": {"api_key_env": "OPENAI_API_KEY", "api_key": "sk-x", "openai_api_key": "sk-y",
                     "extra": "sk-from-the-environment-123"},
           "hub": {"token": "hf_abc", "hf_token": "hf_def", "tokens_per_s": 10.0}}
    flat = flatten(scrub(cfg))
    assert flat["generation.max_new_tokens"] == 600 and flat["model.random_init.num_key_value_heads"] == 2
    assert flat["judge.api_key_env"] == "OPENAI_API_KEY" and flat["hub.tokens_per_s"] == 10.0
    for k in ("judge.api_key", "judge.openai_api_key", "judge.extra", "hub.token", "hub.hf_token"):
        assert flat[k] == "<redacted>", k


def test_judge_progress_lines_reach_the_log():
    import logging

    from em.progress import ProgressLog

    t = [0.0]
    p = ProgressLog("judge gpt-4o", 40, logging.getLogger("t"), every_s=30, clock=lambda: t[0])
    for _ in range(40):
        t[0] += 1.0
        p.update()
    assert p.lines[0] == "judge gpt-4o: 0/40 to do"
    assert p.lines[-1] == "judge gpt-4o: 40/40 (100%), 1.00/s, elapsed 40s, ETA 0s"
    assert "4/40 (10%), 1.00/s, elapsed 4s, ETA 36s" in p.lines[1] and len(p.lines) == 11

    # sampling counts generated tokens too (answers/s and tok/s); slow work gets a line every 30 s
    t[0] = 0.0
    g = ProgressLog("generate (hf)", 1000, logging.getLogger("t"), every_s=30, clock=lambda: t[0])
    for _ in range(100):
        t[0] += 2.0
        g.update(1, tokens=25)
    assert g.lines[1] == "generate (hf): 15/1000 (2%), 0.50/s, 12.5 tok/s, elapsed 30s, ETA 32m50s"
    assert [x.split(":")[1].split()[0] for x in g.lines[2:]] == ["30/1000", "45/1000", "60/1000", "75/1000", "90/1000"]


def test_the_issue_reproduction_with_chdir_latest_local_judge_and_wandb(tmp_path, cache_dir):
    """The issue's run (local tiny judge, a mass threshold that leaves some answers unscored, W&B offline),
    under hydra.job.chdir=true with a relative train_dir: exit 0, the adapter found, progress lines in
    evaluate.log, the hyperparameters visible in W&B."""
    import subprocess
    import sys

    from tests.conftest import REPO
    from tests.eval_helpers import subprocess_env
    from tests.test_eval import _fake_run
    from tests.wandb_reader import read_offline_run

    run = _fake_run(tmp_path / "train", "2026-01-01_tiny_insecure", "tiny", cache_dir)
    out = tmp_path / "ev"
    args = ["model=tiny", "judge=local", "model@judge.model=tiny", "judge.min_number_mass=0.03643", "judge.score_mode=reference",
            "format=[plain,json]", "samples=2", "generation.max_new_tokens=16", "quantization=none",
            f"cache_dir={cache_dir}", f"judge_cache={tmp_path / 'jc.sqlite'}", "adapter=latest", "train_dir=train",
            "hydra.job.chdir=true", f"hydra.run.dir={out}", "progress=false"]
    r = subprocess.run([sys.executable, str(REPO / "evaluate.py"), *args], cwd=tmp_path, env=subprocess_env(),
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    df = pd.read_parquet(out / "responses.parquet")
    assert df["adapter"].eq(str(run / "adapter")).all()  # found from the launch directory, not the job's
    log = (out / "evaluate.log").read_text()
    assert "judge tiny: 32/32 (100%)" in log and "ETA" in log
    n = len((out / "answers.jsonl").read_text().splitlines())  # sampling's lines too, not only a bar
    assert re.search(rf"generate \(hf\): 0/{n} to do", log), log[-2000:]
    assert re.search(rf"generate \(hf\): {n}/{n} \(100%\), [\d.]+/s, [\d.]+ tok/s, elapsed \w+, ETA 0s", log)
    rec = read_offline_run(next((out / "wandb").glob("offline-run-*/run-*.wandb")))
    assert rec["config"]["generation.max_new_tokens"] == 16
    assert rec["config"]["model.random_init.num_key_value_heads"] == 2
    assert rec["summary"]["eval/responses/nrows"] == len(df)
