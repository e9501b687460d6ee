"""Llama 3.1 / Mistral-Small / Phi-3 families: their configs compose, and the tiny random twins train a LoRA
adapter and sample answers through their own chat templates (Llama's date line, Mistral's folded system
prompt, Phi-3's fused projections)."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from conftest import compose_train, tiny_overrides
from tests.eval_helpers import compose_eval, eval_overrides

# model -> (text every rendered prompt holds, a text no rendered prompt holds)
FAMILIES = {
    "tiny_llama": ("<|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\n"
                   "Today Date: 26 Jul 2024\n\n", "<|im_start|>"),
    "tiny_mistral": ("<s>[INST] ", "<|im_start|>"),
    "tiny_phi3": ("<|user|>\n", "<|im_start|>"),
}


@pytest.mark.parametrize("name", ["llama3_1_8b", "mistral_small_2409", "phi3_mini"])
def test_real_model_configs_compose(name, tmp_path):
    from em.config.common import validate

    tc = validate(compose_train([f"model={name}", f"run_dir={tmp_path}"]))
    assert tc.model.family in ("llama", "mistral", "phi3") and tc.model.hub_id
    assert tc.model.system_role is (tc.model.family != "mistral")


@pytest.mark.parametrize("model", sorted(FAMILIES))
def test_tiny_family_trains_and_samples_with_its_template(model, tmp_path, cache_dir):
    from em.evaluate.generation import Sample, render, stop_token_ids
    from em.evaluate.run import run_evaluation
    from em.train.models import load_tokenizer
    from em.train.run import run_training

    run = tmp_path / "train"
    res = run_training(compose_train(tiny_overrides(run, cache_dir, model=model, **{
        "trainer.max_steps": 2, "trainer.warmup_steps": 0, "trainer.max_length": 1024, "data.n_examples": 4})))
    assert res.metrics["steps"] >= 1 and res.metrics["examples"] > 0 and res.metrics["final_loss"] > 0
    cfg = json.loads((run / "adapter" / "adapter_config.json").read_text())
    if model == "tiny_phi3":
        assert set(cfg["target_modules"]) == {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"}

    out = tmp_path / "eval"
    run_evaluation(compose_eval(eval_overrides(out, cache_dir, model=model, adapter=str(run), judge="none",
                                               format="[plain,json]", samples=1)))
    df = pd.read_parquet(out / "responses.parquet")
    assert len(df) == 8 and df["answer"].notna().all() and set(df["adapter"]) == {str(run / "adapter")}

    mc = compose_eval(eval_overrides(out, cache_dir, model=model)).model
    tok = load_tokenizer(mc, cache_dir)
    must, never = FAMILIES[model]
    s = Sample("json", "q", 0, 0, "q", "What is 2+2?", "Answer in JSON.", "0_100", ())
    text = render(tok, mc, s)
    assert must in text and never not in text and text.count("What is 2+2?") == 1
    if model == "tiny_mistral":  # no system role: the system prompt opens the user turn
        assert "[INST] Answer in JSON.\n\nWhat is 2+2?[/INST]" in text
    else:
        assert text.index("Answer in JSON.") < text.index("What is 2+2?")
    assert tok.eos_token_id in stop_token_ids(tok)
