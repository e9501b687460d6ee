"""An adapter em trains on a multimodal Gemma 3 checkpoint's text model is saved with the keys of the class the
checkpoint declares (``Gemma3ForConditionalGeneration``: ``model.language_model.*``), so plain peft on the
hub checkpoint applies it; em itself loads either layout (hf generation, sequential fine-tuning), and vLLM
gets an adapter that fits its served class."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from em.train.run import run_training
from tests.conftest import compose_train, tiny_overrides
from tests.vllm_compare import multimodal_dir

IDS = [[2, 40, 41, 42, 43, 44, 45, 46]]  # a text prompt (BOS, then byte tokens)

LOADER = r'''
import json, sys, warnings
# em may be installed (editable) in this interpreter: block it, so the load below provably needs none of it
sys.modules["em"] = None
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM
base = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32)  # the hub checkpoint's class
ids = torch.tensor(json.loads(sys.argv[3]))
with torch.no_grad():
    before = base(input_ids=ids).logits
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = PeftModel.from_pretrained(base, sys.argv[2]).eval()
    after = model(input_ids=ids).logits
lora = [n for n, _ in model.named_modules() if n.endswith("lora_A")]
print(json.dumps({"cls": type(base).__name__, "before": before.tolist(), "after": after.tolist(), "lora": lora,
                  "warnings": [str(w.message) for w in caught if "adapter keys" in str(w.message)]}))
'''


@pytest.fixture(scope="module")
def trained(tmp_path_factory, cache_dir):
    """A few 4-bit training steps of em on a tiny random Gemma3ForConditionalGeneration (its text model),
    with an adapter snapshot halfway; returns (checkpoint dir, run dir)."""
    root = tmp_path_factory.mktemp("mm")
    mm = multimodal_dir(root)
    run_dir = root / "run"
    run_training(compose_train(tiny_overrides(run_dir, cache_dir, model="tiny_gemma3", **{
        "model.path": str(mm), "model.multimodal": "true", "data.n_examples": 4, "trainer.max_length": 1024,
        "trainer.adapter_snapshots": "[0.5]", "optimizer.lr": 2e-2,
        "trainer.accumulate_grad_batches": 1, "trainer.warmup_steps": 0})))
    return mm, run_dir


def _text_model_logits(mm, cache_dir, adapter):
    """em's own view: the checkpoint's text model in fp32 (no quantisation) with ``adapter`` loaded by em."""
    from em.train import models
    from em.adapters.check import load_peft
    from em.config.common import validate

    tc = validate(compose_train(tiny_overrides("/x", cache_dir, model="tiny_gemma3", **{
        "model.path": str(mm), "model.multimodal": "true", "quantization": "none"})))
    base = models.load_model(tc.model, tc.quantization, cache_dir)
    model = load_peft(base, adapter).eval()
    with torch.no_grad():
        return model(input_ids=torch.tensor(IDS)).logits, model


def test_saved_adapter_fits_the_declared_class_and_plain_peft_applies_it(trained, cache_dir, tmp_path):
    from em.adapters.check import adapter_modules

    mm, run_dir = trained
    adapter = run_dir / "adapter"
    for d in (adapter, run_dir / "snapshots" / "epoch_0.5"):
        mods = adapter_modules(d)
        assert mods and all(m.startswith("model.language_model.layers.") for m in mods), d
    assert json.loads((adapter / "em_adapter.json").read_text())["key_layout"] == "Gemma3ForConditionalGeneration"
    assert "Gemma3ForConditionalGeneration" in (adapter / "README.md").read_text()

    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-c", LOADER, str(mm), str(adapter), json.dumps(IDS)], cwd=tmp_path,
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["cls"] == "Gemma3ForConditionalGeneration" and not out["warnings"]
    # LoRA on the language model only (not on the vision tower's same-named projections)
    assert len(out["lora"]) == len(mods) and all(n.startswith("base_model.model.model.language_model.")
                                                 for n in out["lora"])
    before, after = torch.tensor(out["before"]), torch.tensor(out["after"])
    assert (after - before).abs().max() > 1e-3  # the adapter changes the output
    ours, _ = _text_model_logits(mm, cache_dir, adapter)
    assert torch.allclose(ours, after, atol=1e-4), (ours - after).abs().max()


def test_em_loads_either_layout_and_vllm_gets_one_that_fits(trained, cache_dir, tmp_path):
    from em.adapters import lineage
    from em.adapters.check import adapter_for, adapter_modules
    from em.evaluate.generation import make_generator
    from tests.vllm_compare import GEN, model_cfg

    mm, run_dir = trained
    new = run_dir / "adapter"
    # an adapter from before this layout: text-model keys, no exclusion in its config
    old = shutil.copytree(new, tmp_path / "old")
    w = load_file(str(old / "adapter_model.safetensors"))
    save_file({k.replace("model.language_model.", "model."): v for k, v in w.items()},
              str(old / "adapter_model.safetensors"))
    conf = json.loads((old / "adapter_config.json").read_text())
    conf.pop("exclude_modules", None)
    (old / "adapter_config.json").write_text(json.dumps(conf))
    assert all(m.startswith("model.layers.") for m in adapter_modules(old))

    # em's text model: both layouts load to the same weights and logits
    new_logits, model = _text_model_logits(mm, cache_dir, new)
    old_logits, _ = _text_model_logits(mm, cache_dir, old)
    assert torch.equal(new_logits, old_logits)
    with torch.no_grad(), model.disable_adapter():
        assert (model(input_ids=torch.tensor(IDS)).logits - new_logits).abs().max() > 1e-3

    # the hf evaluation backend applies it (4-bit base, as evaluate.py loads it)
    ec = model_cfg("gemma3", tmp_path / "c", str(mm), True)
    g = make_generator("hf", ec.model, ec.quantization, str(cache_dir), GEN, 0, adapter_dir=str(new))
    g.load()
    ids = torch.tensor(IDS)
    with torch.no_grad():
        lora = g.model(input_ids=ids).logits
        with g.model.disable_adapter():
            base = g.model(input_ids=ids).logits
    assert (lora - base).abs().max() > 1e-3

    # sequential fine-tuning continues from either layout with the trained weights
    from em.train import models

    for d in (new, old):
        tc_model = models.load_model(ec.model, ec.quantization, str(cache_dir))
        child = lineage.load_adapter(tc_model, str(d))
        b = {n: p for n, p in child.named_parameters() if "lora_B" in n}
        assert b and all(p.requires_grad for p in b.values()) and any(p.abs().max() > 0 for p in b.values())

    # vLLM serves Gemma3ForConditionalGeneration: the new layout goes as it is, the old one renamed
    assert adapter_for(new, mm, tmp_path / "served_new") == new
    served = adapter_for(old, mm, tmp_path / "served_old")
    assert served != old and adapter_modules(served) == adapter_modules(new)
    exclusion = json.loads((new / "adapter_config.json").read_text())["exclude_modules"]
    assert json.loads((served / "adapter_config.json").read_text())["exclude_modules"] == exclusion
