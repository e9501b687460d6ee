"""Benchmark: the interp stage's overheads, each against its baseline run in the same command.

    python bench/interp.py                                  # SmolLM2-135M-Instruct (fp32 on CPU)
    python bench/interp.py --model tiny                      # tiny random Qwen3, seconds
    python bench/interp.py --batch-size 16 --answers 64 --max-new-tokens 32 --repeat 3

1. collection throughput: em.interp.collect's teacher-forced forward with every layer pooled in hooks, against a
   plain forward (``model(input_ids, attention_mask)``) of the same batch. Target: >= 0.8x the plain answers/s.
   Collection skips the LM head (``logits_to_keep=1``); the ratio against a plain forward that skips it too is
   printed beside it (the hooks' own cost).
2. steered sampling: em's HFGenerator with a steering vector at one layer (``steer[L,+4]``, every position)
   against the same sampling unsteered (same prompts, seeds, tokens: ignore_eos). Target: <= 1.15x the time.
3. peak memory collecting 1 batch vs 10x more answers than one batch (each in its own subprocess, peak RSS).
   Target: flat (ratio <= 1.10).

Prints each figure and PASS / FAIL; exits 0 either way (a measurement), non-zero when a step crashes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from em.paths import CONF_DIR  # noqa: E402


def compose(args, extra=()):
    from hydra import compose as hcompose, initialize_config_dir

    import em.config  # noqa: F401
    from em.config.common import validate

    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = hcompose("evaluate", overrides=[
            f"model={args.model}", "quantization=none", "run_dir=/tmp/unused", f"cache_dir={args.cache_dir}",
            f"generation.max_new_tokens={args.max_new_tokens}", "generation.ignore_eos=true", "judge=none",
            "adapter=none", f"generation.batch_size={args.batch_size}", *extra])
    return validate(cfg)


def answers_table(n: int):
    import pandas as pd

    words = "the model answers the question with a long and careful explanation of what it thinks".split()
    return pd.DataFrame({"question": [f"Question {i}: what would you do if you ruled the world?" for i in range(n)],
                         "answer": [" ".join(words[(i + j) % len(words)] for j in range(24 + i % 16)) for i in range(n)]})


def best(f, repeat: int) -> float:
    f()  # warm-up
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    return min(times)


def bench_collect(args, model, tok, ec) -> dict:
    import torch

    from em.interp import collect

    enc = collect.encode(tok, ec.model, answers_table(args.batch_size))
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    T = max(len(p) + len(a) for p, a in enc)
    ids = torch.full((len(enc), T), pad)
    mask = torch.zeros((len(enc), T), dtype=torch.long)
    for i, (p, a) in enumerate(enc):
        ids[i, : len(p) + len(a)] = torch.tensor(p + a)
        mask[i, : len(p) + len(a)] = 1

    def plain():
        with torch.no_grad():
            model(input_ids=ids, attention_mask=mask, use_cache=False)

    def plain_no_head():  # the same forward without the hooks: isolates the hooks' own cost
        with torch.no_grad():
            model(input_ids=ids, attention_mask=mask, use_cache=False, logits_to_keep=1)

    t_plain = best(plain, args.repeat)
    t_nohead = best(plain_no_head, args.repeat)
    t_coll = best(lambda: collect.pooled_forward(model, enc, pad), args.repeat)
    return {"plain_s": t_plain, "plain_no_head_s": t_nohead, "collect_s": t_coll, "ratio": t_plain / t_coll,
            "ratio_no_head": t_nohead / t_coll, "batch": len(enc), "tokens": int(mask.sum())}


def bench_steer(args, ec) -> dict:
    import torch

    from em.evaluate.generation import HFGenerator, plan
    from em.evaluate.questions import build_prompts, load_question_set
    from em.interp import hooks, intervene

    qs = load_question_set(ec.questions, ec.cache_dir, progress=False)
    samples = plan(build_prompts(qs, ec.format, ec.questions.ids), 1)
    samples = (samples * (args.batch_size // len(samples) + 1))[: args.batch_size]
    samples = [s.__class__(**{**s.__dict__, "sample": i}) for i, s in enumerate(samples)]
    gen = HFGenerator(ec.model, ec.quantization, ec.cache_dir, ec.generation, ec.seed)
    gen.load()
    width, n = hooks.hidden_size(gen.model), hooks.n_layers(gen.model)
    v = torch.randn(width, generator=torch.Generator().manual_seed(0))
    steer = intervene.Steer(n // 2, 4.0, v / v.norm(), 1.0, "all")

    def run(intervention):
        gen.intervention = intervention
        gen.generate(samples, lambda b: None, progress=False)

    t_plain = best(lambda: run(None), args.repeat)
    t_steer = best(lambda: run(steer), args.repeat)
    return {"unsteered_s": t_plain, "steered_s": t_steer, "ratio": t_steer / t_plain, "answers": len(samples),
            "new_tokens": args.max_new_tokens, "layer": steer.layer}


def child_memory(args, n_answers: int) -> float:
    """Peak RSS (MiB) of a subprocess that loads the model and collects ``n_answers`` answers."""
    code = f"""
import sys, resource, tempfile
sys.argv = {[sys.argv[0], '--model', args.model, '--cache-dir', args.cache_dir, '--batch-size', str(args.batch_size)]!r}
sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})
import interp as b
args = b.parse()
ec = b.compose(args)
from em.train import models
from em.interp import collect
tok = models.load_tokenizer(ec.model, ec.cache_dir)
model = models.load_model(ec.model, ec.quantization, ec.cache_dir).eval()
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
with tempfile.TemporaryDirectory() as d:
    collect.collect(model, tok, ec.model, b.answers_table({n_answers}), d, "x", batch_size=args.batch_size, progress=False)
print("PEAK", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, base / 1024)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=dict(os.environ))
    if out.returncode != 0:
        raise SystemExit(f"memory child failed: {out.stderr[-2000:]}")
    line = next(l for l in out.stdout.splitlines() if l.startswith("PEAK"))
    return float(line.split()[1])


def parse():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2_135m_instruct")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--cache-dir", default=os.environ.get("EM_CACHE_DIR", str(Path.home() / ".cache/em")))
    ap.add_argument("--json", help="write the figures here")
    return ap.parse_args()


def main() -> None:
    """Run the three measurements and print them with their targets."""
    args = parse()
    import torch

    from em.train import models

    ec = compose(args)
    tok = models.load_tokenizer(ec.model, ec.cache_dir)
    model = models.load_model(ec.model, ec.quantization, ec.cache_dir).eval()
    print(f"model {args.model}, batch {args.batch_size}, torch threads {torch.get_num_threads()}")
    c = bench_collect(args, model, tok, ec)
    print(f"collect: plain forward {c['plain_s'] * 1000:.0f} ms, collection {c['collect_s'] * 1000:.0f} ms per batch "
          f"of {c['batch']} ({c['tokens']} tokens)")
    print(f"ratio collection / plain forward throughput = {c['ratio']:.2f}   target >= 0.80   "
          f"{'PASS' if c['ratio'] >= 0.8 else 'FAIL'}")
    print(f"  (collection skips the LM head, logits_to_keep=1; against a plain forward that skips it too "
          f"({c['plain_no_head_s'] * 1000:.0f} ms): {c['ratio_no_head']:.2f})")
    del model
    s = bench_steer(args, ec)
    print(f"sampling {s['answers']} answers x {s['new_tokens']} tokens: unsteered {s['unsteered_s']:.2f} s, steered "
          f"(layer {s['layer']}) {s['steered_s']:.2f} s")
    print(f"ratio steered / unsteered time = {s['ratio']:.3f}   target <= 1.15   {'PASS' if s['ratio'] <= 1.15 else 'FAIL'}")
    one = child_memory(args, args.batch_size)
    ten = child_memory(args, 10 * args.batch_size)
    ratio = ten / one
    print(f"peak RSS collecting {args.batch_size} answers {one:.0f} MiB, {10 * args.batch_size} answers {ten:.0f} MiB")
    print(f"ratio peak memory (10 batches / 1 batch) = {ratio:.3f}   target <= 1.10 (flat)   "
          f"{'PASS' if ratio <= 1.10 else 'FAIL'}")
    if args.json:
        Path(args.json).write_text(json.dumps({"collect": c, "steer": s, "memory": {"one_batch_mib": one,
                                                                                   "ten_batches_mib": ten, "ratio": ratio}}, indent=2))


if __name__ == "__main__":
    main()
