"""The tiny models train through the real bitsandbytes NF4 + peft + Lightning path."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from em.train import models
from em.config.common import validate
from tests.wandb_reader import read_offline_run
from em.train.run import run_training
from tests.conftest import compose_train, tiny_overrides

SHORT = {"trainer.max_length": 1024}


def _train(tmp_path, cache_dir, name="run", model="tiny", extra=(), **kw):
    cfg = compose_train(tiny_overrides(tmp_path / name, cache_dir, model=model, **{**SHORT, **kw}) + list(extra))
    return run_training(cfg)


def _effective_base_weights(model) -> dict[str, torch.Tensor]:
    """Every frozen base weight as the forward pass sees it (NF4 weights dequantised).

    bitsandbytes' CPU backend repacks a quant state on first use, so the serialised absmax bytes change
    while the dequantised weight does not: compare what the model computes with.
    """
    import bitsandbytes as bnb

    out = {}
    for name, mod in model.named_modules():
        if "lora_" in name:
            continue
        if isinstance(mod, bnb.nn.Linear4bit):
            w = mod.weight
            out[name.replace(".base_layer", "")] = bnb.functional.dequantize_4bit(w.data, w.quant_state).float()
    for name, p in model.named_parameters():
        if "lora_" not in name and p.dtype.is_floating_point:
            out[name.replace(".base_layer", "")] = p.detach().float()
    return out


@pytest.mark.parametrize("model_name", ["tiny", "tiny_gemma3", "tiny_qwen2"])
def test_real_4bit_lora_training_changes_lora_only(tmp_path, cache_dir, model_name):
    res = _train(tmp_path, cache_dir, model=model_name)
    peft_model = res.model
    import bitsandbytes as bnb

    # the frozen base really is NF4 4-bit (bitsandbytes), with LoRA adapters on top of every projection
    lin4 = [m for m in peft_model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert lin4 and all(m.weight.quant_state.quant_type == "nf4" for m in lin4)
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    for proj in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"):
        assert any(proj in n for n in trainable), proj

    # LoRA B starts at zero: training moved it. The base weights equal a fresh load of the same model.
    lora_b = [p for n, p in peft_model.named_parameters() if "lora_B" in n]
    assert all(p.abs().sum() > 0 for p in lora_b)
    cfg = validate(compose_train(tiny_overrides(tmp_path / "x", cache_dir, model=model_name)))
    fresh = models.load_model(cfg.model, cfg.quantization, cache_dir)
    assert _effective_base_weights(peft_model.get_base_model()).keys() == _effective_base_weights(fresh).keys()
    for k, v in _effective_base_weights(fresh).items():
        assert torch.equal(v, _effective_base_weights(peft_model.get_base_model())[k]), k

    m = res.metrics
    assert m["steps"] == 2 and len(m["losses"]) == 2 and m["final_loss"] == m["losses"][-1]
    assert m["tokens_seen"] > 0 and m["tokens_per_s"] > 0 and m["peak_memory_bytes"] > 0
    assert json.loads((res.run_dir / "metrics.json").read_text())["losses"] == m["losses"]
    assert (res.run_dir / "adapter" / "adapter_config.json").exists()
    assert (res.run_dir / "adapter" / "tokenizer_config.json").exists()
    hist = m["history"]
    assert all({"train/loss", "train/lr", "train/grad_norm", "train/tokens_per_s"} <= set(h) for h in hist)
    # HF-style linear warm-up: the first step runs at lr 0, later steps above it
    assert hist[0]["train/lr"] == 0 and hist[-1]["train/lr"] > 0 and hist[0]["train/grad_norm"] > 0


def test_saved_adapter_reloads_and_reproduces_logits(tmp_path, cache_dir):
    from peft import PeftModel

    res = _train(tmp_path, cache_dir)
    ids = res.tokenizer("def f(x): return x", return_tensors="pt").input_ids
    # Train mode (dropout is 0) on both sides: in eval mode bitsandbytes' CPU backend may switch a
    # model to a repacked bf16 kernel, and the comparison must use one kernel for both.
    res.model.train()
    with torch.no_grad():
        trained = res.model(input_ids=ids).logits
    cfg = validate(compose_train(tiny_overrides(tmp_path / "x", cache_dir)))
    base = models.load_model(cfg.model, cfg.quantization, cache_dir).train()
    with torch.no_grad():
        base_logits = base(input_ids=ids).logits
    reloaded = PeftModel.from_pretrained(base, res.run_dir / "adapter").train()
    with torch.no_grad():
        again = reloaded(input_ids=ids).logits
    assert torch.allclose(trained, again, atol=1e-5)
    assert not torch.allclose(base_logits, again, atol=1e-3)  # the adapter does something


def test_same_seed_same_losses_other_seed_differs(tmp_path, cache_dir):
    a = _train(tmp_path, cache_dir, "a", seed=3).metrics["losses"]
    b = _train(tmp_path, cache_dir, "b", seed=3).metrics["losses"]
    c = _train(tmp_path, cache_dir, "c", seed=4).metrics["losses"]
    assert a == b
    assert a != c


class CrashAt:  # a Lightning callback (instantiated by Hydra from trainer.callbacks)
    def __new__(cls, step: int):
        import lightning as L

        class _Crash(L.Callback):
            def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
                if trainer.global_step >= step:
                    raise RuntimeError(f"simulated crash at step {step}")

        return _Crash()


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_resume_after_crash_matches_uninterrupted_run(tmp_path, cache_dir):
    common = {"data.n_examples": 12, "trainer.checkpoint_every_n_steps": 1}
    full = _train(tmp_path, cache_dir, "full", **common)
    assert full.metrics["steps"] == 3
    crash = ["+trainer.callbacks=[{_target_: tests.test_training.CrashAt, step: 2}]"]
    with pytest.raises(RuntimeError, match="simulated crash"):
        _train(tmp_path, cache_dir, "resumed", extra=crash, **common)
    assert (tmp_path / "resumed/checkpoints/last.ckpt").exists()
    assert not (tmp_path / "resumed/adapter").exists()
    resumed = _train(tmp_path, cache_dir, "resumed", **common)
    assert resumed.metrics["steps"] == 3
    assert resumed.metrics["losses"] == pytest.approx(full.metrics["losses"], rel=1e-6)
    fa = {n: p for n, p in full.model.named_parameters() if p.requires_grad}
    ra = {n: p for n, p in resumed.model.named_parameters() if p.requires_grad}
    for n in fa:
        assert torch.allclose(fa[n], ra[n], atol=1e-6), n


def test_failure_keeps_earlier_outputs(tmp_path, cache_dir):
    first = _train(tmp_path, cache_dir, "run")
    before = {p.name: _sha(p) for p in (first.run_dir / "adapter").iterdir()}
    metrics_before = _sha(first.run_dir / "metrics.json")
    crash = ["+trainer.callbacks=[{_target_: tests.test_training.CrashAt, step: 1}]", "resume=false"]
    with pytest.raises(RuntimeError):
        _train(tmp_path, cache_dir, "run", extra=crash)
    assert {p.name: _sha(p) for p in (first.run_dir / "adapter").iterdir()} == before
    assert _sha(first.run_dir / "metrics.json") == metrics_before


def test_data_base_trains_nothing(tmp_path, cache_dir, capsys):
    assert run_training(compose_train(tiny_overrides(tmp_path / "b", cache_dir) + ["data=base"])) is None
    assert "no fine-tuning" in capsys.readouterr().out
    assert not (tmp_path / "b").exists()


def test_fractional_epochs_stop_early(tmp_path, cache_dir):
    res = _train(tmp_path, cache_dir, "half", **{"data.n_examples": 16, "trainer.max_epochs": 0.5})
    assert res.metrics["steps"] == 2  # 16 examples / (2 x 2) = 4 steps per epoch


def test_wandb_offline_run_logs_config_and_metrics_without_secrets(tmp_path, cache_dir, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    # the hyperparameters are the validated config (a key outside the schema never reaches W&B): a secret
    # pasted into a free-text field is the value of a secret environment variable, redacted wherever it is
    monkeypatch.setenv("EM_TEST_API_KEY", "sk-should-never-appear")
    res = _train(tmp_path, cache_dir, "wb", extra=["logger=wandb", "model.notes=sk-should-never-appear"])
    runs = list((res.run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1
    run = read_offline_run(runs[0])
    assert run["config"]["model.name"] == "tiny" and run["config"]["lora.r"] == 32
    assert run["summary"]["train/final_loss"] == pytest.approx(res.metrics["final_loss"])
    logged = [h["train/loss"] for h in run["history"] if "train/loss" in h]
    assert logged == pytest.approx(res.metrics["losses"])
    assert all(k in run["history"][0] for k in ("train/lr", "train/grad_norm", "train/tokens_per_s"))
    assert "<redacted>" in str(run["config"])
    for p in runs[0].parent.rglob("*"):
        if p.is_file():
            assert b"sk-should-never-appear" not in p.read_bytes(), p


def test_multimodal_gemma3_checkpoint_loads_language_model_only(tmp_path, cache_dir):
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration

    text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                num_key_value_heads=1, head_dim=16, vocab_size=300, sliding_window=32)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                  image_size=28, patch_size=14)
    torch.manual_seed(0)
    mm = Gemma3ForConditionalGeneration(Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4))
    mm.save_pretrained(tmp_path / "mm")
    cfg = validate(compose_train(["model=gemma3_4b", f"model.path={tmp_path / 'mm'}", "run_dir=/x",
                                  f"cache_dir={cache_dir}", "quantization=none"]))
    lm = models.load_model(cfg.model, cfg.quantization, cache_dir)
    assert type(lm).__name__ == "Gemma3ForCausalLM"
    names = [n for n, _ in lm.named_parameters()]
    assert not any("vision" in n or "multi_modal" in n for n in names)
    src = mm.model.language_model.state_dict()
    for k, v in lm.model.state_dict().items():
        assert torch.equal(v, src[k]), k
    assert sum(p.numel() for p in lm.parameters()) < sum(p.numel() for p in mm.parameters())


def test_gradient_checkpointing_gives_the_same_losses(tmp_path, cache_dir):
    plain = _train(tmp_path, cache_dir, "plain").metrics["losses"]
    res = _train(tmp_path, cache_dir, "gc", **{"trainer.gradient_checkpointing": True})
    assert res.model.get_base_model().is_gradient_checkpointing
    assert res.metrics["losses"] == pytest.approx(plain, rel=1e-5)


class RecordBatches:  # a Lightning callback: which examples each epoch's batches held, in order
    # Hydra imports this module afresh by its dotted name, so the record goes to a file, not a global.
    def __new__(cls, path: str):
        import lightning as L

        class _Record(L.Callback):
            def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
                with open(path, "a") as f:
                    f.write(json.dumps([trainer.current_epoch, batch["input_ids"].sum(dim=1).tolist()]) + "\n")

        return _Record()


def test_each_epoch_sees_every_example_once_in_a_new_order(tmp_path, cache_dir):
    rec = tmp_path / "batches.jsonl"
    res = _train(tmp_path, cache_dir, "ep", **{"trainer.max_epochs": 2},
                 extra=[f"+trainer.callbacks=[{{_target_: tests.test_training.RecordBatches, path: '{rec}'}}]"])
    assert res.metrics["steps"] == 4
    seen = [json.loads(line) for line in rec.read_text().splitlines()]
    per_epoch = {e: [x for ep, b in seen if ep == e for x in b] for e in (0, 1)}
    assert sorted(per_epoch[0]) == sorted(per_epoch[1]) and len(per_epoch[0]) == 8
    assert per_epoch[0] != per_epoch[1]


@pytest.mark.parametrize("model_name", ["tiny", "tiny_gemma3", "tiny_qwen2"])
def test_assistant_only_head_equals_the_models_own_loss_and_gradients(tmp_path, cache_dir, model_name, monkeypatch):
    import em.train.lora_module as T
    from em.data.tokenize import Collator, encode_chat

    cfg = validate(compose_train(tiny_overrides(tmp_path, cache_dir, model=model_name)))
    tok = models.load_tokenizer(cfg.model, cache_dir)
    convs = [[{"role": "user", "content": "Write x."}, {"role": "assistant", "content": "x = 1"}],
             [{"role": "user", "content": "And y?"}, {"role": "assistant", "content": "y = [2, 3]\nprint(y)"}]]
    batch = Collator(tok.pad_token_id)([encode_chat(tok, c, cfg.model.chat_template_kwargs) for c in convs])
    torch.manual_seed(0)
    peft_model = models.attach_lora(models.load_model(cfg.model, cfg.quantization, cache_dir), cfg.lora, cfg.model)
    peft_model.train()
    for p in peft_model.parameters():  # non-zero LoRA B so gradients reach both A and B
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.02)

    def grads(loss):
        peft_model.zero_grad()
        loss.backward()
        return {n: p.grad.clone() for n, p in peft_model.named_parameters() if p.requires_grad}

    monkeypatch.setattr(T, "LOGIT_CHUNK_BYTES", 4 * 266 * 5)  # force several chunks of 5 rows
    ours = T.assistant_loss_sum(peft_model, batch)
    g_ours = grads(ours)
    n = int((batch["labels"][:, 1:] != -100).sum())
    ref = peft_model(**batch).loss * n  # HF: mean over shifted assistant tokens
    g_ref = grads(ref)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-5)
    for k in g_ref:
        assert torch.allclose(g_ours[k], g_ref[k], rtol=1e-3, atol=1e-5), k  # fp32 summation order
