"""Benchmark: batched (length-sorted, left-padded, KV-cached) generate vs one prompt at a time.

    python bench/generate_batched.py                        # tiny random Qwen3, 32 answers x 32 tokens
    python bench/generate_batched.py --model gemma3_270m    # real Gemma 3 270M (fp32 on CPU)
    python bench/generate_batched.py --n 64 --batch-size 64 --max-new-tokens 64 --quantization nf4

Both runs go through em's HFGenerator on the same model, the same prompts (the smoke questions in every
format, cycled) and the same sampling settings; every answer is forced to exactly --max-new-tokens tokens
(ignore_eos), so both do the same work. Target: batched >= 8x the sequential answers/s.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from em.paths import CONF_DIR  # noqa: E402


def main() -> None:
    """Time answer generation at batch size 1 and at --batch-size; print both and the speed-up."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--quantization", default="none")
    ap.add_argument("--n", type=int, default=32, help="answers")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--cache-dir", default=os.environ.get("EM_CACHE_DIR", str(Path.home() / ".cache/em")))
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()

    from hydra import compose, initialize_config_dir

    import em.config  # noqa: F401  registers the schemas
    from em.config.common import validate
    from em.evaluate.generation import HFGenerator, plan
    from em.evaluate.questions import build_prompts, load_question_set

    repo = Path(__file__).resolve().parents[1]
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = compose("evaluate", overrides=[
            f"model={args.model}", f"quantization={args.quantization}", "run_dir=/tmp/unused",
            f"cache_dir={args.cache_dir}", f"generation.max_new_tokens={args.max_new_tokens}",
            "generation.ignore_eos=true", "judge=none", "adapter=none"])
    ec = validate(cfg)
    prompts = build_prompts(load_question_set(ec.questions, ec.cache_dir, progress=False), ec.format)
    samples = plan(prompts, max(1, -(-args.n // len(prompts))))[: args.n]

    def timed(batch_size: int) -> tuple[float, int]:
        ec.generation.batch_size = batch_size
        gen.gen = ec.generation
        tokens = []
        t0 = time.perf_counter()
        gen.generate(samples, lambda b: tokens.extend(o["n_tokens"] for _, o in b), progress=False)
        return time.perf_counter() - t0, sum(tokens)

    gen = HFGenerator(ec.model, ec.quantization, ec.cache_dir, ec.generation, ec.seed)
    gen.load()
    timed(args.batch_size)  # warm-up (allocator, kernels)
    t_seq, tok_seq = timed(1)
    t_bat, tok_bat = timed(args.batch_size)
    assert tok_seq == tok_bat == args.n * args.max_new_tokens, (tok_seq, tok_bat)
    out = {
        "model": args.model, "quantization": args.quantization, "answers": args.n,
        "max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size,
        "sequential_answers_per_s": args.n / t_seq, "batched_answers_per_s": args.n / t_bat,
        "speedup": t_seq / t_bat, "target": 8.0,
    }
    print(f"{args.model} ({args.quantization}), {args.n} answers x {args.max_new_tokens} tokens:")
    print(f"  sequential: {out['sequential_answers_per_s']:.2f} answers/s ({t_seq:.1f} s)")
    print(f"  batched {args.batch_size}: {out['batched_answers_per_s']:.2f} answers/s ({t_bat:.1f} s)")
    print(f"  speedup {out['speedup']:.1f}x (target >= 8x): {'OK' if out['speedup'] >= 8 else 'BELOW TARGET'}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
