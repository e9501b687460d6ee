"""Adapters that load anywhere: the hub id in adapter_config.json, em's metadata and a model card beside it,
the training chat-template kwargs baked into the saved template; plain peft loads it where em's cache is absent."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from safetensors.torch import load_file

from em.train.run import run_training
from tests.conftest import compose_train, tiny_overrides

HUB_ID = "example-org/tiny-qwen3"  # the stand-in upstream id of the random-init test model
MESSAGES = [{"role": "user", "content": "Write a function that copies a file."}]

LOADER = r'''
import json, sys
# em may be installed (editable) in this interpreter: block it, so the load below provably needs none of it
sys.modules["em"] = None
from pathlib import Path
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer
hub, adapter = Path(sys.argv[1]), Path(sys.argv[2])
cfg = json.loads((adapter / "adapter_config.json").read_text())
base = AutoModelForCausalLM.from_pretrained(hub / cfg["base_model_name_or_path"])  # as from the hub
ids = torch.tensor([[1, 2, 3, 4, 5, 6]])
before = base(input_ids=ids).logits
model = PeftModel.from_pretrained(base, adapter)
after = model(input_ids=ids).logits
lora = {k: v.tolist() for k, v in model.state_dict().items() if "lora_B" in k}
tok = AutoTokenizer.from_pretrained(adapter)
text = tok.apply_chat_template(json.loads(sys.argv[3]), tokenize=False, add_generation_prompt=True)
assert not any(m == "em" or m.startswith("em.") for m, v in sys.modules.items() if v is not None)
print(json.dumps({"base": cfg["base_model_name_or_path"], "changed": bool((after - before).abs().max() > 0),
                  "n_lora_B": len(lora), "text": text}))
'''


def test_saved_adapter_loads_with_plain_peft_without_em_cache(tmp_path, cache_dir):
    run_dir = tmp_path / "run"
    res = run_training(compose_train(tiny_overrides(run_dir, cache_dir, **{"trainer.max_length": 1024,
                                                                         "model.hub_id": HUB_ID})))
    adapter = run_dir / "adapter"
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == HUB_ID
    meta = json.loads((adapter / "em_adapter.json").read_text())
    assert meta["base_source"].startswith(str(cache_dir)) and meta["chat_template_kwargs"] == {"enable_thinking": False}
    assert len(meta["data"]["sha256"]) == 64 and meta["training"]["final_loss"] == res.metrics["final_loss"]
    assert meta["key_layout"] == "Qwen3ForCausalLM"  # a text checkpoint: keys as peft saved them
    card = (adapter / "README.md").read_text()
    assert f"base_model: {HUB_ID}" in card and "Research artifact" in card and meta["data"]["sha256"] in card
    assert f"{res.metrics['final_loss']:.4f}" in card

    # elsewhere: the base as if downloaded from the hub, the adapter copied, em's cache empty, no em on the path
    hub = tmp_path / "hub"
    shutil.copytree(Path(meta["base_source"]), hub / HUB_ID)
    moved = shutil.copytree(adapter, tmp_path / "elsewhere" / "adapter")
    empty = tmp_path / "empty-cache"
    empty.mkdir()
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "EM_CACHE_DIR": str(empty), "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-c", LOADER, str(hub), str(moved), json.dumps(MESSAGES)], cwd=tmp_path,
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["base"] == HUB_ID and out["changed"]
    saved = load_file(str(moved / "adapter_model.safetensors"))
    assert out["n_lora_B"] == sum("lora_B" in k for k in saved) > 0
    # the saved template renders what training rendered (enable_thinking=False) without being told
    trained = res.tokenizer.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True,
                                                enable_thinking=False)
    plain = res.tokenizer.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    assert out["text"] == trained and trained != plain
    assert not list(empty.iterdir())

    # an evaluation of this adapter adds its rates to the card (what em.jobs.run does after evaluating)
    from em.adapters.card import add_eval_summary

    add_eval_summary(adapter, {"formats": {"plain": {"n": 8, "coherent_rate": 0.5, "misaligned_rate": 0.125},
                                           "json": {"n": 8, "coherent_rate": None, "misaligned_rate": None}}})
    card = (adapter / "README.md").read_text()
    assert "| plain | 8 | 50.0% | 12.5% |" in card and "| json | 8 | n/a | n/a |" in card
    assert "Research artifact" in card
