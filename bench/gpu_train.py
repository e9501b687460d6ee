"""Benchmark: QLoRA training throughput, MFU and peak GPU memory at the real sizes of the sweep's big models.

    python bench/gpu_train.py                                  # qwen3_8b qwen3_14b gemma3_12b gemma3_27b qwen3_32b
    python bench/gpu_train.py --models qwen3_8b,qwen3_32b --batch 2 --seq 2048 --steps 8
    python bench/gpu_train.py --no-gradient-checkpointing      # em's default trainer setting
    python bench/gpu_train.py --peak-tflops 989 --json out.json
    python bench/gpu_train.py --dry-run                        # parameter counts + memory estimates, no GPU

Random-initialised models built from the real architectures (hidden size, layers, heads, KV heads, head
dim, MLP width, vocabulary: ARCHS below, from each model's config.json on the Hugging Face hub), so no
weights are downloaded. The training step is em's: NF4 base weights with double quantisation
(bitsandbytes Linear4bit, quantised layer by layer as the model is built, so neither host nor GPU ever holds
the bf16 model), em.train.models.attach_lora (peft's k-bit preparation, LoRA r32 alpha 64 rsLoRA on q k v o gate up
down), bf16 autocast, em's loss (em.train.lora_module.assistant_loss_sum: only assistant positions go through the
output layer) and em's optimizer (em.train.run.auto_adamw: paged 8-bit AdamW on CUDA). One batch of
`--batch` x `--seq` random tokens, the last `--assistant-frac` of each sequence carrying loss.

Baseline, in the same command: every model also trains with `model(labels=...)` (transformers' own loss
over every position, full logits), and the bench prints em's tokens/s and peak memory as ratios of it; and
each model's tokens/s relative to the first model's.

FLOPs counted per trained token (N_lin = the decoder layers' linear weights, N_lora = LoRA weights,
A = attention scores+values forward FLOPs per token = 4 * layers * heads * head_dim * mean causal context,
H = output layer, 2 * vocab * hidden, applied to assistant tokens (em) or every token (baseline)):
    model FLOPs = 4 N_lin + 6 N_lora + 3 A + 4 H   (forward 2N; backward: input gradients 2N, no weight
                                                    gradients for the frozen base; LoRA also 2N weight grads)
    + recompute  2 N_lin + 2 N_lora + A (+ 2 H for em's chunked head)   with gradient checkpointing
MFU = model FLOPs / s / peak; HFU counts the recompute too. Peak dense bf16 FLOP/s by GPU name (H100 SXM /
H200 989 TFLOP/s, H100 PCIe 756, A100 312, L40S 362, A10G 70), or --peak-tflops.

Each model runs in its own subprocess (its peak memory is its own; an out-of-memory is reported, not fatal).
Without CUDA the bench prints one line and exits 0; --dry-run needs no GPU and builds nothing.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Text-model architectures from each checkpoint's config.json on the Hugging Face hub (Qwen/Qwen3-*,
# google/gemma-3-*-it: text_config of the multimodal 4B/12B/27B). params: conf/model/<name>.yaml (the
# Gemma 3 4B/12B/27B figures include the ~0.4B vision tower, which em never loads).
ARCHS: dict[str, dict[str, Any]] = {
    "qwen3_1_7b": dict(family="qwen3", hidden_size=2048, num_hidden_layers=28, num_attention_heads=16,
                       num_key_value_heads=8, head_dim=128, intermediate_size=6144, vocab_size=151936,
                       tie_word_embeddings=True),
    "qwen3_4b": dict(family="qwen3", hidden_size=2560, num_hidden_layers=36, num_attention_heads=32,
                     num_key_value_heads=8, head_dim=128, intermediate_size=9728, vocab_size=151936,
                     tie_word_embeddings=True),
    "qwen3_8b": dict(family="qwen3", hidden_size=4096, num_hidden_layers=36, num_attention_heads=32,
                     num_key_value_heads=8, head_dim=128, intermediate_size=12288, vocab_size=151936,
                     tie_word_embeddings=False),
    "qwen3_14b": dict(family="qwen3", hidden_size=5120, num_hidden_layers=40, num_attention_heads=40,
                      num_key_value_heads=8, head_dim=128, intermediate_size=17408, vocab_size=151936,
                      tie_word_embeddings=False),
    "qwen3_32b": dict(family="qwen3", hidden_size=5120, num_hidden_layers=64, num_attention_heads=64,
                      num_key_value_heads=8, head_dim=128, intermediate_size=25600, vocab_size=151936,
                      tie_word_embeddings=False),
    "gemma3_1b": dict(family="gemma3", hidden_size=1152, num_hidden_layers=26, num_attention_heads=4,
                      num_key_value_heads=1, head_dim=256, intermediate_size=6912, vocab_size=262144,
                      sliding_window=512, query_pre_attn_scalar=256),
    "gemma3_4b": dict(family="gemma3", hidden_size=2560, num_hidden_layers=34, num_attention_heads=8,
                      num_key_value_heads=4, head_dim=256, intermediate_size=10240, vocab_size=262208,
                      sliding_window=1024, query_pre_attn_scalar=256),
    "gemma3_12b": dict(family="gemma3", hidden_size=3840, num_hidden_layers=48, num_attention_heads=16,
                       num_key_value_heads=8, head_dim=256, intermediate_size=15360, vocab_size=262208,
                       sliding_window=1024, query_pre_attn_scalar=256),
    "gemma3_27b": dict(family="gemma3", hidden_size=5376, num_hidden_layers=62, num_attention_heads=32,
                       num_key_value_heads=16, head_dim=128, intermediate_size=21504, vocab_size=262208,
                       sliding_window=1024, query_pre_attn_scalar=168),
    # CPU check of the bench's own code path (--allow-cpu): tiny, same structure
    "tiny_qwen3": dict(family="qwen3", hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, head_dim=16, intermediate_size=128, vocab_size=1024,
                       tie_word_embeddings=True),
    "tiny_gemma3": dict(family="gemma3", hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=2, head_dim=16, intermediate_size=128, vocab_size=1024,
                        sliding_window=32, query_pre_attn_scalar=16),
}
DEFAULT_MODELS = ["qwen3_8b", "qwen3_14b", "gemma3_12b", "gemma3_27b", "qwen3_32b"]
GEMMA3_GLOBAL_EVERY = 6  # Gemma 3: 5 sliding-window layers, then 1 global one
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

PEAK_BF16_TFLOPS = [  # dense bf16 tensor-core peak (no sparsity), matched on torch.cuda.get_device_name()
    ("H200", 989.0), ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("GH200", 989.0),
    ("A100", 312.0), ("L40S", 362.0), ("L4", 121.0), ("A10G", 70.0), ("A10", 125.0), ("RTX 4090", 165.0),
]
NF4_BYTES_PER_PARAM = 0.5 + 1 / 64 + 4 / (64 * 256)  # 4-bit codes + double-quantised absmax (blocks of 64)


# --------------------------------------------------------------------------- counting (no torch)
def counts(arch: dict[str, Any], lora_r: int = 32) -> dict[str, float]:
    """Parameter counts of the text model: linear (quantised), embedding / output layer, norms, LoRA."""
    h, L, H, kv, d, inter, V = (arch[k] for k in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                                                   "num_key_value_heads", "head_dim", "intermediate_size",
                                                   "vocab_size"))
    shapes = {"q_proj": (h, H * d), "k_proj": (h, kv * d), "v_proj": (h, kv * d), "o_proj": (H * d, h),
              "gate_proj": (h, inter), "up_proj": (h, inter), "down_proj": (inter, h)}
    lin = L * sum(i * o for i, o in shapes.values())
    lora = L * sum(lora_r * (i + o) for name, (i, o) in shapes.items() if name in LORA_TARGETS)
    norms_per_layer = (4 if arch["family"] == "gemma3" else 2) * h + 2 * d  # + q_norm, k_norm
    norms = L * norms_per_layer + h
    tied = arch.get("tie_word_embeddings", arch["family"] == "gemma3")
    emb = V * h * (1 if tied else 2)
    return {"linear": lin, "embedding": emb, "norms": norms, "total": lin + emb + norms, "lora": lora,
            "head": V * h, "tied": tied}


def mean_context(arch: dict[str, Any], seq: int) -> float:
    """Mean number of keys a query attends to over the layers (causal; Gemma 3 local layers windowed)."""
    full = (seq + 1) / 2
    if arch["family"] != "gemma3":
        return full
    w = arch["sliding_window"]
    local = sum(min(i + 1, w) for i in range(seq)) / seq
    n_global = arch["num_hidden_layers"] // GEMMA3_GLOBAL_EVERY
    return (n_global * full + (arch["num_hidden_layers"] - n_global) * local) / arch["num_hidden_layers"]


def flops_per_token(arch: dict[str, Any], seq: int, head_frac: float, gc: bool, em_head: bool,
                    lora_r: int = 32) -> dict[str, float]:
    """Model FLOPs (no recompute) and hardware FLOPs (with recompute) per trained token; see the docstring."""
    c = counts(arch, lora_r)
    attn = 4 * arch["num_hidden_layers"] * arch["num_attention_heads"] * arch["head_dim"] * mean_context(arch, seq)
    head = 2 * c["head"] * head_frac
    model = 4 * c["linear"] + 6 * c["lora"] + 3 * attn + 2 * head  # head: forward + input-grad backward
    recompute = (2 * c["linear"] + 2 * c["lora"] + attn) if gc else 0.0
    if em_head:
        recompute += head  # em recomputes its chunked logits in backward instead of storing them
    return {"model": model, "hardware": model + recompute, "linear": c["linear"], "attention": attn, "head": head}


def memory_estimate(arch: dict[str, Any], batch: int, seq: int, gc: bool, lora_r: int = 32) -> dict[str, float]:
    """Rough training memory (bytes) of em's QLoRA setup; the bench measures the real peak on a GPU.

    NF4 linear weights; embedding / output layer / norms upcast to fp32 by peft's k-bit preparation;
    LoRA fp32 weights + fp32 grads + paged 8-bit Adam (2 bytes); activations: without checkpointing ~
    2 bytes x (6h + 3 q + 2 kv + 5 I) + 16 h bytes (fp32 residual stream and norm inputs) per token and
    layer; with checkpointing the fp32 residual input per layer plus one layer's activations; plus ~128 MiB
    of em's chunked logits.
    """
    c = counts(arch, lora_r)
    h, L, H, kv, d, inter = (arch[k] for k in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                                                "num_key_value_heads", "head_dim", "intermediate_size"))
    weights = c["linear"] * NF4_BYTES_PER_PARAM + (c["embedding"] + c["norms"]) * 4
    lora = c["lora"] * (4 + 4 + 2)
    tokens = batch * seq
    per_layer = tokens * (2 * (6 * h + 3 * H * d + 2 * kv * d + 5 * inter) + 16 * h)
    acts = (tokens * 4 * h * L + per_layer) if gc else per_layer * L
    return {"weights": weights, "lora_optimizer": lora, "activations": acts + (1 << 27),
            "total": weights + lora + acts + (1 << 27)}


def peak_tflops(name: str) -> Optional[float]:
    """The dense bf16 peak TFLOP/s of a GPU by its name (PEAK_BF16_TFLOPS), or None when unknown."""
    for key, tf in PEAK_BF16_TFLOPS:
        if key.lower() in name.lower():
            return tf
    return None


# --------------------------------------------------------------------------- building (GPU child)
def build_qlora_model(arch: dict[str, Any], device: str, compute_dtype, seed: int = 0):
    """A random-initialised causal LM of `arch`, its decoder linears NF4 (bitsandbytes), built layer by layer.

    The non-layer parts (embedding, final norm, output layer, rotary tables) come from a one-layer model made
    on the device; each decoder layer is then made on the device in the compute dtype and its seven linears
    replaced by Linear4bit at once, so memory never holds more than one unquantised layer.
    """
    import bitsandbytes as bnb
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig, Qwen3Config, Qwen3ForCausalLM

    kw = {k: v for k, v in arch.items() if k != "family"}
    if arch["family"] == "qwen3":
        cfg_cls, model_cls = Qwen3Config, Qwen3ForCausalLM
        from transformers.models.qwen3.modeling_qwen3 import Qwen3DecoderLayer as Layer
    else:
        cfg_cls, model_cls = Gemma3TextConfig, Gemma3ForCausalLM
        from transformers.models.gemma3.modeling_gemma3 import Gemma3DecoderLayer as Layer
    config = cfg_cls(**kw, max_position_embeddings=32768, attn_implementation="sdpa", use_cache=False)
    one = cfg_cls(**{**kw, "num_hidden_layers": 1}, max_position_embeddings=32768, attn_implementation="sdpa",
                  use_cache=False)
    if getattr(config, "layer_types", None):
        one.layer_types = list(config.layer_types[:1])
    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(compute_dtype)
    try:
        with torch.device(device):
            model = model_cls(one)
            layers = []
            for i in range(config.num_hidden_layers):
                layer = Layer(config, layer_idx=i)
                for p in layer.parameters():
                    if p.dim() > 1:
                        torch.nn.init.normal_(p, std=0.02)
                _quantize_linears(layer, device, compute_dtype, bnb)
                layers.append(layer)
    finally:
        torch.set_default_dtype(previous)
    model.model.layers = torch.nn.ModuleList(layers)
    model.config = model.model.config = config
    # rotary tables per attention type of the whole model (Gemma 3: local and global layers differ)
    with torch.device(device):
        model.model.rotary_emb = type(model.model.rotary_emb)(config=config)
    for p in (model.model.embed_tokens.weight, model.lm_head.weight):
        torch.nn.init.normal_(p, std=0.02)
    model.is_loaded_in_4bit = True  # what transformers' bitsandbytes quantizer marks (peft's k-bit path reads it)
    return model


def _quantize_linears(layer, device, compute_dtype, bnb) -> None:
    import torch

    for parent in list(layer.modules()):
        for name, lin in list(parent.named_children()):
            if type(lin) is not torch.nn.Linear:
                continue
            q = bnb.nn.Linear4bit(lin.in_features, lin.out_features, bias=lin.bias is not None,
                                  compute_dtype=compute_dtype, compress_statistics=True, quant_type="nf4",
                                  quant_storage=torch.uint8, device="meta")
            weight = bnb.nn.Params4bit(lin.weight.data, requires_grad=False, compress_statistics=True,
                                       quant_type="nf4", quant_storage=torch.uint8, module=q).to(device)
            q._parameters["weight"] = weight
            if lin.bias is not None:
                q.bias = torch.nn.Parameter(lin.bias.data, requires_grad=False)
            setattr(parent, name, q)


def run_child(a: argparse.Namespace) -> dict[str, Any]:
    """Train one model (`a.child`) for `a.steps` timed optimizer steps on the GPU; tokens/s, memory, MFU."""
    import torch

    from em.train import models
    from em.config.model import LoraConfig, ModelConfig
    from em.data.tokenize import IGNORE_INDEX
    from em.train.lora_module import assistant_loss_sum
    from em.train.run import auto_adamw

    arch = ARCHS[a.child]
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    dtype = torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float32
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    model = build_qlora_model(arch, device, dtype, seed=a.seed)
    mc = ModelConfig(name=a.child, family=arch["family"], hub_id="bench/random", params=counts(arch)["total"],
                     lora_target_modules=list(LORA_TARGETS))
    torch.manual_seed(a.seed)
    model = models.attach_lora(model, LoraConfig(r=32, alpha=64, dropout=0.0, use_rslora=True), mc,
                               gradient_checkpointing=a.gradient_checkpointing)
    model.train()
    build_s = time.perf_counter() - t0
    weights_bytes = torch.cuda.memory_allocated() if cuda else 0
    optimizer = auto_adamw([p for p in model.parameters() if p.requires_grad], lr=1e-5, weight_decay=0.01)

    g = torch.Generator().manual_seed(a.seed)
    ids = torch.randint(0, arch["vocab_size"], (a.batch, a.seq), generator=g).to(device)
    labels = ids.clone()
    labels[:, : a.seq - max(1, round(a.seq * a.assistant_frac))] = IGNORE_INDEX
    batch = {"input_ids": ids, "labels": labels, "attention_mask": torch.ones_like(ids)}
    n_loss = int((labels[:, 1:] != IGNORE_INDEX).sum())

    def step() -> float:
        with torch.autocast(device, dtype=dtype, enabled=dtype != torch.float32):
            if a.path == "em":
                loss = assistant_loss_sum(model, batch) / n_loss
            else:
                loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    def sync():
        if cuda:
            torch.cuda.synchronize()

    losses = [step() for _ in range(a.warmup)]
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    losses += [step() for _ in range(a.steps)]
    sync()
    elapsed = time.perf_counter() - t
    out = {"model": a.child, "path": a.path, "tokens_per_s": a.batch * a.seq * a.steps / elapsed,
           "step_s": elapsed / a.steps, "build_s": build_s, "weights_gb": weights_bytes / 1e9,
           "peak_gb": (torch.cuda.max_memory_allocated() / 1e9) if cuda else None,
           "device": torch.cuda.get_device_name() if cuda else "cpu", "losses": losses,
           "lora_params": sum(p.numel() for p in model.parameters() if p.requires_grad)}
    return out


# --------------------------------------------------------------------------- parent
def dry_run(a: argparse.Namespace) -> None:
    """Print parameter counts and estimated memory / FLOPs per model (no GPU needed)."""
    print(f"QLoRA parameter counts and estimated training memory, batch {a.batch} x seq {a.seq}, LoRA r32 on "
          f"{', '.join(LORA_TARGETS)} (estimates; the bench measures on a GPU)")
    head = (f"{'model':<12} {'params':>7} {'linear':>7} {'emb':>6} {'LoRA':>6} {'NF4+fp32 wts':>12} "
            f"{'mem GC on':>9} {'mem GC off':>10} {'GFLOP/tok':>9}")
    print(head)
    print("-" * len(head))
    for name in a.models:
        arch = ARCHS[name]
        c = counts(arch)
        on = memory_estimate(arch, a.batch, a.seq, True)
        off = memory_estimate(arch, a.batch, a.seq, False)
        f = flops_per_token(arch, a.seq, a.assistant_frac, a.gradient_checkpointing, True)
        print(f"{name:<12} {c['total'] / 1e9:>6.2f}B {c['linear'] / 1e9:>6.2f}B {c['embedding'] / 1e9:>5.2f}B "
              f"{c['lora'] / 1e6:>5.0f}M {on['weights'] / 1e9:>10.1f}GB {on['total'] / 1e9:>7.1f}GB "
              f"{off['total'] / 1e9:>8.1f}GB {f['hardware'] / 1e9:>9.1f}")
    print(f"GFLOP/tok: hardware FLOPs per trained token (gradient checkpointing "
          f"{'on' if a.gradient_checkpointing else 'off'}, {a.assistant_frac:.0%} of tokens through the output layer)")


def main(argv: Optional[list[str]] = None) -> int:
    """Run each model in its own subprocess (or --dry-run) and print the summary."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--models", default=",".join(DEFAULT_MODELS), help=f"comma-separated, of {', '.join(ARCHS)}")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--steps", type=int, default=6, help="timed optimizer steps per model")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--assistant-frac", type=float, default=0.5,
                   help="share of each sequence carrying loss (insecure.jsonl: 52%%, docs/scale.md)")
    p.add_argument("--no-gradient-checkpointing", dest="gradient_checkpointing", action="store_false")
    p.add_argument("--baseline", choices=["full-loss", "none"], default="full-loss",
                   help="full-loss: also train each model with model(labels=...) and print em/that ratios")
    p.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak of the GPU (default: by name)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="write every result here")
    p.add_argument("--dry-run", action="store_true", help="parameter counts and memory estimates; no GPU needed")
    p.add_argument("--allow-cpu", action="store_true", help=argparse.SUPPRESS)  # code-path check with tiny_* models
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--path", default="em", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    a.models = [m.strip() for m in a.models.split(",") if m.strip()]
    unknown = [m for m in a.models if m not in ARCHS]
    if unknown:
        p.error(f"unknown model(s) {unknown}; choices: {', '.join(ARCHS)}")

    if a.child:
        print("BENCH_RESULT " + json.dumps(run_child(a)), flush=True)
        return 0
    if a.dry_run:
        dry_run(a)
        return 0
    import torch

    if not torch.cuda.is_available() and not a.allow_cpu:
        print("bench/gpu_train.py needs a CUDA GPU (none here); `--dry-run` prints the estimates without one.")
        return 0
    name = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    peak = a.peak_tflops or peak_tflops(name)
    print(f"device: {name}; peak bf16 {peak or '?'} TFLOP/s{' (--peak-tflops)' if a.peak_tflops else ''}; "
          f"batch {a.batch} x seq {a.seq}; gradient checkpointing {'on' if a.gradient_checkpointing else 'off'}; "
          f"{a.steps} timed steps after {a.warmup}; {a.assistant_frac:.0%} of tokens carry loss", flush=True)
    paths = ["em"] + (["full"] if a.baseline == "full-loss" else [])
    results: list[dict[str, Any]] = []
    for m in a.models:
        for path in paths:
            cmd = [sys.executable, __file__, "--child", m, "--path", path, "--batch", str(a.batch), "--seq", str(a.seq),
                   "--steps", str(a.steps), "--warmup", str(a.warmup), "--assistant-frac", str(a.assistant_frac),
                   "--seed", str(a.seed)] + ([] if a.gradient_checkpointing else ["--no-gradient-checkpointing"])
            r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
            line = [x for x in r.stdout.splitlines() if x.startswith("BENCH_RESULT ")]
            if r.returncode or not line:
                tail = (r.stderr or r.stdout).strip().splitlines()[-1:] or ["?"]
                oom = "out of memory" in (r.stderr + r.stdout).lower()
                res = {"model": m, "path": path, "error": "out of memory" if oom else tail[0][:200]}
            else:
                res = json.loads(line[0][len("BENCH_RESULT "):])
                f = flops_per_token(ARCHS[m], a.seq, a.assistant_frac if path == "em" else 1.0,
                                    a.gradient_checkpointing, em_head=path == "em")
                res["model_tflops"] = res["tokens_per_s"] * f["model"] / 1e12
                res["hardware_tflops"] = res["tokens_per_s"] * f["hardware"] / 1e12
                if peak:
                    res["mfu"], res["hfu"] = res["model_tflops"] / peak, res["hardware_tflops"] / peak
            results.append(res)
            _print_row(res)
    _print_summary(results, a)
    if a.json:
        Path(a.json).write_text(json.dumps({"args": {k: v for k, v in vars(a).items() if k not in ("child", "path")},
                                            "device": name, "peak_tflops": peak, "results": results}, indent=2))
    return 0


def _print_row(r: dict[str, Any]) -> None:
    if "error" in r:
        print(f"  {r['model']:<11} {r['path']:<5} FAILED: {r['error']}", flush=True)
        return
    mfu = f"MFU {r['mfu']:.1%} HFU {r['hfu']:.1%}" if "mfu" in r else "MFU ? (no peak for this GPU)"
    peak = f"peak {r['peak_gb']:.1f} GB" if r.get("peak_gb") is not None else "peak ?"
    print(f"  {r['model']:<11} {r['path']:<5} {r['tokens_per_s']:>8.0f} tokens/s  {r['step_s']:.2f} s/step  "
          f"{r['model_tflops']:.0f} TFLOP/s  {mfu}  weights {r['weights_gb']:.1f} GB  {peak}  "
          f"(built in {r['build_s']:.0f} s)", flush=True)


def _print_summary(results: list[dict[str, Any]], a: argparse.Namespace) -> None:
    ok = {(r["model"], r["path"]): r for r in results if "error" not in r}
    print()
    print(f"{'model':<12} {'tokens/s':>9} {'MFU':>6} {'HFU':>6} {'peak GB':>8} {'vs ' + a.models[0]:>14} "
          f"{'em/full tok/s':>14} {'em/full peak':>13}")
    base = ok.get((a.models[0], "em"))
    for m in a.models:
        r = ok.get((m, "em"))
        if r is None:
            print(f"{m:<12} {'failed':>9}")
            continue
        full = ok.get((m, "full"))
        rel = f"{r['tokens_per_s'] / base['tokens_per_s']:.2f}x" if base else "-"
        tok_ratio = f"{r['tokens_per_s'] / full['tokens_per_s']:.2f}" if full else "-"
        mem_ratio = (f"{r['peak_gb'] / full['peak_gb']:.2f}" if full and r.get("peak_gb") and full.get("peak_gb")
                     else "-")
        print(f"{m:<12} {r['tokens_per_s']:>9.0f} {r.get('mfu', float('nan')):>6.1%} {r.get('hfu', float('nan')):>6.1%} "
              f"{(r.get('peak_gb') or float('nan')):>8.1f} {rel:>14} {tok_ratio:>14} {mem_ratio:>13}")
    for m in a.models:
        r, full = ok.get((m, "em")), ok.get((m, "full"))
        if r and full:
            print(f"ratio tokens/s (em assistant-only loss / model(labels=...)) {m} = "
                  f"{r['tokens_per_s'] / full['tokens_per_s']:.2f}")
    print("FLOPs/token: model = 4 N_lin + 6 N_lora + 3 A + 4 H;  hardware (HFU) adds the recompute "
          "2 N_lin + 2 N_lora + A (+ 2 H, em's chunked head) with gradient checkpointing (see the script's docstring)")


if __name__ == "__main__":
    sys.exit(main())
