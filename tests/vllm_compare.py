"""em's vllm backend against its hf backend on tiny random models (CPU vLLM in CI, fp32, greedy).

For text Qwen 3, text Gemma 3 and a tiny multimodal ``Gemma3ForConditionalGeneration`` (em trains on its
text model, vLLM serves the multimodal class), with and without a LoRA adapter (random, non-zero B, so it
changes the answers): greedy answers from both backends must be identical, and the adapter must change
them. ``python tests/vllm_compare.py OUT_DIR`` prints one line per case and ``identical N / M``; exit 1 on
a mismatch. Needs the vllm package (``requirements-vllm.txt``); tests/test_vllm_cpu.py runs it.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

ARCH = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=32, max_position_embeddings=4096)  # vLLM CPU: head size >= 32
GEN = SimpleNamespace(backend="hf", max_new_tokens=12, temperature=0.0, top_p=1.0, batch_size=8, ignore_eos=False,
                      gpu_memory_utilization=0.5, max_lora_rank=8, max_model_len=1024, tensor_parallel_size=1,
                      dtype="float32")


def model_cfg(name: str, cache_dir: Path, path: str | None = None, multimodal: bool = False):
    """A conf/model node (tiny / tiny_gemma3) with head size 32, composed through Hydra."""
    from tests.eval_helpers import compose_eval, eval_overrides

    base = "tiny" if name == "qwen3" else "tiny_gemma3"
    o = [f"model.random_init.{k}={v}" for k, v in ARCH.items()]
    if path:
        o += [f"model.path={path}", f"model.multimodal={str(multimodal).lower()}"]
    from em.config.common import validate

    return validate(compose_eval(eval_overrides(cache_dir / "x", cache_dir, model=base) + o))


def multimodal_dir(root: Path) -> Path:
    """A tiny random Gemma3ForConditionalGeneration with em's byte-level Gemma tokenizer, saved."""
    import torch
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration

    from em.train.tiny import build_tokenizer

    d = root / "tiny_gemma3_mm"
    if (d / "config.json").exists():
        return d
    tok = build_tokenizer("gemma3")
    text = {k: v for k, v in ARCH.items()} | dict(vocab_size=len(tok), sliding_window=64)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                  image_size=28, patch_size=14)
    torch.manual_seed(0)
    cfg = Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4,
                       pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    Gemma3ForConditionalGeneration(cfg).save_pretrained(d)
    tok.save_pretrained(d)
    return d


def make_adapter(ec, cache_dir: Path, out: Path) -> Path:
    """A LoRA adapter on em's served text model, B initialised at random (std 0.3) so it changes answers."""
    import torch

    from em.train import models
    from em.config.model import LoraConfig

    base = models.load_model(ec.model, ec.quantization, str(cache_dir))
    peft = models.attach_lora(base, LoraConfig(r=4, alpha=8), ec.model)
    torch.manual_seed(1)
    with torch.no_grad():
        for n, p in peft.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.3)
    peft.save_pretrained(out)
    return out


def answers(backend: str, ec, cache_dir: Path, samples, adapter: str | None, gen=None) -> list[str]:
    """Greedy answers of ``samples`` from one backend (``gen``: an already started vLLM generator)."""
    from em.evaluate.generation import make_generator

    g = gen or make_generator(backend, ec.model, ec.quantization, str(cache_dir), GEN, 0, adapter_dir=adapter)
    out: dict = {}
    g.generate(samples, lambda batch: out.update({s.key: o["answer"] for s, o in batch}), progress=False)
    return [out[s.key] for s in samples]


def torchvision_works() -> bool:
    """Does ``import torchvision`` succeed (its C extension loads beside this torch)?"""
    try:
        import torchvision  # noqa: F401
    except Exception:  # noqa: BLE001 - ImportError, or RuntimeError from a mismatched C extension
        return False
    return True


def compare(out_dir: Path) -> dict:
    """Run every case; returns {"identical": n, "total": m, "cases": [...], "adapter_changes": {...}}."""
    from em.evaluate.generation import plan
    from em.evaluate.questions import build_prompts, load_question_set

    cache_dir = out_dir / "cache"
    cases, changed, skipped, t0 = [], {}, {}, time.perf_counter()
    for name, mm in (("qwen3", False), ("gemma3", False), ("gemma3_mm", True)):
        if mm and not torchvision_works():
            # vLLM's Gemma3ForConditionalGeneration imports transformers' Gemma 3 image processor, which
            # needs torchvision; the index's torchvision is a CUDA build that cannot load beside CPU torch.
            skipped[name] = "torchvision does not import (a CPU build of it is needed for Gemma 3 multimodal)"
            print(f"{name}: skipped: {skipped[name]}", flush=True)
            continue
        ec = model_cfg("qwen3" if name == "qwen3" else "gemma3", cache_dir,
                       str(multimodal_dir(out_dir)) if mm else None, mm)
        qs = load_question_set(ec.questions, str(cache_dir), progress=False)
        samples = plan(build_prompts(qs, ec.format, None), 1)
        adapter = str(make_adapter(ec, cache_dir, out_dir / f"adapter_{name}"))
        hf_base = answers("hf", ec, cache_dir, samples, None)
        hf_lora = answers("hf", ec, cache_dir, samples, adapter)
        from em.evaluate.generation import VLLMGenerator

        v = VLLMGenerator(ec.model, ec.quantization, str(cache_dir), GEN, 0, adapter_dir=adapter)
        v.load()
        served = v.served_adapter
        v.served_adapter = None
        vl_base = answers("vllm", ec, cache_dir, samples, None, gen=v)
        v.served_adapter = served
        vl_lora = answers("vllm", ec, cache_dir, samples, adapter, gen=v)
        del v
        for label, a, b in (("base", hf_base, vl_base), ("adapter", hf_lora, vl_lora)):
            for s, x, y in zip(samples, a, b):
                cases.append({"model": name, "adapter": label, "key": list(s.key), "hf": x, "vllm": y, "same": x == y})
        changed[name] = {"hf": sum(x != y for x, y in zip(hf_base, hf_lora)),
                         "vllm": sum(x != y for x, y in zip(vl_base, vl_lora)), "n": len(samples)}
        print(f"{name}: identical {sum(c['same'] for c in cases if c['model'] == name)}/"
              f"{sum(c['model'] == name for c in cases)}; adapter changes hf {changed[name]['hf']}/{len(samples)}, "
              f"vllm {changed[name]['vllm']}/{len(samples)}; served adapter {served}", flush=True)
    res = {"identical": sum(c["same"] for c in cases), "total": len(cases), "adapter_changes": changed,
           "skipped": skipped,
           "seconds": round(time.perf_counter() - t0, 1), "cases": cases}
    (out_dir / "vllm_vs_hf.json").write_text(json.dumps(res, indent=2))
    print(f"identical {res['identical']} / {res['total']} in {res['seconds']} s")
    return res


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    r = compare(Path(sys.argv[1]))
    ok = r["identical"] == r["total"] and all(c["hf"] > 0 and c["vllm"] > 0 for c in r["adapter_changes"].values())
    sys.exit(0 if ok else 1)
