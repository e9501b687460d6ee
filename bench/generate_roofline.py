"""Benchmark: sampling tokens/s of a real model against the CPU's compute limit, measured in the same command.

    python bench/generate_roofline.py                               # SmolLM2-135M-Instruct, batch 48 x 64 tokens
    python bench/generate_roofline.py --model gemma3_270m --variants dynamic,static
    python bench/generate_roofline.py --threads 1                   # torch intra-op threads (default: torch's)

Compute limit = the fp32 GEMM rate measured here (best of a few 1024 x K x N matmuls with the model's own
hidden / intermediate sizes, full batch of tokens) / (2 x parameters) FLOP per new token. Each variant samples
the same prompts (the smoke questions in every format, cycled; left-padded batch; temperature 1, top-p 1;
every answer forced to --max-new-tokens with min_new_tokens) through ``model.generate``:

* ``dynamic``: transformers' default DynamicCache, SDPA attention (what em's HFGenerator does);
* ``static``: ``cache_implementation="static"`` (pre-allocated KV cache);
* ``eager``: DynamicCache with eager attention instead of SDPA.

Prints new tokens/s and its ratio to the limit per variant. Timings are wall time: on a shared CPU the
ratios move with the load; OMP_WAIT_POLICY (em sets PASSIVE on import) matters a lot there.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def gemm_flops(k: int, n: int, m: int = 1024, repeats: int = 5) -> float:
    """Best fp32 matmul rate (FLOP/s) of [m, k] x [k, n] over ``repeats`` runs (after one warm-up)."""
    import torch

    a, b = torch.randn(m, k), torch.randn(k, n)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * m * k * n / best


def main() -> None:
    """Measure the GEMM rate, then each sampling variant's new tokens/s; print the ratios to the limit."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2_135m_instruct")
    ap.add_argument("--n", type=int, default=48, help="answers (one batch)")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--variants", default="dynamic,static,eager")
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: leave torch's default)")
    ap.add_argument("--cache-dir", default=os.environ.get("EM_CACHE_DIR", str(Path.home() / ".cache/em")))
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()

    import em  # noqa: F401  OMP_WAIT_POLICY before torch
    import torch
    from hydra import compose, initialize_config_dir

    from em.runtime import CONF_DIR

    import em.schemas  # noqa: F401  registers the schemas
    from em.evaluation.generation import HFGenerator, plan
    from em.evaluation.questions import build_prompts, load_question_set
    from em.schemas.common import validate

    if args.threads:
        torch.set_num_threads(args.threads)
    repo = Path(__file__).resolve().parents[1]
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = compose("evaluate", overrides=[f"model={args.model}", "quantization=none", "run_dir=/tmp/unused",
                                             f"cache_dir={args.cache_dir}", "judge=none", "adapter=none"])
    ec = validate(cfg)
    prompts = build_prompts(load_question_set(ec.questions, ec.cache_dir, progress=False), ec.format)
    samples = plan(prompts, max(1, -(-args.n // len(prompts))))[: args.n]
    gen = HFGenerator(ec.model, ec.quantization, ec.cache_dir, ec.generation, ec.seed)
    gen.load()
    model, tok = gen.model, gen.tokenizer
    params = sum(p.numel() for p in model.parameters())
    c = model.config
    rate = max(gemm_flops(c.hidden_size, c.intermediate_size), gemm_flops(c.intermediate_size, c.hidden_size))
    limit = rate / (2 * params)
    enc = gen.encode(samples)
    n = max(map(len, enc))
    pad = tok.pad_token_id
    ids = torch.full((len(enc), n), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, e in enumerate(enc):
        ids[i, n - len(e):], mask[i, n - len(e):] = torch.tensor(e), 1
    print(f"{args.model}: {params / 1e6:.1f} M parameters, {torch.get_num_threads()} threads, fp32 GEMM "
          f"{rate / 1e9:.1f} GFLOP/s -> limit {limit:.0f} new tokens/s; batch {len(enc)} x {args.max_new_tokens} tokens")
    out = {"model": args.model, "params": params, "gemm_flops": rate, "limit_tokens_per_s": limit, "variants": {}}
    for variant in args.variants.split(","):
        kw = dict(do_sample=True, temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=args.max_new_tokens,
                  min_new_tokens=args.max_new_tokens, pad_token_id=pad)
        if variant == "static":
            kw["cache_implementation"] = "static"
        model.config._attn_implementation = "eager" if variant == "eager" else "sdpa"
        with torch.no_grad():
            model.generate(input_ids=ids[:2], attention_mask=mask[:2], **{**kw, "max_new_tokens": 4,
                                                                         "min_new_tokens": 4})  # warm-up
            t0 = time.perf_counter()
            res = model.generate(input_ids=ids, attention_mask=mask, **kw)
            dt = time.perf_counter() - t0
        new = (res.shape[1] - n) * len(enc)
        tps = new / dt
        out["variants"][variant] = {"tokens_per_s": tps, "ratio_to_limit": tps / limit, "seconds": dt}
        print(f"  {variant:8s} {tps:7.1f} new tokens/s = {tps / limit:5.1%} of the limit ({dt:.1f} s)")
    model.config._attn_implementation = "sdpa"
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
