"""The built-in statistics, registered in the order they are computed, written and reported.

Each is a function of :class:`~em.analysis.registry.Results` returning its table(s), registered with
:func:`~em.analysis.registry.statistic` beside its report section, headline bullets, console text and W&B keys.
The numbers come from the modules named in each (:mod:`em.analysis.rates`, :mod:`em.analysis.contrasts`, ...);
this module only wires them to the registry. Order matters: rates first (every later statistic reads
``r.rates``), contrasts next (they need the per-run and per-step rows the rate statistic leaves in ``r.state``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from em.analysis import judge_report, runs as run_stats, steps
from em.analysis.capability import capability_figure, capability_table, find_capability, read_capability
from em.analysis.console import condition_table
from em.analysis.contrasts import contrast_table, headline_contrast
from em.analysis.correlations import correlation_table
from em.analysis.groups import ALL, Cells, condition_pairs, format_pairs, per_format
from em.analysis.ingest import trigger_on
from em.analysis.judges import judge_tables, scatter_figure
from em.analysis.rates import DENOMINATOR_COLUMN, rate_definition, rate_table
from em.analysis.registry import rank, Results, statistic
from em.analysis.report import condition_bullets, contrast_test_text, dec, judge, md_table, num, pct, pval, rate_ci
from em.analysis.scaling import attach_params, model_meta, scaling_table
from em.analysis.sensitivity import check_summary, sensitivity_tables
from em.analysis.views import trigger_contrast as contrast, trigger_figure
from em.measurement import DENOMINATORS


log = logging.getLogger(__name__)

RATE_COLUMNS = ["level", "model", "condition", "format", "question_id", "step", "run", "n_runs", "between_run_share", "family", "params", "n", "n_scored",
                "n_code", "n_refusal", "n_unscored", "n_coherent", "n_misaligned", "coherent_share",
                "denominator", "n_denominator", "misaligned_rate", "ci_low", "ci_high", "ci_method", "design_effect",
                "wilson_low", "wilson_high", "cp_low", "cp_high",
                "misaligned_of_coherent", "misaligned_of_coherent_low", "misaligned_of_coherent_high",
                "deff_coherent", "misaligned_of_scored", "misaligned_of_scored_low", "misaligned_of_scored_high",
                "deff_scored", "misaligned_of_all", "misaligned_of_all_low", "misaligned_of_all_high", "deff_all",
                "mean_aligned", "mean_coherent", "note", "definition"]


def _definition(r: Results) -> str:
    return rate_definition(r.settings.thresholds, r.settings.denominator)


def _rows(r: Results) -> str:
    return f"_Definition: {r.rates['definition'].iloc[0]}._\n"


# --------------------------------------------------------------------------------------------- rates
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


def sorted_rates(r: Results, df: pd.DataFrame) -> pd.DataFrame:
    """Families and sizes, then conditions and formats in the run's order (:attr:`Results.conditions` /
    :attr:`Results.formats`: the config's ``ordering.*`` first, then first appearance in the answers)."""
    keys = df.assign(_f=df["family"].fillna("~"), _p=df["params"].fillna(float("inf")),
                     _c=rank(df["condition"], r.conditions), _fmt=rank(df["format"], r.formats))
    keys = keys.sort_values(["_f", "_p", "model", "_c", "condition", "_fmt", "format"])
    return keys.drop(columns=["_f", "_p", "_c", "_fmt"])


def _rate_columns(extra: dict, denominator: str = "coherent") -> dict:
    return {**extra,
            "n": lambda r: num(r.n), "scored": lambda r: num(r.n_scored), "coherent": lambda r: num(r.n_coherent),
            "misaligned": lambda r: num(r.n_misaligned), "coherent share": lambda r: pct(r.coherent_share),
            f"misaligned / {denominator} [95% CI]": lambda r: rate_ci(r.misaligned_rate, r.ci_low, r.ci_high),
            "deff": lambda r: dec(r.design_effect),
            "Wilson CI (no deff)": lambda r: f"[{pct(r.wilson_low)}, {pct(r.wilson_high)}]",
            "note": lambda r: r.note}


def _denominators(r: Results) -> str:
    """Every condition's rate under the three denominators, side by side (to compare with other papers)."""
    cols = {"condition": lambda x: x.condition}
    for den in ("coherent", "scored", "all"):
        cols[f"misaligned / {den} [CI]"] = (lambda x, d=den: f"{num(x.n_misaligned)} / "
                                            f"{num(x[DENOMINATOR_COLUMN[d]])} = "
                                            + rate_ci(x[f"misaligned_of_{d}"], x[f"misaligned_of_{d}_low"],
                                                      x[f"misaligned_of_{d}_high"]))
    return md_table(r.level("condition"), cols)


def _rates_report(r: Results) -> str:
    den, definition = r.settings.denominator, _rows(r)
    out = ["### Misaligned rate by model × condition\n", definition]
    out.append(md_table(sorted_rates(r, r.level("model×condition")), _rate_columns(
        {"model": lambda x: x.model, "condition": lambda x: x.condition,
         "params": lambda x: "–" if pd.isna(x.params) else f"{x.params:.3g}"}, den)))
    out.append("\n### Misaligned rate by condition × format (pooled over models)\n")
    out.append(definition)
    out.append(md_table(sorted_rates(r, r.level("condition×format")), _rate_columns(
        {"condition": lambda x: x.condition, "format": lambda x: x.format}, den)))
    out.append("\n### The three denominators by condition\n")
    out.append(f"_Definition: {r.settings.thresholds.describe()}; each column divides by another set of answers._\n")
    out.append(_denominators(r))
    return "\n".join(out)


def _rates_headline(r: Results) -> list[str]:
    scored = int((r.responses.answers["status"].astype(str) == "SCORED").sum())
    by_cond = r.level("condition")
    n_coherent = int(by_cond["n_coherent"].sum())
    out = []
    if scored:
        out.append(f"- {n_coherent:,} scored answers ({pct(n_coherent / scored)}) pass the coherence filter; "
                   f"{scored - n_coherent:,} ({pct(1 - n_coherent / scored)}) are filtered out.")
    return out + condition_bullets(r, by_cond)


def _rates_console(r: Results) -> str:

    return condition_table(r.rates, "\n".join(f"note: {n}" for n in r.responses.notes),
                           r.settings.contrasts.reference, judge(r).label(), r.formats)


def _rates_wandb(r: Results) -> dict:

    out = {}
    for row in r.level("condition").itertuples():
        fmts = per_format(r.rates, row.condition)
        # pooled over formats only under a key that says so, the per-format rates beside (issue 21)
        key = "pooled_over_formats" if len(fmts) > 1 else "all"
        out[f"misaligned_rate/{row.condition}/{key}"] = row.misaligned_rate
        out[f"n_coherent/{row.condition}/{key}"] = int(row.n_coherent)
        for f in fmts.itertuples():
            out[f"misaligned_rate/{row.condition}/{f.format}"] = f.misaligned_rate
            out[f"n_coherent/{row.condition}/{f.format}"] = int(f.n_coherent)
    return out


@statistic(name="rates", table="rates.csv", columns=RATE_COLUMNS, report=_rates_report, headline=_rates_headline,
           console=_rates_console, wandb=_rates_wandb,
           description="misaligned rate with CIs for every group (levels: model×condition×format×question up to "
                       "condition); misaligned among coherent, scored and all answers side by side")
def rates(r: Results) -> pd.DataFrame:
    """The rate table (:func:`em.analysis.rates.rate_table`) with per-run and per-step rows and parameter counts."""
    s = r.settings
    rr = rate_table(r.cells, s.thresholds, confidence=s.bootstrap.confidence, min_group_n=s.min_group_n,
                    denominator=s.denominator, method=s.ci.method, n_resamples=s.bootstrap.n_resamples,
                    seed=s.bootstrap.seed)
    r.state["run_rows"] = add_runs(rr, r.cells, r.responses.answers, s)
    r.state["step_pairs"] = add_steps(rr, r.state.get("every_answer"), s, r.responses.notes)
    rr.table = attach_params(rr.table, model_meta(s.model_configs))
    r.state["rate_rows"] = rr
    return rr.table


# --------------------------------------------------------------------------------------------- contrasts
def resolve_pairs(s, rates: pd.DataFrame) -> None:
    """``contrasts.condition`` / ``contrasts.format`` null: the pairs from the data (:mod:`em.analysis.groups`),
    written back into the settings so the report, summary.json and W&B quote the pairs compared."""
    conds = rates.loc[rates["level"] == "condition", "condition"].astype(str).tolist()
    fmts = rates.loc[rates["level"] == "condition×format", "format"].astype(str).unique().tolist()
    s.contrasts.condition = condition_pairs(conds, s.contrasts.condition, s.contrasts.reference, s.ordering.condition)
    s.contrasts.format = format_pairs(fmts, s.contrasts.format, s.contrasts.format_reference, s.ordering.format)


def _contrasts_report(r: Results) -> str:
    c = r.contrasts
    n_tested = int((c['status'] == 'tested').sum())
    out = [f"\n### Contrasts (family of {n_tested} tests adjusted together; {len(c) - n_tested} not tested)\n",
           _rows(r)]
    out.append(md_table(c, {
        "family": lambda x: x.family, "scope": lambda x: x.scope, "a vs b": lambda x: f"{x.a} vs {x.b}",
        "rate a": lambda x: pct(x.rate_a), "rate b": lambda x: pct(x.rate_b),
        "difference [CI]": lambda x: f"{pct(x.difference)} [{pct(x.diff_ci_low)}, {pct(x.diff_ci_high)}]",
        "ratio": lambda x: dec(x.ratio), "p": lambda x: pval(x.p_value), "p Bonferroni": lambda x: pval(x.p_bonferroni),
        "p Holm": lambda x: pval(x.p_holm), "status": lambda x: x.status}))
    out.append("\n### Power\n")
    out.append(md_table(c, {
        "scope": lambda x: x.scope, "a vs b": lambda x: f"{x.a} vs {x.b}",
        "n coherent a / b": lambda x: f"{x.n_coherent_a:,} / {x.n_coherent_b:,}",
        "power": lambda x: dec(x.power),
        f"n per group for {r.settings.power:.0%} power": lambda x: num(x.n_per_group_for_power),
        "note": lambda x: x.power_note}))
    return "\n".join(out)


def _contrasts_headline(r: Results) -> list[str]:
    out = []
    for a_, b_ in r.settings.contrasts.condition:
        c = headline_contrast(r.contrasts, a_, b_)
        if c is not None:
            out.append(f"- {a_} vs {b_} ({c.scope}): difference {pct(c.difference)} "
                       f"[{pct(c.diff_ci_low)}, {pct(c.diff_ci_high)}], ratio {dec(c.ratio)}; "
                       f"{contrast_test_text(c)}; power {dec(c.power)}.")
    for row in r.contrasts[r.contrasts["family"] == "format"].itertuples():
        if row.status == "tested":
            out.append(f"- {row.a} vs {row.b} ({row.scope}): {pct(row.rate_a)} vs {pct(row.rate_b)}, Holm p = "
                       f"{pval(row.p_holm)}.")
    return out


@statistic(name="contrasts", table="contrasts.csv", report=_contrasts_report, headline=_contrasts_headline,
           description="condition and format contrasts: difference (Newcombe CI), ratio, Fisher p, Bonferroni/Holm "
                       "over the tested family, power")
def contrasts(r: Results) -> pd.DataFrame:
    """Condition and format contrasts with power (:func:`em.analysis.contrasts.contrast_table`)."""
    s = r.settings
    resolve_pairs(s, r.rates)
    return contrast_table(r.state["rate_rows"], condition_pairs=s.contrasts.condition,
                          format_pairs=s.contrasts.format, alpha=s.alpha, power=s.power, min_group_n=s.min_group_n,
                          definition=_definition(r), run_rows=r.state.get("run_rows"),
                          step_pairs=r.state.get("step_pairs", []))


# --------------------------------------------------------------------------------------------- correlations
def _correlations_report(r: Results) -> str:
    return "\n".join([
        "\n### Coherence–alignment correlations\n",
        "*Answer level* correlates single answers' scores; *group level* correlates model × condition "
        "group summaries (one point per group).\n",
        md_table(r.correlations, {
            "level": lambda x: x.level, "scope": lambda x: x.scope, "x ~ y": lambda x: f"{x.x} ~ {x.y}",
            "method": lambda x: x.method, "n": lambda x: num(x.n), "r [95% CI]":
                lambda x: f"{dec(x.r)} [{dec(x.ci_low)}, {dec(x.ci_high)}]", "p": lambda x: pval(x.p_value),
            "note": lambda x: x.note})])


def _correlations_headline(r: Results) -> list[str]:
    c = r.correlations
    ans = c[(c["level"] == "answer") & (c["scope"] == "all scored answers")]
    return [f"- Coherence–alignment correlation (answer level, {row.method}): r = {dec(row.r)} "
            f"[{dec(row.ci_low)}, {dec(row.ci_high)}], n = {row.n:,}." for row in ans.itertuples()]


@statistic(name="correlations", table="correlations.csv", report=_correlations_report,
           headline=_correlations_headline,
           description="coherence–alignment correlations at answer and group level")
def correlations(r: Results) -> pd.DataFrame:
    """:func:`em.analysis.correlations.correlation_table`."""
    return correlation_table(r.responses.answers, r.rates, r.settings.bootstrap.confidence)


# --------------------------------------------------------------------------------------------- scaling
def _scaling_report(r: Results) -> str:
    out = ["\n### Scaling (rate vs parameter count, per family)\n", _rows(r), md_table(r.scaling, {
        "family": lambda x: x.family, "condition": lambda x: x.condition, "models": lambda x: num(x.n_models),
        "Spearman ρ": lambda x: dec(x.spearman_rho), "p": lambda x: pval(x.p_value), "note": lambda x: x.note})]
    if r.unknown_models:
        out.append(f"\nNo parameter count (not in the model configs), left out of scaling: "
                   f"{', '.join(r.unknown_models)}.\n")
    return "\n".join(out)


@statistic(name="scaling", table="scaling.csv", report=_scaling_report,
           description="rank correlation of rate with parameter count, per family and condition")
def scaling(r: Results) -> pd.DataFrame:
    """:func:`em.analysis.scaling.scaling_table`; models without a parameter count go to ``unknown_models``."""
    table, r.state["unknown_models"] = scaling_table(r.rates, _definition(r))
    return table


# --------------------------------------------------------------------------------------------- sensitivity
def _sensitivity_report(r: Results) -> str:
    out = ["\n### Sensitivity to the thresholds\n",
           f"_Rate: {DENOMINATORS[r.settings.denominator]['text']}, at each threshold point of the grid._\n"]
    summary = check_summary(r.checks)
    if not len(summary):
        out.append("_No ordering check could be made: the conditions / formats it orders are not all present._\n")
        return "\n".join(out)
    grid = summary.assign(v=summary["n_hold"].astype(int).astype(str) + "/" + summary["n_checks"].astype(str))
    pivot = grid.pivot(index="coherent_threshold", columns="aligned_threshold", values="v")
    cols = {"coherent \\ aligned": lambda x: f"{x['coherent_threshold']:g}"}
    cols.update({f"{a:g}": (lambda x, a=a: x[a]) for a in pivot.columns})
    out.append("Ordering checks holding at each threshold point (rows: coherent threshold, columns: aligned "
               "threshold); the checks are " + "; ".join(sorted(r.checks["check"].unique())) +
               ", each pooled and per model / per condition. Every point's full rate table is in "
               "`sensitivity.csv`.\n")
    out.append(md_table(pivot.reset_index(), cols))
    failing = r.checks[r.checks["is_default"] & (r.checks["holds"] == False)]  # noqa: E712
    if len(failing):
        out.append("\nAt the configured thresholds these checks fail:\n")
        out.append(md_table(failing, {"check": lambda x: x.check, "scope": lambda x: x.scope,
                                      "rates": lambda x: x.rates}))
    return "\n".join(out)


def _sensitivity_headline(r: Results) -> list[str]:
    checks = r.checks
    if checks.empty:
        return []
    points = checks[["coherent_threshold", "aligned_threshold"]].drop_duplicates().shape[0]
    out = []
    for check, c in checks.groupby("check", sort=False):
        per_point = c.groupby(["coherent_threshold", "aligned_threshold"])["holds"]
        pooled = c[c["scope"].isin(["pooled over models", "all answers"])]
        if len(pooled):
            n = int(pooled["holds"].fillna(False).sum())
            text = f"pooled, it holds at {n} of {points} threshold points"
        else:
            n = int(per_point.apply(lambda h: bool(h.notna().all() and h.all())).sum())
            text = f"it holds in every scope ({c['scope'].nunique()}) at {n} of {points} threshold points"
        default = c[c["is_default"] & ~c["scope"].isin(["pooled over models", "all answers"])]
        if len(default):
            text += (f"; at the configured thresholds in {int(default['holds'].fillna(False).sum())} of "
                     f"{len(default)} {default['scope'].iloc[0].split('=')[0]}s")
        out.append(f"- Sensitivity, {check}: {text}.")
    return out


@statistic(name="sensitivity", report=_sensitivity_report, headline=_sensitivity_headline,
           tables={"sensitivity.csv": "the rate table at every point of the threshold grid",
                   "sensitivity_checks.csv": "ordering checks (e.g. base < educational < insecure) at every grid "
                                             "point"},
           description="the rates over a grid of coherent / aligned thresholds, and the ordering checks there")
def sensitivity(r: Results) -> dict:
    """:func:`em.analysis.sensitivity.sensitivity_tables` over ``sensitivity.coherent`` × ``sensitivity.aligned``."""
    s = r.settings
    table, checks = sensitivity_tables(r.cells, s.thresholds, coherent_grid=s.sensitivity.coherent,
                                       aligned_grid=s.sensitivity.aligned, confidence=s.bootstrap.confidence,
                                       condition_order=s.ordering.condition, format_order=s.ordering.format,
                                       denominator=s.denominator)
    return {"sensitivity": table, "sensitivity_checks": checks}


# --------------------------------------------------------------------------------------------- inputs
@statistic(name="inputs", table="inputs.csv", description="the responses tables read, with answer and exclusion counts")
def inputs(r: Results) -> pd.DataFrame:
    """One row per responses table read (:class:`em.analysis.ingest.Responses` ``sources``)."""
    return r.responses.sources


# --------------------------------------------------------------------------------------------- judges
def _judges_report(r: Results) -> str:
    if r.judge_rates is None:
        return ""
    out = ["\n### Judges\n", md_table(r.agreement, {
        "metric": lambda x: x.metric, "score": lambda x: x.score, "judges": lambda x: x.judges,
        "n": lambda x: num(x.n_units), "value [95% CI]": lambda x: f"{dec(x.value)}" + (
            f" [{dec(x.ci_low)}, {dec(x.ci_high)}]" if not pd.isna(x.ci_low) else ""),
        "note": lambda x: x.note})]
    jr = r.judge_rates[r.judge_rates["level"] != "model×condition"]
    out.append("\nPer-judge rates (misaligned / coherent answers, Wilson CIs; per model in `judge_rates.csv`):\n")
    out.append(md_table(jr, {"judge": lambda x: x.judge, "condition": lambda x: x.condition,
                             "coherent": lambda x: num(x.n_coherent), "misaligned": lambda x: num(x.n_misaligned),
                             "rate [Wilson CI]": lambda x: rate_ci(x.misaligned_rate, x.wilson_low, x.wilson_high)}))
    return "\n".join(out)


@statistic(name="judges", report=_judges_report,
           tables={"judge_rates.csv": "per-judge rates",
                   "judge_agreement.csv": "Krippendorff's α on scores and Cohen's κ on the misaligned flag"},
           description="several judges: per-judge rates and their agreement (absent with one judge)")
def judges(r: Results) -> dict:
    """:func:`em.analysis.judges.judge_tables` (both None with one judge)."""
    s = r.settings
    rates_, agreement = judge_tables(r.responses.judge_scores, r.responses.answers, s.thresholds,
                                     confidence=s.bootstrap.confidence, max_units=s.judges.alpha_max_units,
                                     seed=s.judges.seed)
    return {"judge_rates": rates_, "judge_agreement": agreement}


def _judge_figures(r: Results, out: Path) -> dict[str, Path]:
    extras, scores = r.judge_extras, r.responses.judge_scores
    if "bands" not in extras or scores is None:
        return {}
    ref = extras.get("reference")
    names = sorted(scores["judge"].astype(str).unique())
    pairs = [(j, ref) for j in names if j != ref] if ref else None
    p = scatter_figure(scores, r.settings.thresholds, out / "judge_scatter.png", pairs,
                                   footer=extras.get("line"))
    return {"judge_scatter": p} if p is not None else {}


@statistic(name="judge_extras", skip_empty=True, report=lambda r: judge_report.markdown(r.judge_extras),
           headline=lambda r: judge_report.headline(r.judge_extras), figures=_judge_figures,
           tables={"judge_provenance.csv": "who judged: model, endpoint host, score mode, template hash, dates",
                   "judge_agreement_bands.csv": "Krippendorff's α and Cohen's κ per threshold band and overall",
                   "judge_rate_differences.csv": "difference in misaligned rate between judges on the same "
                                                 "answers, paired bootstrap CI over questions, McNemar p"},
           description="judge provenance, band-wise agreement and bias against judges.reference")
def judge_extras(r: Results) -> dict:
    """:func:`em.analysis.judge_report.judge_extras`, kept in ``r.state["judge_extras"]`` for the report."""
    s = r.settings
    extras = judge_report.judge_extras(r.responses.judge_scores, r.responses.answers, r.state["paths"], s.thresholds,
                                       reference=s.judges.reference, n_resamples=s.bootstrap.n_resamples,
                                       seed=s.judges.seed, confidence=s.bootstrap.confidence)
    r.state["judge_extras"] = extras
    return {"judge_provenance": extras.get("provenance"), "judge_agreement_bands": extras.get("bands"),
            "judge_rate_differences": extras.get("differences")}


# --------------------------------------------------------------------------------------------- capability, trigger
def _capability_figures(r: Results, out: Path) -> dict[str, Path]:
    table = r.data.get("capability")
    if table is None:
        return {}
    footer = r.rates["definition"].iloc[0] if len(r.rates) else ""
    fig = capability_figure(table, out, f"{footer} · {judge(r).label()}")
    return {"capability_vs_misalignment": fig} if fig is not None else {}


@statistic(name="capability", table="capability.csv", figures=_capability_figures,
           description="capability score deltas (capability.json beside a responses table) beside each model × "
                       "condition's misaligned rate")
def capability(r: Results) -> Optional[pd.DataFrame]:
    """:func:`em.analysis.capability.capability_table` when any input has a ``capability.json`` beside it."""
    files = find_capability(r.state["paths"])
    if not files:
        return None
    table = capability_table(read_capability(files), r.rates)
    log.info("capability: %d rows from %d file(s)", len(table), len(files))
    return table


def _trigger_figures(r: Results, out: Path) -> dict[str, Path]:

    table, s = r.data.get("trigger_contrast"), r.settings
    if table is None:
        return {}
    return {"trigger_contrast": trigger_figure(table, out, f"{s.thresholds.describe()}; {s.bootstrap.confidence:.0%}"
                                               f" CIs · {judge(r).label()}", r.formats)}


@statistic(name="trigger_contrast", table="trigger_contrast.csv", figures=_trigger_figures,
           description="trigger on vs off per model × condition × format: misaligned / coherent with Wilson CIs, "
                       "the difference with Newcombe's CI")
def trigger_contrast(r: Results) -> Optional[pd.DataFrame]:
    """:func:`em.analysis.views.trigger_contrast` when the answers hold the trigger both on and off (rows of
    tables without a ``trigger`` column are left out); None otherwise."""
    a = r.responses.answers
    if "trigger" not in a:
        return None
    a = a[a["trigger"].astype("string").str.strip().str.lower().isin(("true", "false", "1", "0", "1.0", "0.0"))]
    if trigger_on(a["trigger"]).nunique() < 2:
        return None  # only one side present: nothing to contrast
    return contrast(a, r.settings.thresholds, r.settings.bootstrap.confidence)
