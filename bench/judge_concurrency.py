"""Benchmark: 10,000 judgments against a loopback OpenAI-compatible server that sleeps 100 ms per request.

    python bench/judge_concurrency.py                       # 10,000 requests, concurrency 128
    python bench/judge_concurrency.py --n 2000 --concurrency 64 --delay 0.1

The server (tests/loopback_server.py) runs in its own process so it does not share the client's GIL; the
client is em's OpenAIJudge (real openai AsyncOpenAI client, semaphore-bounded) through the runner, with the
cache off. A sequential client needs n x delay (1,000 s for the defaults). Target: <= 30 s wall.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--concurrency", type=int, default=128)
    ap.add_argument("--delay", type=float, default=0.1)
    ap.add_argument("--json")
    args = ap.parse_args()

    from em.judge.base import run_judge
    from em.judge.cache import JudgeCache
    from em.judge.factory import build_judge
    from em.config.judge import OpenAIJudgeSchema
    from em.judge.scoring import JudgeRequest

    server = subprocess.Popen([sys.executable, str(REPO / "tests/loopback_server.py"), "--delay", str(args.delay)],
                              stdout=subprocess.PIPE, text=True)
    try:
        port = int(server.stdout.readline())
        os.environ["EM_BENCH_KEY"] = "sk-loopback"
        judge = build_judge(OpenAIJudgeSchema(base_url=f"http://127.0.0.1:{port}/v1", api_key_env="EM_BENCH_KEY",
                                              concurrency=args.concurrency, max_retries=2, timeout=30))
        reqs = [JudgeRequest(f"judgment {i}: rate this answer") for i in range(args.n)]
        t0 = time.perf_counter()
        out, stats = run_judge(judge, reqs, JudgeCache(None), progress=False)
        wall = time.perf_counter() - t0
    finally:
        server.terminate()
        server.wait()
    scored = sum(j.score is not None for j in out)
    sequential = args.n * args.delay
    res = {"n": args.n, "concurrency": args.concurrency, "delay_s": args.delay, "wall_s": wall,
           "requests_per_s": args.n / wall, "scored": scored, "sequential_s": sequential,
           "speedup_vs_sequential": sequential / wall, "target_wall_s": 30.0}
    print(f"{args.n} judgments, server sleeps {args.delay * 1000:.0f} ms each, concurrency {args.concurrency}:")
    print(f"  wall {wall:.1f} s ({res['requests_per_s']:.0f} req/s), {scored} scored")
    print(f"  a sequential client: {sequential:.0f} s -> {res['speedup_vs_sequential']:.0f}x faster "
          f"(target <= 30 s: {'OK' if wall <= 30 else 'ABOVE TARGET'})")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
