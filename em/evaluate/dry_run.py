"""``dry_run=true``: how many answers a run would generate and how many judge requests it would send (and what
they would cost), in memory that does not grow with ``samples``.

``samples=1000000`` used to build every Sample, render every chat prompt and hold every judge request (two per
answer) just to count them: 233 s and 12.1 GB. Here only the answers already on disk are read one by one, and
the answers still to generate are counted per (question-format, paraphrase): all of their samples render the
same chat prompt (so one prompt hash each) and, priced at ``max_new_tokens`` (about 4 characters per token: an
upper bound), the same judge prompt; they are all distinct future prompts, so none can be cached or asked
twice. The judges' ``estimate`` sees them as a :class:`RepeatedRequests` sequence (each prompt once, with a
count, and ``prompt_chars()`` for the token estimate). Memory: O(question-formats + answers on disk); time: O(samples) integer work, no rendering per answer.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Callable

from em.evaluate.generation import Sample
from em.judge.base import pending
from em.judge.cache import JudgeCache
from em.judge.scoring import JudgeRequest


class RepeatedRequests(Sequence):
    """A read-only sequence of ``(request, count)`` runs: ``len`` is the total count, iteration yields each
    request ``count`` times (the same object: no copies). What :meth:`em.judge.base.Judge.estimate` needs."""

    def __init__(self, runs: list[tuple[Any, int]]):
        self.runs = [(r, n) for r, n in runs if n > 0]
        self._len = sum(n for _, n in self.runs)

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[Any]:
        for r, n in self.runs:
            for _ in range(n):
                yield r

    def prompt_chars(self) -> int:
        """Characters of all prompts, repeats counted (what a judge's token estimate needs), in O(runs)."""
        return sum(len(r.prompt) * n for r, n in self.runs)

    def __getitem__(self, i: int) -> Any:  # (Sequence's contract; estimates only iterate)
        if i < 0:
            i += self._len
        for r, n in self.runs:
            if i < n:
                return r
            i -= n
        raise IndexError(i)


def dry_run(ec: Any, run_dir: Path, prompts: list, stored: dict, members: list, sha: Callable[[Sample], str],
            render_judge_prompt: Callable[[str, str, str], str]) -> dict[str, Any]:
    """The dry run's counts and costs (see the module docstring); prints them and writes ``dry_run.json``.

    Args:
        ec: the validated evaluation config (``samples``, ``generation.max_new_tokens``, ``judge_cache``).
        run_dir: where ``dry_run.json`` goes.
        prompts: the question-formats (:func:`em.evaluate.questions.build_prompts`, triggers expanded).
        stored: the answers on disk by key (:meth:`em.evaluate.store.AnswerStore.load`).
        members: the judges (each member of an ensemble).
        sha: a Sample's rendered-prompt hash (an answer on disk with another prompt is generated again).
        render_judge_prompt: the judge prompt of ``(template, question, answer)``.

    Returns the dict written to ``dry_run.json``: ``answers_planned``, ``answers_to_generate``, per judge
    ``requests`` / ``cached`` / ``tokens_in_estimate`` / ``cost_usd``, and the total ``cost_usd``.
    """
    placeholder = "x" * (4 * ec.generation.max_new_tokens)  # an answer not generated yet: its upper bound
    n = ec.samples
    planned = to_generate = 0
    new_runs: list[tuple[Any, int]] = []  # (judge request of a future answer, how many answers share it)
    old: list[Any] = []  # judge requests of the answers on disk (looked up in the cache)
    for p in prompts:
        k_count = len(p.paraphrases)
        planned += n
        for k in range(min(k_count, n)):
            first = Sample(p.format, p.question_id, k, k, p.source_id, p.paraphrases[k], p.system, p.kind,
                           p.judge_prompts)
            want = sha(first)  # every sample of this paraphrase renders the same chat prompt
            count = len(range(k, n, k_count))
            missing = count
            for s in range(k, n, k_count) if stored else ():
                rec = stored.get((p.format, p.question_id, k, s))
                if rec is not None and rec.get("prompt_sha") == want:
                    missing -= 1
                    for _, template in p.judge_prompts:
                        old.append(JudgeRequest(render_judge_prompt(template, p.paraphrases[k], rec["answer"]), p.kind))
            to_generate += missing
            for _, template in p.judge_prompts:
                new_runs.append((JudgeRequest(render_judge_prompt(template, p.paraphrases[k], placeholder), p.kind),
                                 missing))
    future = RepeatedRequests(new_runs)
    print(f"{planned} answers planned ({len(prompts)} question-formats x {n} samples): "
          f"{planned - to_generate} on disk, {to_generate} to generate")
    out: dict[str, Any] = {"answers_planned": planned, "answers_to_generate": to_generate, "judges": {}}
    cache = JudgeCache(ec.judge_cache)
    try:
        for m in members:
            _, need = pending(m, old, cache)  # the answers on disk: cached or asked once per distinct prompt
            asks = [old[ix[0]] for ix in need.values()]
            est = m.estimate(RepeatedRequests([(r, 1) for r in asks] + future.runs))
            est["cached"] = len(old) - sum(len(ix) for ix in need.values())
            out["judges"][m.name] = est
    finally:
        cache.close()
    costs = [j.get("cost_usd") for j in out["judges"].values()]
    out["cost_usd"] = sum(c for c in costs if c) if costs else 0.0
    print(f"dry run: {to_generate} answers to generate; judge requests:")
    for name, est in out["judges"].items():
        cost = est.get("cost_usd")
        print(f"  {name}: {est['requests']} requests ({est['cached']} cached), ~{est.get('tokens_in_estimate', '?')} "
              f"input tokens, estimated cost " + (f"${cost:.2f}" if cost is not None else "unknown")
              + (f" ({est['note']})" if est.get("note") else ""))
    (run_dir / "dry_run.json").write_text(json.dumps(out, indent=2))
    return out
