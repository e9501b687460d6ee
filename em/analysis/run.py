"""run_analysis: ingestion -> the registered statistics -> CSVs, figures, report, summary.json (and W&B), all in
one run directory. Every output iterates the registry (:mod:`em.analysis.registry`); nothing here names a
statistic, a condition or a format.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

import pandas as pd

from em.analysis import registry, steps
from em.analysis.console import score_notes
from em.analysis.figures import make_figures
from em.analysis.groups import Cells, summary_entry
from em.analysis.ingest import load_responses
from em.analysis.inputs import find_tables
from em.analysis.judge_name import judge_info
from em.analysis.rates import rate_definition
from em.analysis.registry import Results, Statistic
from em.analysis.report import write_report
from em.config.analysis import load_analysis_config
from em.errors import DataError
from em.measurement import CODE, REFUSAL, SCORED, UNSCORED
from em.runtime import atomic_write_text
from em.tracking import init_wandb

log = logging.getLogger(__name__)


@contextmanager
def _timed(timings: dict, name: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    timings[name] = time.perf_counter() - start
    log.info("%s: %.2f s", name, timings[name])


def _check_scored(answers: pd.DataFrame, paths: list) -> None:
    status = answers["status"].astype(str).value_counts()
    if int(status.get(SCORED, 0)) == 0:
        where = paths[0] if len(paths) == 1 else f"{paths[0]} (and {len(paths) - 1} more)"
        raise DataError(
            f"{where}: none of the {len(answers)} answers has both an aligned and a coherent score "
            f"(CODE: {int(status.get(CODE, 0))}, REFUSAL: {int(status.get(REFUSAL, 0))}, "
            f"unscored: {int(status.get(UNSCORED, 0))})"
        )


def write_summary(r: Results) -> Path:
    """``<run_dir>/summary.json``: the definition, inputs, status counts, per-condition rates, timings (s)."""
    s = r.settings
    d = s.thresholds
    summary: dict[str, Any] = {
        "definition": rate_definition(d, s.denominator),
        "denominator": s.denominator,
        "ci_method": s.ci.method,
        "thresholds": d.as_dict(),
        "inputs": [str(p) for p in r.responses.sources["path"]],
        "answers": int(len(r.responses.answers)),
        "status_counts": {k: int(v) for k, v in r.responses.answers["status"].astype(str).value_counts().items()},
        "rates_by_condition": {
            row.condition: {"misaligned_rate": _f(row.misaligned_rate), "ci_low": _f(row.ci_low),
                            "ci_high": _f(row.ci_high), "design_effect": _f(row.design_effect),
                            "n_denominator": int(row.n_denominator), "n_coherent": int(row.n_coherent),
                            "n_misaligned": int(row.n_misaligned), "n_runs": int(row.n_runs),
                            **summary_entry(r.rates, row.condition, row, _f)}
            for row in r.level("condition").itertuples()},
        "judge": judge_info(r.responses.sources, r.responses.answers, s.judges.combine).label(),
        "contrast_pairs": {"condition": [list(p) for p in s.contrasts.condition],
                           "format": [list(p) for p in s.contrasts.format]},
        "bootstrap": {"n_resamples": s.bootstrap.n_resamples, "seed": s.bootstrap.seed,
                      "confidence": s.bootstrap.confidence},
        "timings_s": {k: round(v, 3) for k, v in r.timings.items()},
    }
    return atomic_write_text(Path(s.run_dir) / "summary.json", json.dumps(summary, indent=2) + "\n")


def _f(x: float):
    return None if pd.isna(x) else float(x)


def split_steps(responses) -> Optional[pd.DataFrame]:
    """Answers from several checkpoints (:mod:`em.analysis.steps`): ``responses`` keeps the final answers (the
    main tables); returns every answer (for the per-step rates), or None without a step dimension."""
    if not steps.has_steps(responses.answers):
        return None
    every = responses.answers
    split = steps.split_final(every, responses.judge_scores)
    responses.answers, responses.judge_scores = split.answers, split.judge_scores
    responses.notes.append(f"__steps__{split.n_snapshot}")  # replaced by the step note once the rows exist
    return every


def _plain(df: pd.DataFrame) -> pd.DataFrame:
    # wandb.Table cannot serialise pandas' NA or nullable dtypes; None can.
    return df.astype(object).where(df.notna(), None)


def log_to_wandb(r: Results, frames: dict[str, pd.DataFrame]) -> Optional[Path]:
    """Log every table (``tables/<name>``) and figure (``figures/<name>``) to one W&B run of job type
    "analysis", the statistics' ``wandb`` keys (and the definition and judge) in its summary; return its local
    directory (None when W&B is off)."""
    import wandb

    s = r.settings
    run = init_wandb(project=s.wandb.project, run_dir=str(s.run_dir), job_type="analysis",
                     config=dataclasses.asdict(s), group=s.wandb.group, mode=s.wandb.mode, entity=s.wandb.entity)
    if run is None:
        return None
    try:
        payload = {f"tables/{name}": wandb.Table(dataframe=_plain(df)) for name, df in frames.items()}
        payload.update({f"figures/{name}": wandb.Image(str(png)) for name, png in r.figures.items()})
        run.log(payload)
        for keys in registry.hooks(r.state["statistics"], "wandb"):
            for key, value in keys(r).items():
                run.summary[key] = value
        run.summary["definition"] = s.thresholds.describe()
        run.summary["judge"] = judge_info(r.responses.sources, r.responses.answers, s.judges.combine).label()
        local = Path(run.dir).parent
    finally:
        run.finish()
    log.info("logged the analysis to W&B (%s)", local)
    return local


def run_analysis(cfg: Any) -> Path:
    """Analyse the responses tables ``cfg`` names; return the run directory holding every output.

    Every registered statistic (:func:`em.analysis.registry.load_statistics`, in order) computes its tables;
    then each table is written as ``<table>.csv``, the figures drawn (``figures=true``), ``report.md`` /
    ``report.html`` and ``summary.json`` written, W&B logged (``logger=wandb``) and the statistics' console text
    printed.

    Args:
        cfg: a composed ``analyze`` config (:class:`em.config.analysis.AnalysisConfig`'s keys).

    Raises:
        ConfigError: a config value out of range, or ``judges.combine`` naming an absent judge.
        DataError: no input table, an unreadable one, a bad score, or no scored answer at all.
    """
    timings: dict[str, float] = {}
    start = time.perf_counter()
    s = load_analysis_config(cfg)
    run_dir = Path(s.run_dir)
    with _timed(timings, "load"):
        tables = find_tables(s.inputs, Path(s.outputs_root))
        paths = [t.path for t in tables]
        responses = load_responses(tables, condition=s.condition, model=s.model_name, judge_combine=s.judges.combine,
                                   columns=s.columns.mapping(), seed_kind=s.columns.seed_kind,
                                   exclude_special=s.thresholds.exclude_special, dedupe=s.dedupe)
        _check_scored(responses.answers, paths)
        responses.notes += score_notes(paths)
        every_answer = split_steps(responses)
        cells = Cells.from_answers(responses.answers)
    run_dir.mkdir(parents=True, exist_ok=True)
    log.info("%d answers from %d table(s) in %d cells", len(responses.answers), len(paths), cells.n_cells)
    stats: list[Statistic] = registry.load_statistics()
    r = Results(settings=s, responses=responses, cells=cells, timings=timings,
                state={"paths": paths, "every_answer": every_answer, "statistics": stats})
    registry.compute(r, stats, lambda name: _timed(timings, name))
    with _timed(timings, "tables"):
        frames = registry.write_tables(r, stats)
    if s.figures:
        with _timed(timings, "figures"):

            r.figures = make_figures(r, run_dir / "figures")
            for draw in registry.hooks(stats, "figures"):
                r.figures.update(draw(r, run_dir / "figures"))
    with _timed(timings, "report"):

        write_report(r, run_dir)
    timings["total"] = time.perf_counter() - start
    write_summary(r)
    if s.use_wandb:
        log_to_wandb(r, frames)
    for console in registry.hooks(stats, "console"):
        text = console(r)
        if text:
            print(text)
    print(f"report: {run_dir / 'report.html'}", flush=True)
    log.info("analysis written to %s (%.1f s)", run_dir, timings["total"])
    return run_dir
