"""run_analysis: ingestion -> statistics -> CSVs, figures, report (and W&B), all in one run directory."""

from __future__ import annotations

import json
import logging
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import pandas as pd

from em.analysis import judge_report, runs as run_stats, steps
from em.analysis.capability import write_capability
from em.analysis.console import condition_table, score_notes
from em.analysis.contrasts import contrast_table
from em.analysis.correlations import correlation_table
from em.analysis.figures import make_figures
from em.analysis.groups import ALL, Cells
from em.analysis.inputs import find_tables
from em.analysis.judge_name import judge_info
from em.analysis.judges import judge_tables
from em.analysis.loading import load_responses
from em.analysis.pairs import condition_pairs, format_pairs
from em.analysis.pooling import summary_entry
from em.analysis.rates import rate_definition, rate_table
from em.analysis.report import write_report
from em.analysis.results import Results
from em.analysis.scaling import attach_params, model_meta, scaling_table
from em.analysis.sensitivity import sensitivity_tables
from em.analysis.views import write_trigger
from em.analysis.wandb_log import log_to_wandb
from em.config.analysis import load_analysis_config
from em.errors import DataError
from em.measurement import CODE, REFUSAL, SCORED, UNSCORED
from em.runtime import atomic_write_csv, atomic_write_text

log = logging.getLogger(__name__)

RATE_COLUMNS = ["level", "model", "condition", "format", "question_id", "step", "run", "n_runs", "between_run_share", "family", "params", "n", "n_scored",
                "n_code", "n_refusal", "n_unscored", "n_coherent", "n_misaligned", "coherent_share",
                "denominator", "n_denominator", "misaligned_rate", "ci_low", "ci_high", "ci_method", "design_effect",
                "wilson_low", "wilson_high", "cp_low", "cp_high",
                "misaligned_of_coherent", "misaligned_of_coherent_low", "misaligned_of_coherent_high",
                "deff_coherent", "misaligned_of_scored", "misaligned_of_scored_low", "misaligned_of_scored_high",
                "deff_scored", "misaligned_of_all", "misaligned_of_all_low", "misaligned_of_all_high", "deff_all",
                "mean_aligned", "mean_coherent", "note", "definition"]


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


def write_tables(r: Results) -> dict[str, pd.DataFrame]:
    """Write every table as ``<run_dir>/<name>.csv``, record it in ``r.tables``; return name -> DataFrame."""
    frames = {
        "rates": r.rates[RATE_COLUMNS],
        "contrasts": r.contrasts,
        "correlations": r.correlations,
        "sensitivity": r.sensitivity,
        "sensitivity_checks": r.checks,
        "scaling": r.scaling,
        "inputs": r.responses.sources,
    }
    if r.judge_rates is not None:
        frames["judge_rates"] = r.judge_rates
        frames["judge_agreement"] = r.agreement
    descriptions = {
        "rates": "misaligned rate with CIs for every group (levels: model×condition×format×question up to condition); "
                 "misaligned among coherent, scored and all answers side by side",
        "contrasts": "condition and format contrasts: difference (Newcombe CI), ratio, Fisher p, Bonferroni/Holm "
                     "over the tested family, power",
        "correlations": "coherence–alignment correlations at answer and group level",
        "sensitivity": "the rate table at every point of the threshold grid",
        "sensitivity_checks": "ordering checks (e.g. base < educational < insecure) at every grid point",
        "scaling": "rank correlation of rate with parameter count, per family and condition",
        "inputs": "the responses tables read, with answer and exclusion counts",
        "judge_rates": "per-judge rates",
        "judge_agreement": "Krippendorff's α on scores and Cohen's κ on the misaligned flag",
    }
    for name, df in frames.items():
        path = Path(r.settings.run_dir) / f"{name}.csv"
        atomic_write_csv(path, df)
        r.tables[descriptions[name]] = path
    return frames


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


def add_runs(rr, cells: Cells, answers: pd.DataFrame, s) -> Optional[pd.DataFrame]:
    """Runs as clusters (:mod:`em.analysis.runs`, ``contrasts.runs=two_way``): intervals of groups pooling >= 2
    runs widened for the between-run variance, and the per-run rows (level ``model×condition×run``) appended
    to the rate table; returns those rows (None with one run per model × condition, or ``runs=ignore``)."""
    rr.table["run"] = ALL
    if s.contrasts.runs == "ignore":
        rr.table["n_runs"], rr.table["between_run_share"] = run_stats.runs_per_cell(answers)["n_runs"].max(), pd.NA
        return None
    run_stats.apply_runs(rr, cells, answers, s.thresholds, s.bootstrap.confidence)
    if not (run_stats.runs_per_cell(answers)["n_runs"] >= 2).any():
        return None
    rows = run_stats.run_level(answers, s.thresholds, confidence=s.bootstrap.confidence, min_group_n=s.min_group_n,
                               denominator=s.denominator)
    start = len(rr.table)
    rr.table = pd.concat([rr.table, rows[[c for c in rr.table.columns if c in rows]]], ignore_index=True)
    rr.row_of[run_stats.RUN_LEVEL] = np.arange(start, len(rr.table))
    return rows


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


def add_steps(rr, every: Optional[pd.DataFrame], s, notes: list) -> list:
    """The per-step rows (level ``model×condition×step``) appended to the rate table; returns the (last, first)
    checkpoint pairs to contrast: (level, row a, row b, scope, label a, label b)."""
    rr.table["step"] = ALL
    if every is None:
        return []

    rows = steps.step_level(every, s.thresholds, confidence=s.bootstrap.confidence, min_group_n=s.min_group_n,
                            denominator=s.denominator)
    start = len(rr.table)
    rr.table = pd.concat([rr.table, rows[[c for c in rows.columns if c in rr.table.columns or c == "step"]]],
                         ignore_index=True)
    rr.table["run"] = rr.table["run"].fillna(ALL)
    rr.row_of[steps.STEP_LEVEL] = np.arange(start, len(rr.table))
    for i, n in enumerate(notes):
        if n.startswith("__steps__"):
            notes[i] = steps.step_note(int(n[len("__steps__"):]), rows)
    return [(steps.STEP_LEVEL, last, first, scope, f"step {rows['step'].iloc[last]}",
             f"step {rows['step'].iloc[first]}") for last, first, scope in steps.first_last(rows)]


def resolve_pairs(s, rates: pd.DataFrame) -> None:
    """``contrasts.condition`` / ``contrasts.format`` null: the pairs from the data (:mod:`em.analysis.pairs`),
    written back into the settings so the report, summary.json and W&B quote the pairs compared."""
    conds = rates.loc[rates["level"] == "condition", "condition"].astype(str).tolist()
    fmts = rates.loc[rates["level"] == "condition×format", "format"].astype(str).unique().tolist()
    s.contrasts.condition = condition_pairs(conds, s.contrasts.condition, s.contrasts.reference, s.ordering.condition)
    s.contrasts.format = format_pairs(fmts, s.contrasts.format, s.contrasts.format_reference, s.ordering.format)


def run_analysis(cfg: Any) -> Path:
    """Analyse the responses tables ``cfg`` names; return the run directory holding every output.

    Args:
        cfg: a composed ``analyze`` config (:class:`em.config.analysis.AnalysisConfig`'s keys).

    Raises:
        ConfigError: a config value out of range, or ``judges.combine`` naming an absent judge.
        DataError: no input table, an unreadable one, a bad score, or no scored answer at all.
    """
    timings: dict[str, float] = {}
    start = time.perf_counter()
    s = load_analysis_config(cfg)
    d = s.thresholds
    run_dir = Path(s.run_dir)
    with _timed(timings, "load"):
        tables = find_tables(s.inputs, Path(s.outputs_root))
        paths = [t.path for t in tables]
        responses = load_responses(tables, condition=s.condition, model=s.model_name, judge_combine=s.judges.combine,
                                   columns=s.columns.mapping(), seed_kind=s.columns.seed_kind,
                                   exclude_special=s.thresholds.exclude_special, dedupe=s.dedupe)
        _check_scored(responses.answers, paths)
        responses.notes += score_notes(paths)
        all_answers = split_steps(responses)
        cells = Cells.from_answers(responses.answers)
    run_dir.mkdir(parents=True, exist_ok=True)
    log.info("%d answers from %d table(s) in %d cells", len(responses.answers), len(paths), cells.n_cells)
    definition = rate_definition(d, s.denominator)
    with _timed(timings, "rates"):
        rr = rate_table(cells, d, confidence=s.bootstrap.confidence, min_group_n=s.min_group_n,
                        denominator=s.denominator, method=s.ci.method, n_resamples=s.bootstrap.n_resamples,
                        seed=s.bootstrap.seed)
        run_rows = add_runs(rr, cells, responses.answers, s)
        step_pairs = add_steps(rr, all_answers, s, responses.notes)
        rr.table = attach_params(rr.table, model_meta(s.model_configs))
    with _timed(timings, "contrasts + power"):
        resolve_pairs(s, rr.table)
        contrasts = contrast_table(rr, condition_pairs=s.contrasts.condition, format_pairs=s.contrasts.format,
                                   alpha=s.alpha, power=s.power, min_group_n=s.min_group_n, definition=definition,
                                   run_rows=run_rows, step_pairs=step_pairs)
    with _timed(timings, "correlations + scaling"):
        correlations = correlation_table(responses.answers, rr.table, s.bootstrap.confidence)
        scaling, unknown = scaling_table(rr.table, definition)
    with _timed(timings, "sensitivity"):
        sensitivity, checks = sensitivity_tables(cells, d, coherent_grid=s.sensitivity.coherent,
                                                 aligned_grid=s.sensitivity.aligned,
                                                 confidence=s.bootstrap.confidence,
                                                 condition_order=s.ordering.condition,
                                                 format_order=s.ordering.format, denominator=s.denominator)
    with _timed(timings, "judges"):
        judge_rates, agreement = judge_tables(responses.judge_scores, responses.answers, d,
                                              confidence=s.bootstrap.confidence, max_units=s.judges.alpha_max_units,
                                              seed=s.judges.seed)

        extras = judge_report.judge_extras(responses.judge_scores, responses.answers, paths, d,
                                           reference=s.judges.reference, n_resamples=s.bootstrap.n_resamples,
                                           seed=s.judges.seed, confidence=s.bootstrap.confidence)
    r = Results(settings=s, responses=responses, cells=cells, rates=rr.table, contrasts=contrasts,
                correlations=correlations, scaling=scaling, unknown_models=unknown, sensitivity=sensitivity,
                checks=checks, judge_rates=judge_rates, agreement=agreement, timings=timings, judge_extras=extras)
    with _timed(timings, "tables"):
        frames = write_tables(r)
    if s.figures:
        with _timed(timings, "figures"):

            r.figures = make_figures(r, run_dir / "figures")
    with _timed(timings, "judge extras"):
        jt, jf = judge_report.write(extras, responses.judge_scores, d, run_dir, s.figures)
        r.tables.update(jt)
        r.figures.update(jf)
    with _timed(timings, "capability"):  # capability.json beside a table: capability.csv + its figure

        judge = judge_info(responses.sources, responses.answers, s.judges.combine)
        cap = write_capability(paths, rr.table, run_dir, s.figures, judge.label())
        if "figure" in cap:
            r.figures["capability_vs_misalignment"] = cap["figure"]
    with _timed(timings, "trigger"):  # answers with the trigger on and off: trigger_contrast.csv + figure

        write_trigger(r)
    with _timed(timings, "report"):

        write_report(r, run_dir)
    timings["total"] = time.perf_counter() - start
    write_summary(r)
    if s.use_wandb:

        log_to_wandb(r, frames)
    table = condition_table(r.rates, "\n".join(f"note: {n}" for n in responses.notes), s.contrasts.reference,
                            judge.label())
    if table:
        print(table)
    print(f"report: {run_dir / 'report.html'}", flush=True)
    log.info("analysis written to %s (%.1f s)", run_dir, timings["total"])
    return run_dir
