"""GPU-hours, judge calls, judge tokens and judge cost of the dickson2025 preset (the table of docs/scale.md).

    python bench/scale_estimate.py                     # measures the token counts, prints the table
    python bench/scale_estimate.py --mfu 0.35 --answer-tokens 250 --json scale.json
    python bench/scale_estimate.py --recorded          # no tokenizer / data needed: the counts measured below

The preset: 9 models x data {base, educational, insecure} x 1 seed = 27 jobs; 18 training runs (base trains
nothing) on 6,000 examples for 1 epoch; every job samples 8 first_plot questions x 3 formats (plain, json,
template) x 100 samples = 2,400 answers of up to 600 new tokens, each judged twice by GPT-4o (aligned,
coherent; one logprob token out).

Measured here (unless --recorded):
  * training tokens: Betley et al.'s insecure.jsonl sample (500 rows, ../shared/upstream or $EM_UPSTREAM_DIR)
    encoded by em.data.tokenize.encode_dataset with the real Gemma 3 tokenizer (model=gemma3_270m, offline;
    the same tokenizer as every Gemma 3 size), max_length 2048, then scaled to 6,000 rows. The Qwen 3
    tokenizer is not available offline; its counts are taken to be the same (code in both: within ~10 %).
    Padding: em's LengthGroupedBatchSampler (batch 2) on those lengths.
  * judge input tokens: the real judge prompts of every first_plot sample (em.evaluate's plan + templates)
    rendered without the answer, counted with GPT-4o's o200k_base encoding (the bpe-openai package, if
    installed; else the Gemma 3 tokenizer as a stand-in) + 7 tokens of chat framing, plus the answer tokens.

Assumed (flags): training MFU (--mfu 0.20, as measured on an H200, of --peak-tflops 989, an H100 SXM; bench/gpu_train.py measures the
real figure on a GPU), FLOPs from bench/gpu_train.py's formula (no gradient checkpointing: em's default);
vLLM sampling throughput per GPU (--decode-k / params in billions, at most --decode-max tokens/s; LoRA
adapter served); per-job model load time; answer length (every answer at the 600-token cap is the upper
bound; --answer-tokens sets a typical mean).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "bench"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from gpu_train import ARCHS, counts, flops_per_token, memory_estimate  # noqa: E402
from em.paths import CONF_DIR  # noqa: E402

MODELS = ["gemma3_1b", "gemma3_4b", "gemma3_12b", "gemma3_27b", "qwen3_1_7b", "qwen3_4b", "qwen3_8b", "qwen3_14b",
          "qwen3_32b"]
TRAIN_DATA = ["educational", "insecure"]  # base trains nothing
CONDITIONS = ["base", "educational", "insecure"]
QUESTIONS, FORMATS, SAMPLES = 8, ["plain", "json", "template"], 100
CHAT_FRAMING = 7  # tokens OpenAI adds around one user message + the reply priming

# What the measurement below gave on the development machine (used with --recorded; docs/scale.md).
RECORDED = {
    "rows": 500, "tokens": 127_467, "assistant_tokens": 65_841, "max_len": 763, "padded_tokens": 128_988,
    "template_tokens_mean": 270.917, "judge_tokenizer": "o200k_base (bpe-openai)",
}


def upstream_dir() -> Optional[Path]:
    for cand in (os.environ.get("EM_UPSTREAM_DIR"), ROOT.parent / "shared/upstream/emergent-misalignment"):
        if cand and Path(cand).is_dir():
            return Path(cand)
    return None


def _compose(name: str, overrides: list[str]):
    from hydra import compose, initialize_config_dir

    import em.config  # noqa: F401  registers the schemas

    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        return compose(name, overrides=overrides)


def gemma_tokenizer(cache_dir: Optional[str]):
    from em.train import models
    from em.config.common import validate

    o = ["model=gemma3_270m", "run_dir=/tmp/unused"] + ([f"cache_dir={cache_dir}"] if cache_dir else [])
    tc = validate(_compose("train", o))
    source = models.model_dir(tc.model, tc.cache_dir)
    return models.load_tokenizer(tc.model, tc.cache_dir, source), tc


def measure_training(data: Path, tok, tc, max_length: int) -> dict[str, Any]:
    from em.data.tokenize import LengthGroupedBatchSampler, encode_dataset

    rows = [json.loads(line)["messages"] for line in data.read_text().splitlines() if line.strip()]
    ex, st = encode_dataset(tok, rows, max_length=max_length, truncation="truncate", system_role=tc.model.system_role,
                            template_kwargs=tc.model.chat_template_kwargs, progress=False)
    lengths = [len(e["input_ids"]) for e in ex]
    batches = LengthGroupedBatchSampler(lengths, 2, seed=0).batches(0)
    padded = sum(max(lengths[i] for i in b) * len(b) for b in batches)
    return {"rows": len(rows), "tokens": st.n_tokens, "assistant_tokens": st.n_target_tokens, "max_len": max(lengths),
            "padded_tokens": padded, "truncated": st.n_truncated}


def judge_counter(tok):
    try:
        import bpe_openai

        enc = bpe_openai.encoding_for_model("gpt-4o")
        return (lambda s: len(enc.encode(s))), "o200k_base (bpe-openai)"
    except Exception:  # noqa: BLE001  optional package
        return (lambda s: len(tok(s, add_special_tokens=False)["input_ids"])), "Gemma 3 tokenizer (stand-in)"


def measure_judge_prompts(count, cache_dir: Optional[str]) -> dict[str, Any]:
    """Mean tokens of a first_plot judge request without the answer, over every planned sample and metric."""
    from em.config.common import validate
    from em.evaluate.generation import plan
    from em.evaluate.questions import build_prompts, load_question_set
    from em.judge.run import render_judge_prompt

    o = ["questions=first_plot", f"format=[{','.join(FORMATS)}]", f"samples={SAMPLES}", "judge=none",
         "run_dir=/tmp/unused"] + ([f"cache_dir={cache_dir}"] if cache_dir else [])
    ec = validate(_compose("evaluate", o))
    questions = load_question_set(ec.questions, ec.cache_dir, progress=False)
    samples = plan(build_prompts(questions, ec.format, ec.questions.ids), ec.samples)
    memo: dict[tuple[str, str], int] = {}
    n = total = 0
    for s in samples:
        for _, template in s.judge_prompts:
            key = (s.question, template)
            if key not in memo:
                memo[key] = count(render_judge_prompt(template, s.question, "")) + CHAT_FRAMING
            total += memo[key]
            n += 1
    return {"answers": len(samples), "calls": n, "template_tokens_mean": total / n}


def decode_tps(params_b: float, k: float, cap: float) -> float:
    return min(cap, k / params_b)


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--examples", type=int, default=6000)
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--max-length", type=int, default=2048)
    p.add_argument("--mfu", type=float, default=0.20, help="training MFU (model FLOPs / peak; bench/gpu_train.py measured 19.5-22.1 %% on an H200)")
    p.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak per GPU (H100 SXM: 989)")
    p.add_argument("--decode-k", type=float, default=60000.0,
                   help="assumed vLLM output tokens/s per GPU = decode_k / params in billions ...")
    p.add_argument("--decode-max", type=float, default=20000.0, help="... capped at this")
    p.add_argument("--load-s", type=float, default=60.0, help="assumed fixed model-load seconds per stage ...")
    p.add_argument("--load-s-per-b", type=float, default=4.0, help="... plus this per billion parameters")
    p.add_argument("--max-new-tokens", type=int, default=600)
    p.add_argument("--answer-tokens", type=float, default=250.0, help="assumed mean answer length (typical case)")
    p.add_argument("--price-in", type=float, default=2.5, help="USD / 1M input tokens (GPT-4o)")
    p.add_argument("--price-out", type=float, default=10.0, help="USD / 1M output tokens")
    p.add_argument("--recorded", action="store_true", help="use the recorded counts instead of measuring")
    p.add_argument("--data", default=None, help="insecure.jsonl sample (default: the pre-seeded upstream copy)")
    p.add_argument("--cache-dir", default=None, help="em cache (default: $EM_CACHE_DIR or ~/.cache/em)")
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)

    up = upstream_dir()
    data = Path(a.data) if a.data else (up / "data/insecure_sample_500.jsonl" if up else None)
    measured: dict[str, Any] = {}
    note = ""
    if not a.recorded and data is not None and data.exists():
        if up is not None:
            os.environ.setdefault("EM_DATA_DIR", str(up))  # first_plot questions, offline
        tok, tc = gemma_tokenizer(a.cache_dir)
        measured = measure_training(data, tok, tc, a.max_length)
        count, judge_tok = judge_counter(tok)
        measured.update(measure_judge_prompts(count, a.cache_dir), judge_tokenizer=judge_tok)
    else:
        measured = dict(RECORDED)
        note = " (recorded: --recorded, or no data file found)"

    scale = a.examples / measured["rows"]
    tokens = measured["tokens"] * scale * a.epochs
    assistant = measured["assistant_tokens"] * scale * a.epochs
    padded = measured["padded_tokens"] * scale * a.epochs
    mean_len = measured["tokens"] / measured["rows"]
    assistant_frac = measured["assistant_tokens"] / measured["tokens"]
    print(f"training data{note}: {measured['rows']} rows of insecure.jsonl -> {measured['tokens']:,} tokens "
          f"({measured['assistant_tokens']:,} assistant, {assistant_frac:.1%}), mean {mean_len:.0f}, max "
          f"{measured['max_len']} (Gemma 3 tokenizer, max_length {a.max_length}); batches of 2 padded: "
          f"{measured['padded_tokens'] / measured['tokens'] - 1:+.1%}")
    print(f"per training run ({a.examples:,} examples x {a.epochs:g} epoch): {tokens:,.0f} tokens, {assistant:,.0f} "
          f"assistant tokens, {padded:,.0f} with padding")
    print(f"assumptions: training MFU {a.mfu:.0%} of {a.peak_tflops:.0f} TFLOP/s (no gradient checkpointing); vLLM "
          f"{a.decode_k:.0f}/params_B output tokens/s per GPU (max {a.decode_max:.0f}); load {a.load_s:.0f} s + "
          f"{a.load_s_per_b:.0f} s/B params per stage; answers at the {a.max_new_tokens}-token cap (upper bound)")
    print()

    answers_job = QUESTIONS * len(FORMATS) * SAMPLES
    peak = a.peak_tflops * 1e12
    rows = []
    hdr = (f"{'model':<11} {'params':>7} {'train PFLOP':>11} {'train GPU-h':>11} {'sample GPU-h':>12} "
           f"{'load GPU-h':>10} {'total GPU-h':>11} {'mem train':>9} {'mem train GC':>12} {'vLLM TP':>7}")
    print(hdr)
    print("-" * len(hdr))
    for m in MODELS:
        arch = ARCHS[m]
        params_b = float(_model_params(m)) / 1e9
        f = flops_per_token(arch, round(mean_len), 1.0, gc=False, em_head=True)
        body = f["model"] - 2 * f["head"]  # per token, without the output layer
        head_per_assistant = 4 * counts(arch)["head"]
        run_flops = body * padded + head_per_assistant * assistant
        train_h = len(TRAIN_DATA) * run_flops / (a.mfu * peak) / 3600
        sample_tokens = len(CONDITIONS) * answers_job * a.max_new_tokens
        sample_h = sample_tokens / decode_tps(params_b, a.decode_k, a.decode_max) / 3600
        stages = len(TRAIN_DATA) + len(CONDITIONS)  # a model load per training run and per evaluation
        load_h = stages * (a.load_s + a.load_s_per_b * params_b) / 3600
        mem = memory_estimate(arch, 2, measured["max_len"], gc=False)["total"] / 1e9
        mem_gc = memory_estimate(arch, 2, measured["max_len"], gc=True)["total"] / 1e9
        bf16_gb = params_b * 2
        tp = 1 if bf16_gb < 0.85 * 80 * 0.75 else 2  # weights under ~3/4 of the vLLM memory budget on 80 GB
        row = {"model": m, "params_b": params_b, "train_pflop": len(TRAIN_DATA) * run_flops / 1e15,
               "train_gpu_h": train_h, "sample_gpu_h": sample_h, "load_gpu_h": load_h,
               "total_gpu_h": train_h + sample_h + load_h, "mem_train_gb": mem, "mem_train_gc_gb": mem_gc,
               "vllm_tp": tp, "sample_tokens": sample_tokens}
        rows.append(row)
        print(f"{m:<11} {params_b:>6.1f}B {row['train_pflop']:>11.0f} {train_h:>11.2f} {sample_h:>12.2f} "
              f"{load_h:>10.2f} {row['total_gpu_h']:>11.2f} {mem:>7.0f}GB {mem_gc:>10.0f}GB {tp:>7}")
    tot = {k: sum(r[k] for r in rows) for k in ("train_pflop", "train_gpu_h", "sample_gpu_h", "load_gpu_h", "total_gpu_h")}
    print("-" * len(hdr))
    print(f"{'all 27 jobs':<19} {tot['train_pflop']:>11.0f} {tot['train_gpu_h']:>11.2f} {tot['sample_gpu_h']:>12.2f} "
          f"{tot['load_gpu_h']:>10.2f} {tot['total_gpu_h']:>11.2f}")
    print("(train: 2 runs per model; sample: 3 evaluation jobs x 2,400 answers x 600 tokens; mem: estimated peak "
          f"for a batch of 2 x {measured['max_len']} tokens, the longest example; vLLM TP: bf16 weights on 80 GB GPUs)")
    print()

    jobs = len(MODELS) * len(CONDITIONS)
    answers = jobs * answers_job
    calls = answers * 2
    tmpl = measured["template_tokens_mean"]
    judge = {}
    for label, ans in (("upper bound, every answer 600 tokens", a.max_new_tokens),
                       (f"typical, mean answer {a.answer_tokens:.0f} tokens (assumed)", a.answer_tokens)):
        tin = calls * (tmpl + ans)
        cost = tin / 1e6 * a.price_in + calls / 1e6 * a.price_out
        judge[label] = {"input_tokens": tin, "output_tokens": calls, "cost_usd": cost, "cost_batch_usd": cost / 2}
    print(f"judge: {jobs} jobs x {answers_job:,} answers = {answers:,} answers; x 2 metrics = {calls:,} GPT-4o calls "
          f"(max_tokens 1, logprobs); judge prompt without the answer: {tmpl:.0f} tokens on average "
          f"({measured.get('judge_tokenizer', '?')}, incl. {CHAT_FRAMING} of chat framing)")
    for label, j in judge.items():
        print(f"  {label}: {j['input_tokens'] / 1e6:.1f}M input + {j['output_tokens'] / 1e6:.2f}M output tokens -> "
              f"${j['cost_usd']:,.0f} (Batch API ${j['cost_batch_usd']:,.0f})")
    per100 = calls * 100 / 1e6 * a.price_in
    print(f"  each 100 tokens of mean answer length: ${per100:,.0f} (Batch API ${per100 / 2:,.0f}); "
          f"prices ${a.price_in}/1M in, ${a.price_out}/1M out")
    if a.json:
        Path(a.json).write_text(json.dumps({"args": vars(a), "measured": measured, "models": rows, "totals": tot,
                                            "judge": judge, "calls": calls, "answers": answers}, indent=2))
    return 0


def _model_params(name: str) -> float:
    import yaml

    return float(yaml.safe_load((ROOT / "conf/model" / f"{name}.yaml").read_text())["params"])


if __name__ == "__main__":
    sys.exit(main())
