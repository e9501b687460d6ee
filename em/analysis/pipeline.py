"""run_analysis: ingestion -> statistics -> CSVs, figures, report (and W&B), all in one run directory."""

from __future__ import annotations

import json
import logging
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pandas as pd

from em.analysis.contrasts import contrast_table
from em.analysis.correlations import correlation_table
from em.analysis.groups import Cells
from em.analysis.io import find_tables, load_responses
from em.analysis.judges import judge_tables
from em.analysis.rates import rate_table
from em.analysis.results import Results
from em.analysis.scaling import attach_params, model_meta, scaling_table
from em.analysis.sensitivity import sensitivity_tables
from em.analysis.settings import load_settings
from em.errors import DataError

log = logging.getLogger(__name__)

RATE_COLUMNS = ["level", "model", "condition", "format", "question_id", "family", "params", "n", "n_scored",
                "n_code", "n_refusal", "n_unscored", "n_coherent", "n_misaligned", "coherent_share",
                "misaligned_rate", "ci_low", "ci_high", "ci_method", "wilson_low", "wilson_high", "mean_aligned",
                "mean_coherent", "note", "definition"]


@contextmanager
def _timed(timings: dict, name: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    timings[name] = time.perf_counter() - start
    log.info("%s: %.2f s", name, timings[name])


def _check_scored(answers: pd.DataFrame, paths: list[Path]) -> None:
    status = answers["status"].astype(str).value_counts()
    if int(status.get("scored", 0)) == 0:
        where = paths[0] if len(paths) == 1 else f"{paths[0]} (and {len(paths) - 1} more)"
        raise DataError(
            f"{where}: none of the {len(answers)} answers has both an aligned and a coherent score "
            f"(CODE: {int(status.get('CODE', 0))}, REFUSAL: {int(status.get('REFUSAL', 0))}, "
            f"unscored: {int(status.get('unscored', 0))})"
        )


def write_tables(r: Results) -> dict[str, pd.DataFrame]:
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
        "rates": "misaligned rate with CIs for every group (levels: model×condition×format×question up to condition)",
        "contrasts": "condition and format contrasts: difference, ratio, Fisher p, Bonferroni/Holm, power",
        "correlations": "coherence–alignment correlations at answer and group level",
        "sensitivity": "the rate table at every point of the threshold grid",
        "sensitivity_checks": "ordering checks (e.g. base < educational < insecure) at every grid point",
        "scaling": "rank correlation of rate with parameter count, per family and condition",
        "inputs": "the responses tables read, with answer and exclusion counts",
        "judge_rates": "per-judge rates",
        "judge_agreement": "Krippendorff's α on scores and Cohen's κ on the misaligned flag",
    }
    for name, df in frames.items():
        path = r.settings.run_dir / f"{name}.csv"
        df.to_csv(path, index=False)
        r.tables[descriptions[name]] = path
    return frames


def write_summary(r: Results) -> Path:
    s = r.settings
    d = s.definition
    summary: dict[str, Any] = {
        "definition": d.describe(),
        "thresholds": {"coherent": d.coherent, "coherent_inclusive": d.coherent_inclusive, "aligned": d.aligned,
                       "aligned_inclusive": d.aligned_inclusive},
        "inputs": [str(p) for p in r.responses.sources["path"]],
        "answers": int(len(r.responses.answers)),
        "status_counts": {k: int(v) for k, v in r.responses.answers["status"].astype(str).value_counts().items()},
        "rates_by_condition": {
            row.condition: {"misaligned_rate": _f(row.misaligned_rate), "ci_low": _f(row.ci_low),
                            "ci_high": _f(row.ci_high), "n_coherent": int(row.n_coherent),
                            "n_misaligned": int(row.n_misaligned)}
            for row in r.level("condition").itertuples()},
        "bootstrap": {"n_resamples": s.n_resamples, "seed": s.bootstrap_seed, "confidence": s.confidence},
        "timings_s": {k: round(v, 3) for k, v in r.timings.items()},
    }
    path = s.run_dir / "summary.json"
    path.write_text(json.dumps(summary, indent=2) + "\n")
    return path


def _f(x: float):
    return None if pd.isna(x) else float(x)


def run_analysis(cfg: Any) -> Path:
    timings: dict[str, float] = {}
    start = time.perf_counter()
    s = load_settings(cfg)
    with _timed(timings, "load"):
        paths = find_tables(s.inputs, s.outputs_root)
        responses = load_responses(paths, condition=s.condition, model=s.model, judge_combine=s.judge_combine)
        _check_scored(responses.answers, paths)
        cells = Cells.from_answers(responses.answers)
    s.run_dir.mkdir(parents=True, exist_ok=True)
    log.info("%d answers from %d table(s) in %d cells", len(responses.answers), len(paths), cells.n_cells)
    with _timed(timings, "rates + bootstrap"):
        rr = rate_table(cells, s.definition, n_resamples=s.n_resamples, seed=s.bootstrap_seed,
                        confidence=s.confidence, min_group_n=s.min_group_n)
        rr.table = attach_params(rr.table, model_meta(s.model_configs))
    with _timed(timings, "contrasts + power"):
        contrasts = contrast_table(rr, condition_pairs=s.condition_pairs, format_pairs=s.format_pairs, alpha=s.alpha,
                                   power=s.power, min_group_n=s.min_group_n, confidence=s.confidence,
                                   definition=s.definition.describe())
    with _timed(timings, "correlations + scaling"):
        correlations = correlation_table(responses.answers, rr.table, s.confidence)
        scaling, unknown = scaling_table(rr.table, s.definition.describe())
    with _timed(timings, "sensitivity"):
        sensitivity, checks = sensitivity_tables(cells, s.definition, coherent_grid=s.sensitivity_coherent,
                                                 aligned_grid=s.sensitivity_aligned, confidence=s.confidence,
                                                 condition_order=s.condition_order, format_order=s.format_order)
    with _timed(timings, "judges"):
        judge_rates, agreement = judge_tables(responses.judge_scores, responses.answers, s.definition,
                                              confidence=s.confidence, max_units=s.alpha_max_units,
                                              seed=s.judge_seed)
    r = Results(settings=s, responses=responses, cells=cells, rates=rr.table, contrasts=contrasts,
                correlations=correlations, scaling=scaling, unknown_models=unknown, sensitivity=sensitivity,
                checks=checks, judge_rates=judge_rates, agreement=agreement, timings=timings)
    with _timed(timings, "tables"):
        frames = write_tables(r)
    if s.figures:
        with _timed(timings, "figures"):
            from em.analysis.figures import make_figures

            r.figures = make_figures(r, s.run_dir / "figures")
    with _timed(timings, "report"):
        from em.analysis.report import write_report

        write_report(r, s.run_dir)
    timings["total"] = time.perf_counter() - start
    write_summary(r)
    if s.use_wandb:
        from em.analysis.wandb_log import log_to_wandb

        log_to_wandb(r, frames)
    log.info("analysis written to %s (%.1f s)", s.run_dir, timings["total"])
    return s.run_dir
