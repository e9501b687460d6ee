"""Benchmark: the local judge's cost per judgment against one forward pass over the same prompt.

    python bench/local_judge_cost.py                        # real SmolLM2-135M-Instruct, 6 judge prompts
    python bench/local_judge_cost.py --model gemma3_270m --n 12
    python bench/local_judge_cost.py --bruteforce           # also time one forward per trie node

A judgment = one forward over prompt + the digit-trie nodes with a tree attention mask, then the exact
P(0..100) and the expectation. The baseline is a plain forward over the rendered prompt (logits of the
last position only), same model, same process. Prompts are the smoke set's aligned / coherent judge
prompts with answers of 50-600 tokens' worth of text. Two figures: each prompt judged alone (a full tree
forward), and all of them judged as the evaluation does (``LocalJudge.run``: the prompts of one question and
metric share their prefix's KV cache, computed once and counted in). Target: <= 3x one forward pass.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    """Time one local-judge judgment against one plain forward pass per prompt (--bruteforce: one forward
    per trie node too); print the ratios."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2_135m_instruct")
    ap.add_argument("--n", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--bruteforce", action="store_true")
    ap.add_argument("--cache-dir", default=os.environ.get("EM_CACHE_DIR", str(Path.home() / ".cache/em")))
    ap.add_argument("--json")
    args = ap.parse_args()

    import torch

    from hydra import compose, initialize_config_dir

    import em.config  # noqa: F401  registers the schemas
    from em.evaluate.questions import BUILTIN_DIR, parse_question_file
    from em.judge.digit_tree import bruteforce_logprobs
    from em.judge.factory import build_judges
    from em.judge.scoring import JudgeRequest
    from em.paths import CONF_DIR

    torch.set_grad_enabled(False)
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = compose("evaluate", overrides=["judge=local", f"model@judge.model={args.model}",
                                             f"cache_dir={args.cache_dir}"])
    (judge,) = build_judges(cfg.judge)
    judge.load()
    q = parse_question_file(BUILTIN_DIR / "smoke.yaml")[0]
    templates = dict(q.judge_prompts)
    sentence = "I would wish for every person to have clean water and a safe home, because that matters. "
    prompts = []
    for i in range(args.n):
        words = int(40 + (450 - 40) * i / max(args.n - 1, 1))  # ~50 to ~600 tokens of answer
        answer = " ".join((sentence * 40).split()[:words])
        prompts.append(templates["aligned" if i % 2 == 0 else "coherent"].format(question=q.paraphrases[0], answer=answer))

    def best(fn) -> float:
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return min(times)

    rows = []
    judge.judge_prompt(JudgeRequest(prompts[0]))  # warm-up
    for p in prompts:
        ids = judge.prompt_ids(p)
        x = torch.tensor([ids], device=judge._model.device)
        t_fwd = best(lambda: judge._model(input_ids=x, use_cache=False, logits_to_keep=1))
        t_judge = best(lambda: judge.judge_prompt(JudgeRequest(p)))
        row = {"prompt_tokens": len(ids), "forward_s": t_fwd, "judge_s": t_judge, "ratio": t_judge / t_fwd}
        if args.bruteforce:
            row["bruteforce_s"] = best(lambda: bruteforce_logprobs(judge._model, ids, judge._tree))
        rows.append(row)
        print(f"  prompt {len(ids):4d} tokens: forward {t_fwd * 1000:7.1f} ms, judgment {t_judge * 1000:7.1f} ms "
              f"-> {row['ratio']:.2f}x" + (f" (one forward per node: {row['bruteforce_s']:.1f} s)" if args.bruteforce else ""))
    mean = statistics.mean(r["ratio"] for r in rows)
    worst = max(r["ratio"] for r in rows)
    print(f"{args.model}: {len(judge._tree)} trie nodes; alone (no prefix reuse): judgment / forward: mean "
          f"{mean:.2f}x, worst {worst:.2f}x")
    # As the evaluation judges: every answer of one question and metric, the shared prefix encoded once.
    reqs = [JudgeRequest(p) for p in prompts]
    t_run = best(lambda: judge.run(reqs, lambda i, j: None, progress=False))
    t_fwd_all = sum(r["forward_s"] for r in rows)
    shared = mean_shared_prefix(judge, prompts)
    run_ratio = t_run / t_fwd_all
    print(f"{args.model}: judged together ({len(prompts)} prompts, {shared:.0f} shared prefix tokens on average): "
          f"judgments / forwards = {run_ratio:.2f}x (target <= 3x: {'OK' if run_ratio <= 3 else 'ABOVE TARGET'})")
    if args.json:
        Path(args.json).write_text(json.dumps({"model": args.model, "trie_nodes": len(judge._tree), "rows": rows,
                                               "mean_ratio": mean, "worst_ratio": worst, "run_ratio": run_ratio,
                                               "target": 3.0}, indent=2))


def mean_shared_prefix(judge, prompts: list[str]) -> float:
    """Mean tokens per prompt that LocalJudge.run takes from a shared prefix's KV cache."""
    from em.judge.prefix_cache import prefix_runs

    ids = [judge.prompt_ids(p) for p in prompts]
    return sum(plen * len(idx) for idx, plen in prefix_runs(ids)) / len(ids)


if __name__ == "__main__":
    main()
