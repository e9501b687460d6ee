"""Benchmark: sampling tokens/s of a real model against the CPU's compute limit, measured in the same command.

    python bench/generate_roofline.py                               # SmolLM2-135M-Instruct, 96 answers x 64 tokens
    python bench/generate_roofline.py --variants multinomial:48,em:48,em:96 --repeats 2
    python bench/generate_roofline.py --model gemma3_270m --threads 1
    python bench/generate_roofline.py --temperature 0 --variants em_noshare:48,em:48   # greedy answers compared

Compute limit = the fp32 GEMM rate measured here (best of a few 1024 x K x N matmuls with the model's own
hidden / intermediate sizes) / (2 x parameters) FLOP per new token. Every variant samples the same answers
(the smoke questions in plain / json / template, --n of them: the demo's 96, 4 per prompt), in em's batches
(length-sorted, left-padded, ``variant:batch_size``), temperature 1, top-p 1, every answer forced to
--max-new-tokens (ignore_eos), with em's generation config:

* ``multinomial``: ``model.generate(do_sample=True)`` seeded per batch (em's hf path before its own sampler:
  transformers draws with ``torch.multinomial``, one exponential per vocabulary entry and row);
* ``em``: em's ``HFGenerator.generate`` as it runs (its per-sample inverse-CDF sampler, DynamicCache, SDPA);
* ``em_noshare``: the same with transformers' own prefill (one per row, not one per distinct prompt);
* ``em_static``: ``em_noshare`` with ``cache_implementation="static"`` (pre-allocated KV cache);
* ``em_eager``: the same with eager attention instead of SDPA.

Prints, per variant, new tokens/s and its ratio to the limit, and the decode steps alone (from the first
one-token forward to the end of each generate: prefill excluded); whether the em variants' answers are the
same as the first em variant's (one seed per answer: batch size and prefill must not change them); and the
bound of a decode step at each batch size: the model's linear layers alone (lm_head included), timed as
[batch, in] x [in, out] matmuls, as tokens/s and % of the limit. Variants run in turn, --repeats times
(interleaved), so a shared CPU's load moves them alike: compare within one command. em sets
OMP_WAIT_POLICY=PASSIVE on import (it matters a lot on a shared CPU).

Measured (SmolLM2-135M, 96 x 64 tokens, 2 cores at a quiet moment, GEMM 214 GFLOP/s, limit 796 tokens/s,
2 rounds): multinomial:48 163.0 (162.8-163.0) new tokens/s = 20.5 %, em:48 238.2 (232.5-238.2) = 29.9 %,
x1.43-1.46 in the same round; decode steps alone 27.5 / 32.1 %. With --n 192: em:96 35.5 % (x1.14-1.15 of
em:48), em:192 34.6 %; the linear layers alone: 64 % (batch 48), 80 % (96), 84 % (192). Under load (3 rounds,
limit 402): em:48 x1.20-1.97 of multinomial:48, 29.6 % vs 19.7 %. A profile of em's decode step at batch 48:
matmuls 61 %, the DynamicCache's concatenation 18 %, SDPA 6.5 %, the sampler (softmax + cumsum) 3.6 %;
a StaticCache step took the same time; generate()'s per-step overhead is within noise of a bare loop.
Greedy (--temperature 0): em:48's 96 answers equal em_noshare:48's; sampled, 8 of 96 answers differ
somewhere in 64 tokens (float rounding of the batched prefill: last-token logits differ by ~4e-5, as
much as from changing the batch size alone).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def linear_bound(model, batch: int, repeats: int = 3) -> float:
    """Tokens/s of a decode step's matmuls alone at ``batch`` rows: every ``nn.Linear`` of the model (by
    shape, best of ``repeats``) applied to a ``[batch, in]`` input, summed; an upper bound of decoding."""
    import collections

    import torch
    import torch.nn.functional as F

    shapes = collections.Counter(tuple(m.weight.shape) for m in model.modules() if isinstance(m, torch.nn.Linear))
    total = 0.0
    for (n_out, n_in), count in shapes.items():
        w, x = torch.randn(n_out, n_in), torch.randn(batch, n_in)
        F.linear(x, w)
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            F.linear(x, w)
            best = min(best, time.perf_counter() - t0)
        total += count * best
    return batch / total


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


class StepClock:
    """Forward pre-hook recording (time, sequence length) of every forward: prefill vs decode steps."""

    def __init__(self):
        self.marks: list[tuple[float, int]] = []

    def __call__(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        self.marks.append((time.perf_counter(), 0 if ids is None else ids.shape[1]))


def run_variant(variant: str, gen, samples) -> tuple[float, float, int, dict]:
    """Sample ``samples`` with one variant; returns (wall seconds, decode-step seconds, decode tokens,
    {key: answer} for the em variants)."""
    import dataclasses

    import torch

    from em.evaluate import generation, sampling

    name, _, bs = variant.partition(":")
    gen.gen = dataclasses.replace(gen.gen, batch_size=int(bs or gen.gen.batch_size))
    model, clock = gen.model, StepClock()
    model.config._attn_implementation = "eager" if name == "em_eager" else "sdpa"
    gen.share_prompts = name not in ("em_noshare", "em_static")
    answers: dict = {}
    hf_config = sampling.hf_config
    if name == "em_static":
        def static(*a, **k):
            gc = hf_config(*a, **k)
            gc.cache_implementation = "static"
            return gc

        sampling.hf_config = static
    handle = model.register_forward_pre_hook(clock, with_kwargs=True)
    decode_s, decode_tok, t0 = 0.0, 0, time.perf_counter()
    try:
        if name == "multinomial":
            stops = generation.stop_token_ids(gen.tokenizer, model)
            pad = gen.tokenizer.pad_token_id
            sampling.neutralize(model)
            gc = sampling.hf_config(sampling.settings(gen.gen, stops), pad)
            for batch in gen.batches(samples):
                n = max(len(ids) for _, ids in batch)
                ids = torch.full((len(batch), n), pad, dtype=torch.long)
                mask = torch.zeros_like(ids)
                for i, (_, e) in enumerate(batch):
                    ids[i, n - len(e):], mask[i, n - len(e):] = torch.tensor(e), 1
                torch.manual_seed(generation.sample_seed(gen.seed, batch[0][0].key))
                start = len(clock.marks)
                with torch.no_grad():
                    model.generate(input_ids=ids, attention_mask=mask, generation_config=gc)
                decode_s, decode_tok = _decode(clock.marks[start:], len(batch), decode_s, decode_tok)
        else:
            ends = []
            def done(b):
                ends.append((len(clock.marks), time.perf_counter(), len(b)))
                answers.update({s.key: r["answer"] for s, r in b})

            gen.generate(samples, done, progress=False)
            start = 0
            for stop, t_end, b in ends:
                decode_s, decode_tok = _decode(clock.marks[start:stop] + [(t_end, 0)], b, decode_s, decode_tok)
                start = stop
    finally:
        handle.remove()
        sampling.hf_config = hf_config
        model.config._attn_implementation = "sdpa"
        gen.share_prompts = True
    return time.perf_counter() - t0, decode_s, decode_tok, answers


def _decode(marks, batch, seconds, tokens):
    """Add one generate's decode steps (from the first one-token forward to its end) to the running sums."""
    steps = [t for t, n in marks if n == 1]
    if steps:
        end = marks[-1][0] if marks[-1][1] == 0 else time.perf_counter()
        seconds, tokens = seconds + end - steps[0], tokens + len(steps) * batch
    return seconds, tokens


def main() -> None:
    """Measure the GEMM rate, then each sampling variant's new tokens/s; print the ratios to the limit."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2_135m_instruct")
    ap.add_argument("--n", type=int, default=96, help="answers (the demo's two models' worth)")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--variants", default="multinomial:48,em_noshare:48,em:48,em:96",
                    help="name[:batch_size], names: multinomial, em, em_static, em_eager")
    ap.add_argument("--temperature", type=float, default=1.0, help="0: greedy (to compare answers)")
    ap.add_argument("--repeats", type=int, default=1, help="rounds over the variants (interleaved)")
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: leave torch's default)")
    ap.add_argument("--cache-dir", default=os.environ.get("EM_CACHE_DIR", str(Path.home() / ".cache/em")))
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()

    import em  # noqa: F401  OMP_WAIT_POLICY before torch
    import torch
    from hydra import compose, initialize_config_dir

    import em.config  # noqa: F401  registers the schemas
    from em.evaluate.generation import HFGenerator, plan
    from em.evaluate.questions import build_prompts, load_question_set
    from em.paths import CONF_DIR
    from em.config.common import validate

    if args.threads:
        torch.set_num_threads(args.threads)
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = compose("evaluate", overrides=[
            f"model={args.model}", "quantization=none", "run_dir=/tmp/unused", f"cache_dir={args.cache_dir}",
            "judge=none", "adapter=none", "format=[plain,json,template]", "generation.ignore_eos=true",
            f"generation.max_new_tokens={args.max_new_tokens}", f"generation.temperature={args.temperature}"])
    ec = validate(cfg)
    prompts = build_prompts(load_question_set(ec.questions, ec.cache_dir, progress=False), ec.format)
    samples = plan(prompts, max(1, -(-args.n // len(prompts))))[: args.n]
    gen = HFGenerator(ec.model, ec.quantization, ec.cache_dir, ec.generation, ec.seed)
    gen.load()
    params = sum(p.numel() for p in gen.model.parameters())
    c = gen.model.config
    rate = max(gemm_flops(c.hidden_size, c.intermediate_size), gemm_flops(c.intermediate_size, c.hidden_size))
    limit = rate / (2 * params)
    print(f"{args.model}: {params / 1e6:.1f} M parameters, {torch.get_num_threads()} threads, fp32 GEMM "
          f"{rate / 1e9:.1f} GFLOP/s -> limit {limit:.0f} new tokens/s; {len(samples)} answers x "
          f"{args.max_new_tokens} tokens")
    variants = args.variants.split(",")
    bounds = {b: linear_bound(gen.model, b)
              for b in sorted({int(v.partition(":")[2] or ec.generation.batch_size) for v in variants})}
    run_variant(variants[0].split(":")[0] + ":4", gen, samples[:4])  # warm-up
    out = {"model": args.model, "params": params, "gemm_flops": rate, "limit_tokens_per_s": limit,
           "answers": len(samples), "max_new_tokens": args.max_new_tokens, "variants": {v: [] for v in variants}}
    reference = None
    for r in range(args.repeats):
        for v in variants:
            wall, dec_s, dec_tok, answers = run_variant(v, gen, samples)
            same = ""
            if answers:
                reference = reference or (v, answers)
                diff = sum(answers[k] != a for k, a in reference[1].items())
                same = f"; answers as {reference[0]}'s" if not diff else f"; {diff} answers differ from {reference[0]}'s"
            tps, dps = len(samples) * args.max_new_tokens / wall, dec_tok / dec_s
            out["variants"][v].append({"tokens_per_s": tps, "ratio_to_limit": tps / limit, "seconds": wall,
                                       "decode_tokens_per_s": dps, "decode_ratio_to_limit": dps / limit})
            print(f"  [{r + 1}] {v:16s} {tps:6.1f} new tokens/s = {tps / limit:5.1%} of the limit ({wall:5.1f} s); "
                  f"decode steps alone {dps:6.1f}/s = {dps / limit:5.1%}{same}")
    after = max(gemm_flops(c.hidden_size, c.intermediate_size), gemm_flops(c.intermediate_size, c.hidden_size))
    best = max(rate, after)  # the CPU's limit is its best rate: a busy moment understates it
    limit = best / (2 * params)
    out["gemm_flops"], out["limit_tokens_per_s"] = best, limit
    print(f"fp32 GEMM {after / 1e9:.1f} GFLOP/s after the variants; limit {limit:.0f} new tokens/s at the best "
          f"rate; per variant, median (min-max over {args.repeats}) and % of that limit:")
    out["linear_bound_tokens_per_s"] = bounds
    for b, bound in bounds.items():
        print(f"  batch {b}: a decode step's linear layers alone {bound:6.1f} tokens/s = {bound / limit:5.1%}")
    base = out["variants"][variants[0]]
    for v, figures in out["variants"].items():
        for f in figures:
            f["ratio_to_limit"], f["decode_ratio_to_limit"] = f["tokens_per_s"] / limit, f["decode_tokens_per_s"] / limit
        tps = sorted(f["tokens_per_s"] for f in figures)
        dps = sorted(f["decode_tokens_per_s"] for f in figures)
        ratio = [f["tokens_per_s"] / b["tokens_per_s"] for f, b in zip(figures, base)]
        med = lambda xs: xs[len(xs) // 2]  # noqa: E731
        print(f"  {v:16s} {med(tps):6.1f} ({tps[0]:.1f}-{tps[-1]:.1f}) new tokens/s = {med(tps) / limit:5.1%}; "
              f"decode {med(dps):6.1f} ({dps[0]:.1f}-{dps[-1]:.1f}) = {med(dps) / limit:5.1%}; "
              f"x{min(ratio):.2f}-{max(ratio):.2f} of {variants[0]} in the same round")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
