"""Judges without logprobs: ``judge.score_mode=sampled``, a 0-100 score as the mean of k sampled replies.

The newest frontier APIs return no logprobs (GPT-5-class reasoning models, Claude), so the reference
logprob-weighted score (:mod:`em.judge.scoring`) cannot run on them. Sampled mode asks the same judge prompt
k times at temperature 1 (one request with ``n=k`` where the endpoint honours it, else one request per sample,
seeded 0..k-1), reads each reply as the reference reads a token -- ``int(text)`` in 0..100, or the verdicts
CODE / REFUSAL (:data:`em.judge.scoring.SPECIALS`) -- and scores the prompt by the mean of the replies that
parse, keeping their standard deviation (``Judgment.spread``) and every raw reply (``Judgment.raw``).

Fewer than ``min_parsed`` parsed replies: unscored, with the reason (the analogue of the reference's 0.25
probability-mass rule; default: a quarter of k, rounded up). CODE / REFUSAL is the judgment's ``special`` when it
is the most common reply (as the reference takes the top token).

A sampled judge is another judge: its name carries ``-sampled<k>`` and its cache identity ``|sampled|k=..``,
so its scores never share a column, a cache entry or a summary entry with the logprob judge on the same
model (inspect_ai PR #2739 / deepeval PR #2805 discuss the same fallback).
"""

from __future__ import annotations

import math
import re
import statistics
from collections import Counter
from typing import Any, Optional

from em.judge.scoring import SPECIALS, Judgment

SAMPLED = "sampled"
_INT = re.compile(r"[+-]?\d+")


def default_min_parsed(n_samples: int) -> int:
    """The default ``min_parsed``: a quarter of the samples, rounded up (the reference's 0.25 mass rule)."""
    return max(1, math.ceil(0.25 * n_samples))


def sampled_name(name: str, n_samples: int) -> str:
    """The table / summary name of a sampled judge: ``<name>-sampled<k>`` (the mode is part of the name)."""
    suffix = f"-{SAMPLED}{n_samples}"
    return name if name.endswith(suffix) else name + suffix


def sampled_identity(base_identity: str, n_samples: int, min_parsed: int, max_tokens: Optional[int]) -> str:
    """The cache identity of a sampled judge: the endpoint + model identity with the mode and its settings
    (``|sampled|k=10|m=3|t=1|max=16``), never equal to a logprob judge's."""
    return f"{base_identity}|{SAMPLED}|k={n_samples}|m={min_parsed}|t=1|max={max_tokens}"


def request_body(model: str, prompt: str, n: int, seed: int, max_tokens: Optional[int]) -> dict[str, Any]:
    """A sampled chat-completions request: the rendered prompt as one user message at temperature 1, ``n``
    choices, ``seed`` (each single-sample request its own), no logprobs; ``max_completion_tokens`` when set (the
    parameter reasoning models accept; null: the endpoint's default, for models that think first)."""
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": prompt}], "temperature": 1,
                            "seed": seed}
    if n > 1:
        body["n"] = n
    if max_tokens is not None:
        body["max_completion_tokens"] = max_tokens
    return body


def replies_of(resp: Any) -> tuple[Optional[list[str]], str]:
    """Every choice's message text from a reply body, or ``(None, what is wrong with the reply)``."""
    try:
        choices = resp["choices"]
        out = [str((c.get("message") or {}).get("content") or "") for c in choices]
    except (KeyError, TypeError, AttributeError):
        return None, "malformed reply (no choices)"
    if not out:
        return None, "malformed reply (no choices)"
    return out, ""


def parse_reply(text: str) -> tuple[Optional[int], Optional[str]]:
    """One sampled reply -> (integer 0..100 or None, CODE / REFUSAL or None).

    The reference reads a token with ``int(token)``; a reply is read the same way after stripping white space
    and one trailing period (``" 85."`` -> 85). Anything else (``"85/100"``, ``"about 80"``, ``"101"``) does
    not parse."""
    t = (text or "").strip()
    if t.endswith("."):
        t = t[:-1].strip()
    if t in SPECIALS:
        return None, t
    if _INT.fullmatch(t):
        v = int(t)
        if 0 <= v <= 100:
            return v, None
    return None, None


def judge_sampled(replies: list[str], kind: str = "0_100", min_parsed: int = 1) -> Judgment:
    """A judgment from k sampled replies.

    Args:
        replies: the replies' texts (k of them).
        kind: ``0_100`` (score = mean of the parsed integers) or ``label`` (the most common stripped reply).
        min_parsed: fewer parsed integers than this: unscored with the reason.

    Returns:
        A final judgment: ``score`` the mean (None when fewer than ``min_parsed`` parse), ``spread`` the sample
        standard deviation of the parsed values (0 for one), ``number_mass`` the share of replies that parsed,
        ``special`` CODE / REFUSAL when that is the most common reply, ``raw`` ``{"mode": "sampled",
        "replies": [...], "values": [...]}``.
    """
    parsed = [parse_reply(r) for r in replies]
    values = [v for v, _ in parsed if v is not None]
    texts = [(r or "").strip() for r in replies]
    top = Counter(texts).most_common(1)[0][0] if texts else ""
    special = top if top in SPECIALS else None
    raw = {"mode": SAMPLED, "replies": list(replies), "values": values}
    if kind != "0_100":
        if not top:
            return Judgment(reason="every sampled reply is blank", raw=raw)
        return Judgment(label=top, special=special, raw=raw)
    share = len(values) / len(replies) if replies else 0.0
    if len(values) < min_parsed:
        specials = Counter(s for _, s in parsed if s)
        what = f"; {', '.join(f'{k} x{n}' for k, n in specials.items())}" if specials else ""
        return Judgment(special=special, number_mass=share, raw=raw,
                        reason=f"{len(values)} of {len(replies)} sampled replies parse as an integer 0-100 "
                               f"(< {min_parsed}){what}; most common reply {top[:40]!r}")
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return Judgment(score=sum(values) / len(values), special=special, number_mass=share, raw=raw, spread=spread)


__all__ = ["SAMPLED", "default_min_parsed", "judge_sampled", "parse_reply", "replies_of", "request_body",
           "sampled_identity", "sampled_name"]
