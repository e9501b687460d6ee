"""Who judged, and how: the provenance every judgment carries.

Each judgment stores (inside the cached JSON value, :attr:`em.judge.scoring.Judgment.provenance`) the judge's
model id, the endpoint's host (never credentials: :func:`em.tracking.redact_url`, then the host only), the
score mode (``reference`` logprob-weighted, ``renormalized`` local, ``sampled`` k replies), the hash of the judge
prompt template and the UTC date it was judged. The responses table carries the same as columns
(:data:`COLUMNS`), one value per row (a row's metrics joined where they differ), so a table read back anywhere
says which judge and mode made each score.
"""

from __future__ import annotations

import datetime as _dt
from typing import Any, Iterable, Optional
from urllib.parse import urlsplit

from em.judge.scoring import Judgment, JudgeRequest

# the responses table's provenance columns (contract with f21's judge naming: it reads judge_score_mode)
COLUMNS = ("judge_model", "judge_host", "judge_score_mode", "judge_template_sha", "judged_at")


def mode_of(judge: Any) -> str:
    """The judge's score mode: ``reference`` (logprob-weighted, Betley et al.), ``renormalized`` or ``sampled``."""
    return str(getattr(judge, "score_mode", None) or "reference")


def host_of(url: Optional[str]) -> Optional[str]:
    """``host[:port]`` of an endpoint URL, without user, password, path or query (None for None)."""
    if not url:
        return None
    u = urlsplit(str(url))
    if not u.hostname:
        return None
    return u.hostname + (f":{u.port}" if u.port else "")


def judge_provenance(judge: Any) -> dict[str, Any]:
    """The judge's part of a judgment's provenance: ``judge`` (its name), ``model`` (the API model id, or a local
    judge's model name / source), ``host`` (None for an in-process judge) and ``score_mode``."""
    model = getattr(judge, "model", None)
    if not isinstance(model, str):  # a local judge: its ModelConfig
        cfg = getattr(judge, "model_cfg", None)
        model = (getattr(cfg, "hub_id", None) or getattr(cfg, "path", None) or getattr(cfg, "name", None)) if cfg else None
    return {"judge": judge.name, "model": model, "host": host_of(getattr(judge, "base_url", None)),
            "score_mode": mode_of(judge)}


def stamp(judgment: Judgment, judge: Any, req: JudgeRequest, when: Optional[str] = None) -> Judgment:
    """``judgment`` with its provenance set (kept as it is when it has one: a cached judgment keeps its date)."""
    if judgment.provenance:
        return judgment
    judgment.provenance = judge_provenance(judge) | {
        "template_sha": req.template_sha,
        "date": when or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    return judgment


def row_columns(judge: Optional[Any], judgments: Iterable[Judgment]) -> dict[str, Any]:
    """The provenance columns (:data:`COLUMNS`) of one responses-table row from its metrics' judgments: the
    judge's model, host and mode; the distinct template hashes and the earliest date among the judgments
    (``;``-joined hashes in metric order)."""
    judgments = list(judgments)
    if judge is not None:
        base = judge_provenance(judge)
    else:  # from the judgments themselves (the evaluation's table builder holds names, not judges)
        base = next((j.provenance for j in judgments if j.provenance), None) or {}
    shas, dates = [], []
    for j in judgments:
        p = j.provenance or {}
        if p.get("template_sha") and p["template_sha"] not in shas:
            shas.append(p["template_sha"])
        if p.get("date"):
            dates.append(p["date"])
    return {"judge_model": base.get("model"), "judge_host": base.get("host"), "judge_score_mode": base.get("score_mode"),
            "judge_template_sha": ";".join(shas) or None, "judged_at": min(dates) if dates else None}


__all__ = ["COLUMNS", "host_of", "judge_provenance", "mode_of", "row_columns", "stamp"]
