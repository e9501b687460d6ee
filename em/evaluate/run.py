"""The evaluation stage: `run_evaluation(cfg)` is what evaluate.py calls.

questions x formats x samples -> answers (generated once, appended to run_dir/answers.jsonl) -> judge
prompts -> judgments (cached on disk by judge identity + prompt) -> responses.parquet / .csv (one row per
answer and judge) + summary.json (+ W&B). Every check that can fail without a model (config values, question
ids, formats, the judge's API key, the adapter's base model) runs before generation starts.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf

from em.adapters.resolve import KEYWORDS, resolve_adapter
from em.config.common import validate
from em.config.evaluate import EvalConfig
from em.dynamics.mitigations import prefix_system
from em.errors import ConfigError
from em.evaluate import prompts as prompt_store, record, report, triggers
from em.evaluate.dry_run import dry_run
from em.evaluate.generation import Sample, make_generator, plan, prompt_sha, render
from em.evaluate.questions import build_prompts, load_question_set
from em.evaluate.rejudge import run_rejudge
from em.evaluate.report import EvalResult
from em.evaluate.store import AnswerStore
from em.jobs.locks import DirLock
from em.jobs.records import write_config_records
from em.judge.base import failure_line
from em.judge.cache import check_cache
from em.judge.factory import build_judges
from em.judge.run import judge_all, judge_requests, render_judge_prompt
from em.paths import absolutize_eval
from em.progress import ProgressLog
from em.train import models

log = logging.getLogger("em.evaluate")


def run_evaluation(cfg: DictConfig | EvalConfig, intervention: Optional[Any] = None) -> Optional[EvalResult]:
    """The evaluation stage for one :class:`~em.config.evaluate.EvalConfig`: evaluate.py's composed root
    config (validated here, once), or one target of a train.py job, validated by :func:`em.jobs.targets.eval_config`
    and used as it is.

    Generates the answers not on disk yet (``samples`` per question and format), judges them (cache
    first), writes ``responses.parquet`` / ``.csv`` and ``summary.json`` (rates by ``cfg.thresholds``)
    into ``run_dir`` and logs the W&B eval run. With ``dry_run`` nothing is generated or asked: returns
    the request / cost estimate (a dict) instead.

    Raises:
        ConfigError: a bad value, unknown question id or format (before any model is loaded).
        JudgeError: a judge that cannot run (no API key: before generation; every request refused:
            after the table of what finished is written).
        ModelLoadError: the model or adapter cannot be loaded.
        DirectoryLocked: another live process writes ``run_dir`` (:mod:`em.jobs.locks`).
    """
    if isinstance(cfg, EvalConfig):  # a train.py job's target: validated by its entry (em.jobs.targets.eval_config)
        ec, cfg = cfg, OmegaConf.structured(cfg)  # (the node is the run's config record and W&B config only)
    else:
        ec = validate(cfg)  # evaluate.py's entry: every config check, before any model is touched

    absolutize_eval(ec, KEYWORDS)  # hydra.job.chdir=true: user paths still mean the launch directory
    if intervention is not None and ec.generation.backend != "hf":

        raise ConfigError(f"generation.backend={ec.generation.backend}: steering / ablation ({intervention.name}) "
                          "runs on the hf backend only; use generation=hf")
    with DirLock(ec.run_dir, "evaluation"):  # one writer per run directory (a second run: exit 2)
        if ec.answers is not None:  # re-judge answers that exist: no model, no sampling

            return run_rejudge(cfg, ec)
        return _run_locked(cfg, ec, intervention)


def _answers_on_disk(path: Path, shas: dict) -> int:
    """How many of this run's answers ``answers.jsonl`` holds now, read from the file (complete lines whose key
    and prompt hash are this run's): a signal can land between a batch's append and the in-memory index, and the
    interrupted record must count what a resume will find."""
    import json

    keys = set()
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if not line.endswith("\n"):
                    break  # a torn last line: the resume trims it
                try:
                    r = json.loads(line)
                    key = tuple(r["_key"])
                except (ValueError, KeyError, TypeError):
                    continue  # the identity header line
                if shas.get(key) == r.get("prompt_sha"):
                    keys.add(key)
    except FileNotFoundError:
        return 0
    return len(keys)


def _run_locked(cfg: DictConfig, ec: EvalConfig, intervention: Optional[Any] = None) -> Optional[EvalResult]:
    """:func:`run_evaluation` once the run directory's lock is held."""
    if ec.questions.max_new_tokens and ec.questions.max_new_tokens < ec.generation.max_new_tokens:
        log.info("questions=%s caps answers at %d new tokens", ec.questions.name, ec.questions.max_new_tokens)
        ec.generation.max_new_tokens = ec.questions.max_new_tokens
    run_dir = Path(ec.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)

    # 1. questions x formats -> samples (unknown ids / missing variants fail here)
    questions = load_question_set(ec.questions, ec.cache_dir, progress=ec.progress)
    prompts = triggers.expand(build_prompts(questions, ec.format, ec.questions.ids), ec.trigger)  # (+trigger)
    if getattr(ec, "system_prefix", None):  # inoculation prompting's evaluation switch (em.dynamics.mitigations)

        prompts = [prefix_system(p, ec.system_prefix) for p in prompts]
    # a dry run counts without building every answer (em.evaluate.dry_run: memory bounded for any samples)
    samples = [] if ec.dry_run else plan(prompts, ec.samples)
    by_key = {s.key: s for s in samples}

    # 2. the judges (an ensemble: each member): built and checked (API key) before any generation

    judges = build_judges(ec.judge)  # (validated with ec: not checked again)
    if not ec.dry_run:
        for j in judges:
            j.check()
    if judges:  # a damaged cache is moved aside and rebuilt now, not after hours of sampling

        check_cache(ec.judge_cache)

    # 3. model, adapter, answers already on disk

    source = models.model_dir(ec.model, ec.cache_dir)
    adapter = resolve_adapter(ec.adapter, ec.train_dir, ec.model, source)
    condition = intervention.name if intervention is not None else ec.condition or adapter.condition
    tokenizer = models.load_tokenizer(ec.model, ec.cache_dir, source)
    identity = {
        "model": ec.model.name, "model_source": ec.model.path or ec.model.hub_id or Path(str(source)).name, "quantization": ec.quantization.name,
        "adapter": str(adapter.adapter_dir) if adapter.adapter_dir else None, "seed": ec.seed,
        "temperature": ec.generation.temperature, "top_p": ec.generation.top_p,
        "max_new_tokens": ec.generation.max_new_tokens,
    }
    if intervention is not None:  # answers of another steering / ablation are never reused
        identity["intervention"] = intervention.spec
    store = AnswerStore(run_dir / "answers.jsonl", identity)
    stored = store.load()  # refuses answers of another identity: the run is accepted after this
    write_config_records(run_dir, cfg)
    if ec.dry_run:

        return dry_run(ec, run_dir, prompts, stored, judges, lambda s: prompt_sha(render(tokenizer, ec.model, s)),
                       render_judge_prompt)
    texts = {s.key: render(tokenizer, ec.model, s) for s in samples}  # what each model receives (prompts.parquet)
    shas = {k: prompt_sha(t) for k, t in texts.items()}
    rendered = {shas[k]: t for k, t in texts.items()}
    todo = [s for s in samples if s.key not in stored or stored[s.key].get("prompt_sha") != shas[s.key]]
    # standalone evaluate.py: <run_dir>/em_job.json (em.evaluate.record) says the stage and what is done
    record.stage("sampling", run_dir, answers_planned=len(samples), answers=lambda: _answers_on_disk(store.path, shas))
    print(f"{len(samples)} answers planned ({len(prompts)} question-formats x {ec.samples} samples): "
          f"{len(samples) - len(todo)} on disk, {len(todo)} to generate")

    if todo and not ec.dry_run:  # new answers need the judge: a server that does not answer fails now
        for j in judges:
            j.check_reachable()

    # 4. generate what is missing, appending every finished batch
    generated = 0
    if todo:
        gen = make_generator(ec.generation.backend, ec.model, ec.quantization, ec.cache_dir, ec.generation, ec.seed,
                             adapter_dir=str(adapter.adapter_dir) if adapter.adapter_dir else None, source=source,
                             tokenizer=tokenizer, **({"intervention": intervention} if intervention is not None else {}))
        t0 = time.perf_counter()
        gen.load()  # before the progress clock starts: the rate and ETA are the sampling's own

        lines = ProgressLog(f"generate ({ec.generation.backend})", len(todo), log)  # the log file gets them too

        def on_batch(batch):
            recs = [_record(s, out, shas[s.key]) for s, out in batch]
            store.append(recs)
            for r in recs:
                stored[tuple(r["_key"])] = r
            lines.update(len(batch), tokens=sum(int(out.get("n_tokens") or 0) for _, out in batch))

        generated = gen.generate(todo, on_batch, progress=ec.progress)
        gen_seconds = time.perf_counter() - t0
        log.info("generated %d answers in %.1f s", generated, gen_seconds)
        del gen
    records = [stored[s.key] for s in samples]

    # 5. judge every (answer, metric) with every judge in turn, cache first; a batch judge keeps its
    # batches under run_dir (a restarted run re-attaches to them)
    reqs = judge_requests(records, by_key) if judges else []
    if judges:
        record.stage("judging", answers=len(records), judgments_planned=len(reqs) * len(judges),
                     judgments=record.judged(ec.judge_cache, judges, [r for _, _, r in reqs]))
    judgments, judge_stats, error = judge_all(judges, [r for _, _, r in reqs], ec.judge_cache, ec.progress, run_dir)

    # 6. the table, the summary, W&B (also after a fatal judge error: every finished row is kept)
    record.stage("report", answers=len(records), judgments_planned=len(reqs) * len(judges),
                 judgments=record.judged(ec.judge_cache, judges, [r for _, _, r in reqs]))
    meta = {"model": ec.model.name, "adapter": str(adapter.adapter_dir) if adapter.adapter_dir else None,
            "condition": condition, "seed": ec.seed}
    if getattr(ec, "step", None) is not None:  # a step snapshot (CONTRACTS.md 2): an integer step column
        meta["step"] = int(ec.step)
    table = report.build_table(records, by_key, reqs, judgments, meta)

    table = prompt_store.join_prompts(table, records, rendered, ec.model.default_system_prompt)
    prompt_store.write_prompts(run_dir, records, rendered)
    summary = report.summarize(table, meta | prompt_store.meta(tokenizer, ec.model) | {
                                              "questions": ec.questions.name, "samples": ec.samples,
                                              "generated_this_run": generated, "judges": judge_stats,
                                              "sampling": next((r["sampling"] for r in records if r.get("sampling")), None),
                                              "run_dir": str(run_dir)}, thresholds=ec.thresholds)
    report.write(run_dir, triggers.split(table, ec.trigger), summary)
    if ec.trigger.text:  # trigger on vs off, per condition and format
        triggers.write_contrast(run_dir, triggers.split(table, ec.trigger), ec.thresholds)
    if error is not None:
        raise error
    if ec.wandb.enabled:
        report.log_wandb(ec, cfg, adapter, table, summary)
    report.print_summary(summary, run_dir)
    failures = sum(st["failures"] for st in judge_stats.values())
    if failures:  # the table is written; what failed is asked again by the next run (evaluate.py exits 1)

        for name, st in judge_stats.items():
            if st["failures"]:
                print(f"error: {failure_line(name, st, len(reqs))}", file=sys.stderr)
    return EvalResult(run_dir=run_dir, table=table, summary=summary, generated=generated, failures=failures)


def _record(s: Sample, out: dict[str, Any], sha: str) -> dict[str, Any]:
    return {"_key": list(s.key), "format": s.format, "question_id": s.question_id, "paraphrase": s.paraphrase,
            "sample": s.sample, "source_id": s.source_id, "question": s.question, "system": s.system,
            "prompt_sha": sha, **out}


__all__ = ["EvalResult", "run_evaluation"]
