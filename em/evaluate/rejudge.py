"""Re-judging answers that exist already: ``python evaluate.py answers=<run dir | responses table | other lab's
file> judge=...`` (also ``em judge answers=...``).

No model is loaded and nothing is sampled: the answers are read with the analysis stage's ingestion
(:func:`em.analysis.inputs.find_tables`, :func:`em.analysis.ingest.read_table` / ``prepare``: the same file
types, ``columns.<field>=<their column>`` map and per-input metadata as ``analyze.py``), each distinct answer
is judged by every configured judge (the judge cache as usual), and ``responses.parquet`` / ``.csv`` are
written with the input's own scores beside the new ones: one row per (answer, judge), the input's rows under
their own ``judge`` names (em's tables) or under the input's ``judge`` metadata key (other labs' files; default
``original``). ``analyze.py inputs=<run_dir>`` then shows each judge's rates and their agreement.

Judge prompt templates come from the composed question set (``questions=...``): a row's question id (format
suffix stripped) picks its entry's ``judge_prompts``; an id the set lacks gets the set's first entry's (Betley et
al.'s sets share one aligned / coherent pair). The set's name and the templates' hashes are in summary.json.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Optional

from em.analysis import ingest
from em.analysis.ingest import FORMAT_SUFFIXES
from em.analysis.inputs import find_tables
from em.errors import ConfigError, DataError, JudgeError
from em.evaluate import record, report
from em.evaluate.questions import load_question_set
from em.evaluate.report import BASE_COLUMNS, EvalResult, _statuses
from em.judge import provenance
from em.judge.base import pending, run_judge
from em.judge.cache import JudgeCache
from em.judge.factory import build_judges
from em.judge.provenance import COLUMNS as PROVENANCE
from em.judge.run import render_judge_prompt, template_sha
from em.judge.scoring import JudgeRequest
from em.measurement import SCORED, rates
from em.paths import original_path
from em.tracking import flatten, init_wandb, scrub

log = logging.getLogger("em.evaluate")

ORIGINAL = "original"  # the input's own judge, when the input names none (its ``judge`` metadata key)
# Columns that belong to one judge's verdict, not to the answer (an em table repeats the answer per judge).
JUDGE_COLUMNS = ("aligned", "coherent", "aligned_special", "coherent_special", "aligned_flag", "coherent_flag",
                 "judge", "judge_raw", "unscored_reason")


def answers_input(answers: Any) -> tuple[dict[str, Any], str]:
    """``answers=`` (a path, or a mapping with ``path`` and metadata) -> (the input for
    :func:`em.analysis.inputs.find_tables`, the name of the input's own judge).

    Raises:
        ConfigError: not a path or a mapping with ``path``.
    """
    from omegaconf import DictConfig, OmegaConf

    if isinstance(answers, DictConfig):
        answers = OmegaConf.to_container(answers, resolve=True)

    if isinstance(answers, (str, Path)):
        return {"path": original_path(str(answers))}, ORIGINAL
    if not isinstance(answers, dict) or not answers.get("path"):
        raise ConfigError(f"answers: must be a path or {{path: ..., judge: <name of its scores' judge>, condition: "
                          f"..., model: ...}}, got {answers!r}")
    meta = {k: str(v) for k, v in answers.items() if v is not None}
    meta["path"] = original_path(meta["path"])
    return meta, meta.pop("judge", ORIGINAL)


def read_answers(answers: Any, columns: dict[str, str], seed_kind: str = "sampling"):
    """Every table ``answers`` names, read and column-mapped as analyze.py reads it, in one DataFrame.

    Returns:
        (the rows with a ``judge`` column naming each row's own judge -- None where the input has no scores --,
        the input's own judge name, the files read).

    Raises:
        DataError: an unreadable input, or one without the question or answer text (one line, with the file).
        ConfigError: a bad ``answers`` value.
    """
    import pandas as pd

    meta, own = answers_input(answers)
    if not Path(meta["path"]).expanduser().exists():  # (find_tables would name analyze.py's inputs=[...] key)
        raise DataError(f"{meta['path']}: answers not found (answers=... takes a run directory or a "
                        f".parquet / .csv / .jsonl / .json file)")
    tables = find_tables([meta], Path("."))
    parts = []
    for t in tables:
        df = ingest.read_table(t.path)
        df = ingest.prepare(df, t.path, t.meta, columns, seed_kind)
        for need in ("question", "answer"):
            if need not in df:
                raise DataError(f"{t.path}: no '{need}' column: re-judging needs the question and the answer text "
                                f"(map yours with columns.{need}=<column>; columns: {', '.join(map(str, df.columns))})")
        scored = "aligned" in df or "coherent" in df
        if "judge" not in df:
            df["judge"] = own if scored else None
        df["_source"] = str(t.path)
        parts.append(df)
    return pd.concat(parts, ignore_index=True), own, [str(t.path) for t in tables]


def distinct_answers(df) -> tuple[Any, Any]:
    """(one row per distinct answer, each row's answer index).

    An em table's answer is its answer columns (:data:`em.evaluate.report.BASE_COLUMNS`, ``step``,
    ``trigger``); another lab's is every column but the verdicts (:data:`JUDGE_COLUMNS`, provenance,
    ``*_special``, wide ``aligned__<judge>``). The i-th row a judge wrote about an answer pairs with every other
    judge's i-th row about it. The rows carry the answer's columns and every other column all its judges' rows
    agree on."""
    import pandas as pd

    if {"question_id", "paraphrase", "sample", "answer"} <= set(df.columns):  # em's own table: its answer columns
        key = [c for c in (*BASE_COLUMNS, "step", "trigger", "_source") if c in df]
    else:  # another lab's file: every column that is not a verdict
        key = [c for c in df.columns if c not in JUDGE_COLUMNS and c not in PROVENANCE and "__" not in c
               and not c.startswith("judge_") and not c.endswith("_special")]
    k = df[key].astype("string").fillna("\x00<NA>")
    # the i-th row a judge wrote about an answer pairs with every other judge's i-th row about it
    occ = pd.concat([k, df["judge"].astype("string").rename("_judge")], axis=1).groupby(
        list(k.columns) + ["_judge"], sort=False, dropna=False).cumcount()
    k = k.assign(_occ=occ.to_numpy())
    ids = k.groupby(list(k.columns), sort=False, dropna=False).ngroup().to_numpy()
    first = pd.Series(range(len(df))).groupby(ids).first().to_numpy()
    # the answer's other columns too (a sample_seed, a lab's extra column), when every judge's row agrees on them
    verdict = set(JUDGE_COLUMNS) | set(PROVENANCE)
    extra = [c for c in df.columns if c not in key and c not in verdict and "__" not in c and not c.startswith("judge_")
             and not c.endswith("_special") and (df[c].astype("string").groupby(ids).nunique(dropna=False) <= 1).all()]
    return df.iloc[first][[c for c in df.columns if c in key or c in extra]].reset_index(drop=True), ids


def templates_for(answers, questions: list) -> tuple[list[tuple[tuple[tuple[str, str], ...], str]], dict[str, str]]:
    """Per answer: (its (metric, template) pairs, its kind), from the question set; and metric -> template hash
    of every template used."""
    by_id = {q.id: q for q in questions}
    if not questions:
        raise ConfigError("questions: the question set is empty; re-judging takes its judge prompts from it")
    fallback = questions[0]
    out, hashes = [], {}
    qids = answers["question_id"].astype("string") if "question_id" in answers else None
    for i in range(len(answers)):
        q = fallback
        if qids is not None and not _missing(qids.iloc[i]):
            qid = str(qids.iloc[i])
            q = by_id.get(qid) or next((by_id[qid[: -len(s)]] for s, _ in FORMAT_SUFFIXES
                                        if qid.endswith(s) and qid[: -len(s)] in by_id), fallback)
        kind = q.kind
        out.append((q.judge_prompts, kind))
        for m, tpl in q.judge_prompts:
            hashes.setdefault(f"{m}:{template_sha(tpl)}", tpl)
    return out, {k: k.split(":", 1)[1] for k in hashes}


def _missing(v: Any) -> bool:
    import pandas as pd

    return v is None or (not isinstance(v, str) and pd.isna(v))


def run_rejudge(cfg: Any, ec: Any):
    """Judge the answers ``ec.answers`` names with every configured judge; write the responses table (input's
    scores + the new ones), summary.json; return an :class:`em.evaluate.report.EvalResult` (``dry_run``: the
    estimate dict).

    Raises:
        DataError: an input without question / answer text, an unreadable input.
        ConfigError: no judge (judge=none), a new judge named like the input's own.
        JudgeError: a judge that cannot run (after the finished judgments are written).
    """
    import pandas as pd

    run_dir = Path(ec.run_dir)
    df, own, files = read_answers(ec.answers, ec.columns.mapping(), ec.columns.seed_kind)
    judges = build_judges(ec.judge)  # (validated with ec: not checked again)
    if not judges:
        raise ConfigError("judge: re-judging (answers=...) needs a judge, e.g. judge=openai; judge=none judges nothing")
    existing = set(df["judge"].dropna().astype(str))
    for j in judges:
        if j.name in existing:
            raise ConfigError(f"judge.name: the new judge {j.name!r} has the name of the input's own scores' judge; "
                              f"name one of them otherwise (judge.name=... or answers.judge=...)")
    if not ec.dry_run:
        for j in judges:
            j.check()
    questions = load_question_set(ec.questions, ec.cache_dir, progress=ec.progress)
    answers, _ = distinct_answers(df)
    per_answer, hashes = templates_for(answers, questions)
    reqs: list[tuple[int, str, Any]] = []
    for i, (pairs, kind) in enumerate(per_answer):
        q, a = answers["question"].iloc[i], answers["answer"].iloc[i]
        if _missing(q) or _missing(a):
            continue  # judged by nobody: the new judge's row says why
        for metric, tpl in pairs:
            reqs.append((i, metric, JudgeRequest(render_judge_prompt(tpl, str(q), str(a)), kind,
                                                 template_sha=template_sha(tpl))))
    print(f"re-judging {len(answers)} answers from {len(files)} file(s) ({len(df)} rows; own judge(s): "
          f"{', '.join(sorted(existing)) or 'none'}) with {', '.join(j.name for j in judges)}")
    run_dir.mkdir(parents=True, exist_ok=True)
    cache = JudgeCache(ec.judge_cache)
    if ec.dry_run:
        out: dict[str, Any] = {"answers": len(answers), "judges": {}}
        try:
            for j in judges:
                _, need = pending(j, [r for _, _, r in reqs], cache)
                est = j.estimate([reqs[ix[0]][2] for ix in need.values()])
                est["cached"] = len(reqs) - sum(len(ix) for ix in need.values())
                out["judges"][j.name] = est
        finally:
            cache.close()
        (run_dir / "dry_run.json").write_text(json.dumps(out, indent=2))
        for name, est in out["judges"].items():
            cost = est.get("cost_usd")
            print(f"  {name}: {est['requests']} requests ({est['cached']} cached), estimated cost "
                  + (f"${cost:.2f}" if cost is not None else "unknown") + (f" ({est['note']})" if est.get("note") else ""))
        return out
    judgments: dict[str, list] = {}
    stats_all: dict[str, Any] = {}
    error: Optional[JudgeError] = None

    counts = {"answers": len(answers), "judgments_planned": len(reqs) * len(judges),
              "judgments": record.judged(ec.judge_cache, judges, [r for _, _, r in reqs])}
    record.stage("judging", run_dir, **counts)
    try:
        for j in judges:
            try:
                results, stats = run_judge(j, [r for _, _, r in reqs], cache, progress=ec.progress, state_dir=run_dir)
            except JudgeError as e:
                error = e
                break
            finally:
                j.close()
            judgments[j.name] = results
            stats_all[j.name] = stats.__dict__ | {"identity": j.identity, "score_mode": provenance.mode_of(j)}
    finally:
        cache.close()
    record.stage("report", **counts)
    new_rows = []
    by_answer: dict[int, list[tuple[str, int]]] = {}
    for n, (i, metric, _) in enumerate(reqs):
        by_answer.setdefault(i, []).append((metric, n))
    judge_by_name = {j.name: j for j in judges}
    for name, results in judgments.items():
        for i in range(len(answers)):
            row = answers.iloc[i].to_dict()
            row["judge"] = name
            raw, reasons = {}, []
            items = by_answer.get(i, [])
            if not items:
                reasons.append("no question or answer text")
            for metric, n in items:
                jd = results[n]
                row[metric] = jd.score if jd.score is not None else jd.label
                row[f"{metric}_special"] = jd.special
                raw[metric] = jd.raw
                if jd.score is None and jd.label is None:
                    reasons.append(f"{metric}: {jd.reason or 'no score'}")
            row["judge_raw"] = json.dumps(raw) if raw else None
            row["unscored_reason"] = "; ".join(reasons) or None
            row.update(provenance.row_columns(judge_by_name[name], [results[n] for _, n in items]))
            new_rows.append(row)
    table = pd.concat([df, pd.DataFrame(new_rows)], ignore_index=True) if new_rows else df.copy()
    table = table.drop(columns=["_source"]) if table["_source"].nunique() < 2 else table
    metrics = [m for m in ("aligned", "coherent") if m in table] + sorted(
        {m for _, m, _ in reqs} - {"aligned", "coherent"})
    table = report.typed(table, metrics)
    summary = summarize_rejudge(table, own, files, stats_all, hashes, ec)
    report.write(run_dir, table, summary)
    if error is not None:
        raise error
    if ec.wandb.enabled:
        log_wandb(ec, cfg, table, summary)
    for name, e in summary["by_judge"].items():
        rate = e.get("misaligned_rate")
        print(f"  {name:<28} n={e['n']:<6} scored={e['n_scored']:<6} misaligned={e['n_misaligned']:<5} "
              f"rate={'n/a' if rate is None else f'{100 * rate:.2f}%'}")
    print(f"run dir: {run_dir}  (python analyze.py inputs={run_dir}: both judges' rates and their agreement)")
    failures = sum(st["failures"] for st in stats_all.values())
    return EvalResult(run_dir=run_dir, table=table, summary=summary, generated=0, failures=failures)


def summarize_rejudge(table, own: str, files: list[str], stats: dict, hashes: dict, ec: Any) -> dict[str, Any]:
    """summary.json of a re-judging run: the inputs, each judge's counts and rates under ``ec.thresholds``
    (:func:`em.measurement.rates` over its scored rows), the judge stats and the templates' hashes."""
    by_judge: dict[str, Any] = {}
    for name, part in table.groupby(table["judge"].astype(str), sort=True):
        status = _statuses(part, ec.thresholds)
        ok = status == SCORED
        e = {"n": int(len(part)), **rates(part["aligned"][ok], part["coherent"][ok], ec.thresholds)}
        by_judge[name] = e
    return {"mode": "rejudge", "inputs": files, "own_judge": own, "questions": ec.questions.name,
            "judge_templates": hashes, "judges": stats, "by_judge": by_judge,
            "thresholds": ec.thresholds.describe() if hasattr(ec.thresholds, "describe") else None,
            "run_dir": str(ec.run_dir)}


def log_wandb(ec: Any, cfg: Any, table, summary: dict[str, Any]) -> bool:
    """A W&B run of job type ``rejudge``: each judge's counts and rates (``rejudge/<judge>/<key>``), the judge
    stats and the (scrubbed) config, the responses table. Never loses the run to W&B: an error is one warning
    (the table and summary.json are on disk already); returns whether it was logged."""
    import os

    try:
        import wandb
        from omegaconf import OmegaConf

        judges = sorted(summary["by_judge"])
        run = init_wandb(project=ec.wandb.project or os.environ.get("WANDB_PROJECT") or "em", run_dir=str(ec.run_dir),
                         job_type="rejudge", group=ec.wandb.group or "rejudge", tags=[*judges, ec.questions.name],
                         name=f"rejudge-{'-'.join(judges)}"[:120], mode=ec.wandb.mode, entity=ec.wandb.entity)
        if run is None:
            return True
        run.config.update(flatten(scrub(OmegaConf.to_container(cfg, resolve=True))), allow_val_change=True)
        metrics = {f"rejudge/{j}/{k}": v for j, e in summary["by_judge"].items() for k, v in e.items()
                   if isinstance(v, (int, float)) and v is not None}
        run.log(metrics | {"rejudge/responses": wandb.Table(dataframe=table.head(ec.wandb.table_rows).astype(str))})
        run.summary.update(metrics)
        run.finish()
        return True
    except Exception as e:  # noqa: BLE001 - a logging step must not cost a finished re-judge
        log.warning("W&B logging failed (%s: %s); the results in %s are complete", type(e).__name__, e, ec.run_dir)
        print(f"warning: W&B logging failed ({type(e).__name__}: {e}); results are in {ec.run_dir}")
        return False


__all__ = ["ORIGINAL", "log_wandb", "answers_input", "distinct_answers", "read_answers", "run_rejudge", "templates_for"]
