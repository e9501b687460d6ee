"""One judge loop in its own process, for the shared-cache tests (tests/test_faults_judge_cache.py).

    python -m tests.judge_worker URL CACHE N [--ready FILE --go FILE] [--concurrency C] [--timeout S]

Judges the prompts ``rate answer #0`` .. ``#N-1`` with an OpenAI judge at the loopback server ``URL`` (key in
``$EM_TEST_JUDGE_KEY``) through the SQLite cache ``CACHE``; with ``--ready`` / ``--go`` it creates the first file
once everything is imported and the cache is open, then waits for the second (so several workers start
together). Prints one JSON line: scores, finals and the runner's statistics.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from em.judge.base import run_judge
from em.judge.cache import JudgeCache
from em.judge.scoring import JudgeRequest
from em.judge.factory import build_judge
from em.config.judge import OpenAIJudgeSchema

KEY_ENV = "EM_TEST_JUDGE_KEY"  # tests.eval_helpers.KEY_ENV (not imported: it pulls in pytest)


def prompts(n: int) -> list[JudgeRequest]:
    """The workers' prompts (the tests build the same list to read the server's counts)."""
    return [JudgeRequest(f"rate answer #{i}") for i in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("cache")
    ap.add_argument("n", type=int)
    ap.add_argument("--ready")
    ap.add_argument("--go")
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--timeout", type=float, default=5.0)
    args = ap.parse_args()
    judge = build_judge(OpenAIJudgeSchema(base_url=args.url, api_key_env=KEY_ENV, concurrency=args.concurrency,
                                          timeout=args.timeout, max_retries=0, reply_retries=0))
    cache = JudgeCache(args.cache)
    import openai  # noqa: F401  (imported before the start line, not in the race)

    if args.ready:
        Path(args.ready).touch()
    if args.go:
        while not Path(args.go).exists():
            time.sleep(0.01)
    out, stats = run_judge(judge, prompts(args.n), cache, progress=False)
    cache.close()
    print(json.dumps({"scores": [j.score for j in out], "final": sum(j.final for j in out),
                      "stats": stats.__dict__}), flush=True)


if __name__ == "__main__":
    main()
