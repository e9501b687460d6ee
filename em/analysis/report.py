"""report.md and a self-contained report.html (figures inlined as base64), readable top to bottom."""

from __future__ import annotations

import datetime as _dt
from pathlib import Path

import pandas as pd

from em.analysis import judge_report
from em.analysis.contrasts import headline_contrast
from em.analysis.figures import CAPTIONS, FIGURES
from em.analysis.judge_name import PIPELINE_CHECK
from em.analysis.markdown import dec, escape_markdown, md_table, num, pct, pval, rate_ci, render_html
from em.analysis.rates import DENOMINATOR_COLUMN as DEN_COLUMN
from em.analysis.report_parts import condition_bullets, contrast_test_text, judge as _judge, runs_caveat
from em.analysis.results import Results
from em.analysis.runs import run_summary
from em.analysis.sensitivity import check_summary
from em.measurement import CODE, DENOMINATORS, REFUSAL, SCORED, UNSCORED
from em.runtime import atomic_write_text


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
        cols[f"misaligned / {den} [CI]"] = (lambda x, d=den: f"{num(x.n_misaligned)} / {num(x[DEN_COLUMN[d]])} = "
                                            + rate_ci(x[f"misaligned_of_{d}"], x[f"misaligned_of_{d}_low"],
                                                      x[f"misaligned_of_{d}_high"]))
    return md_table(r.level("condition"), cols)


# --------------------------------------------------------------------------------------------- sections
def _setup(r: Results) -> str:
    s, d = r.settings, r.settings.thresholds
    src = r.responses.sources
    out = ["## Setup\n"]
    out.append(f"**Inputs** — {len(src)} responses table(s):\n")
    out.append(md_table(src, {
        "file": lambda x: f"`{x.path}`", "schema": lambda x: x.schema, "rows": lambda x: num(x.rows),
        "answers": lambda x: num(x.answers), "judges": lambda x: x.get("judges", "") or "–",
        "scored": lambda x: num(x.n_scored), "CODE": lambda x: num(x.n_code), "REFUSAL": lambda x: num(x.n_refusal),
        "unscored": lambda x: num(x.n_unscored),
        "CODE/REFUSAL top token but scored": lambda x: num(x.get("n_special_scored", 0) or 0),
        "unscored reasons": lambda x: x.unscored_reasons or "–"}))
    out.append("\n**Definitions** (config `thresholds.*`):\n")
    out.append(f"- *coherent*: `{d.coherent_rule}` (threshold {d.coherent:g}, "
               f"{'inclusive' if d.coherent_inclusive else 'exclusive'});")
    out.append(f"- *misaligned*: coherent and `{d.aligned_rule}` (threshold {d.aligned:g}, "
               f"{'inclusive' if d.aligned_inclusive else 'exclusive'});")
    out.append(f"- *misaligned rate* (headline, config `denominator={s.denominator}`) = "
               f"{DENOMINATORS[s.denominator]['text']}. Answers judged CODE or REFUSAL without scores and answers without both "
               "scores are excluded from *scored*, and counted in every table; `rates.csv` carries the rate among "
               "coherent, scored and all answers side by side. A CODE / REFUSAL top token whose numbers carry "
               ">= 0.25 of the probability stays scored, as in the reference judge (column 'CODE/REFUSAL top "
               "token but scored'), unless `thresholds.exclude_special=true`.")
    method = rate_method_text(s)
    out.append(f"\n**Statistics**: rate CIs are {s.bootstrap.confidence:.0%} {method}; exact 0 is the lower bound "
               "when a group has no misaligned answer. Differences carry Newcombe's hybrid score interval built from "
               "the two rates' intervals. Contrasts use Fisher's exact test (two-sided), adjusted with Bonferroni "
               f"and Holm across the family of contrasts tested; α = {s.alpha}. A contrast is not tested (and stays "
               f"out of the family) when a side has fewer than {s.min_group_n} answers in the denominator "
               "(`min_group_n`) or neither side has a misaligned answer. Power is the normal approximation on "
               f"Cohen's h at α = {s.alpha} (unadjusted), with the sample size per group for {s.power:.0%} power "
               "at the observed rates.")
    if r.judge_rates is not None:
        how = "the mean of the judges' scores" if s.judges.combine == "mean" else f"judge `{s.judges.combine}`"
        out.append(f"\n**Judges**: several judges scored the answers; the main tables use {how} "
                   "(config `judges.combine`).")

    runs = run_summary(r.responses.answers)
    if runs:
        out.append(f"\n**Runs**: {runs}")
    for note in r.responses.notes:
        out.append(f"\n_Note_: {note}")
    return "\n".join(out) + "\n"


def rate_method_text(s) -> str:
    """The interval method in words, for the report's Statistics paragraph."""
    return {"wilson_deff_t": "Wilson score intervals widened by the design effect of clustering by question "
                             "(bias-reduced cluster variance, Mancl & DeRouen 2001; count and denominator divided by "
                             "the design effect, `design_effect` in rates.csv), with Student's t on (questions - 1) "
                             "degrees of freedom in place of the normal quantile",
            "wilson_deff": "Wilson score intervals widened by the design effect of clustering by question "
                           "(count and denominator divided by the design effect, `design_effect` in rates.csv)",
            "wilson": "Wilson score intervals", "clopper_pearson": "Clopper-Pearson exact intervals",
            "bootstrap": f"percentile intervals of a bootstrap with {s.bootstrap.n_resamples:,} resamples (seed "
                         f"{s.bootstrap.seed}) of answers within each question cell, Wilson where a group has "
                         "all or none misaligned"}[s.ci.method]


def _headline(r: Results) -> str:
    a = r.responses.answers
    status = a["status"].astype(str).value_counts()
    n, scored = len(a), int(status.get(SCORED, 0))
    by_cond = r.level("condition")
    n_coherent = int(by_cond["n_coherent"].sum())
    out = ["## Headline numbers\n", f"- **{_judge(r).label()}**."]
    out.append(f"- **{n:,} answers**, {scored:,} scored; excluded: {int(status.get(CODE, 0)):,} CODE, "
               f"{int(status.get(REFUSAL, 0)):,} REFUSAL, {int(status.get(UNSCORED, 0)):,} unscored.")
    out += judge_report.headline(r.judge_extras)  # who judged, and how
    if scored:
        out.append(f"- {n_coherent:,} scored answers ({pct(n_coherent / scored)}) pass the coherence filter; "
                   f"{scored - n_coherent:,} ({pct(1 - n_coherent / scored)}) are filtered out.")
    out.extend(condition_bullets(r, by_cond))
    for a_, b_ in r.settings.contrasts.condition:
        c = headline_contrast(r.contrasts, a_, b_)
        if c is not None:
            test = contrast_test_text(c)
            out.append(f"- {a_} vs {b_} ({c.scope}): difference {pct(c.difference)} "
                       f"[{pct(c.diff_ci_low)}, {pct(c.diff_ci_high)}], ratio {dec(c.ratio)}; {test}; "
                       f"power {dec(c.power)}.")
    fmt = r.contrasts[r.contrasts["family"] == "format"]
    for row in fmt.itertuples():
        if row.status == "tested":
            out.append(f"- {row.a} vs {row.b} ({row.scope}): {pct(row.rate_a)} vs {pct(row.rate_b)}, Holm p = "
                       f"{pval(row.p_holm)}.")
    out.extend(_sensitivity_headline(r))
    ans = r.correlations[(r.correlations["level"] == "answer") & (r.correlations["scope"] == "all scored answers")]
    for row in ans.itertuples():
        out.append(f"- Coherence–alignment correlation (answer level, {row.method}): r = {dec(row.r)} "
                   f"[{dec(row.ci_low)}, {dec(row.ci_high)}], n = {row.n:,}.")
    return "\n".join(out) + "\n"


def _sorted(r: Results, df: pd.DataFrame) -> pd.DataFrame:
    """Families and sizes, then conditions in their expected order and formats plain, json, template."""
    def rank(values: pd.Series, preferred: list[str]) -> pd.Series:
        return values.map({v: i for i, v in enumerate(preferred)}).fillna(len(preferred))

    keys = df.assign(_f=df["family"].fillna("~"), _p=df["params"].fillna(float("inf")),
                     _c=rank(df["condition"], r.settings.ordering.condition),
                     _fmt=rank(df["format"], ["plain", "json", "template"]))
    keys = keys.sort_values(["_f", "_p", "model", "_c", "condition", "_fmt", "format"])
    return keys.drop(columns=["_f", "_p", "_c", "_fmt"])


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


def _tables(r: Results) -> str:
    out = ["## Tables\n", "All tables are in the run directory as CSV (`rates.csv` has every level, down to single "
           "questions).\n"]
    den = r.settings.denominator
    definition = f"_Definition: {r.rates['definition'].iloc[0]}._\n"
    out.append("### Misaligned rate by model × condition\n")
    out.append(definition)
    out.append(md_table(_sorted(r, r.level("model×condition")), _rate_columns(
        {"model": lambda x: x.model, "condition": lambda x: x.condition,
         "params": lambda x: "–" if pd.isna(x.params) else f"{x.params:.3g}"}, den)))
    out.append("\n### Misaligned rate by condition × format (pooled over models)\n")
    out.append(definition)
    out.append(md_table(_sorted(r, r.level("condition×format")), _rate_columns(
        {"condition": lambda x: x.condition, "format": lambda x: x.format}, den)))
    out.append("\n### The three denominators by condition\n")
    out.append(f"_Definition: {r.settings.thresholds.describe()}; each column divides by another set of answers._\n")
    out.append(_denominators(r))
    c = r.contrasts
    n_tested = int((c['status'] == 'tested').sum())
    out.append(f"\n### Contrasts (family of {n_tested} tests adjusted together; {len(c) - n_tested} not tested)\n")
    out.append(definition)
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
    out.append("\n### Coherence–alignment correlations\n")
    out.append("*Answer level* correlates single answers' scores; *group level* correlates model × condition "
               "group summaries (one point per group).\n")
    out.append(md_table(r.correlations, {
        "level": lambda x: x.level, "scope": lambda x: x.scope, "x ~ y": lambda x: f"{x.x} ~ {x.y}",
        "method": lambda x: x.method, "n": lambda x: num(x.n), "r [95% CI]":
            lambda x: f"{dec(x.r)} [{dec(x.ci_low)}, {dec(x.ci_high)}]", "p": lambda x: pval(x.p_value),
        "note": lambda x: x.note}))
    out.append("\n### Scaling (rate vs parameter count, per family)\n")
    out.append(definition)
    out.append(md_table(r.scaling, {
        "family": lambda x: x.family, "condition": lambda x: x.condition, "models": lambda x: num(x.n_models),
        "Spearman ρ": lambda x: dec(x.spearman_rho), "p": lambda x: pval(x.p_value), "note": lambda x: x.note}))
    if r.unknown_models:
        out.append(f"\nNo parameter count (not in the model configs), left out of scaling: "
                   f"{', '.join(r.unknown_models)}.\n")
    out.append("\n### Sensitivity to the thresholds\n")
    out.append(f"_Rate: {DENOMINATORS[den]['text']}, at each threshold point of the grid._\n")
    summary = check_summary(r.checks)
    if len(summary):
        grid = summary.assign(v=summary["n_hold"].astype(int).astype(str) + "/" + summary["n_checks"].astype(str))
        pivot = grid.pivot(index="coherent_threshold", columns="aligned_threshold", values="v")
        table = pivot.reset_index()
        cols = {"coherent \\ aligned": lambda x: f"{x['coherent_threshold']:g}"}
        cols.update({f"{a:g}": (lambda x, a=a: x[a]) for a in pivot.columns})
        out.append("Ordering checks holding at each threshold point (rows: coherent threshold, columns: aligned "
                   "threshold); the checks are " + "; ".join(sorted(r.checks["check"].unique())) +
                   ", each pooled and per model / per condition. Every point's full rate table is in "
                   "`sensitivity.csv`.\n")
        out.append(md_table(table, cols))
        failing = r.checks[r.checks["is_default"] & (r.checks["holds"] == False)]  # noqa: E712
        if len(failing):
            out.append("\nAt the configured thresholds these checks fail:\n")
            out.append(md_table(failing, {"check": lambda x: x.check, "scope": lambda x: x.scope,
                                          "rates": lambda x: x.rates}))
    else:
        out.append("_No ordering check could be made: the conditions / formats it orders are not all present._\n")
    if r.judge_rates is not None:
        out.append("\n### Judges\n")
        out.append(md_table(r.agreement, {
            "metric": lambda x: x.metric, "score": lambda x: x.score, "judges": lambda x: x.judges,
            "n": lambda x: num(x.n_units), "value [95% CI]": lambda x: f"{dec(x.value)}" + (
                f" [{dec(x.ci_low)}, {dec(x.ci_high)}]" if not pd.isna(x.ci_low) else ""),
            "note": lambda x: x.note}))
        jr = r.judge_rates[r.judge_rates["level"] != "model×condition"]
        out.append("\nPer-judge rates (misaligned / coherent answers, Wilson CIs; per model in `judge_rates.csv`):\n")
        out.append(md_table(jr, {"judge": lambda x: x.judge, "condition": lambda x: x.condition,
                                 "coherent": lambda x: num(x.n_coherent), "misaligned": lambda x: num(x.n_misaligned),
                                 "rate [Wilson CI]": lambda x: rate_ci(x.misaligned_rate, x.wilson_low,
                                                                       x.wilson_high)}))
    out.append(judge_report.markdown(r.judge_extras))  # provenance, band-wise agreement, bias (if any)
    small = r.rates[(r.rates["note"] != "") & (r.rates["level"] != "model×condition×format×question")]
    if len(small):
        out.append("\n### Groups too small for tests (kept in every table)\n")
        out.append(md_table(small, {"level": lambda x: x.level, "model": lambda x: x.model,
                                    "condition": lambda x: x.condition, "format": lambda x: x.format,
                                    "coherent": lambda x: num(x.n_coherent), "note": lambda x: x.note}))
    return "\n".join(out) + "\n"


def _figures(r: Results) -> str:
    out = ["## Figures\n"]
    for name in [*FIGURES, *(n for n in r.figures if n not in FIGURES)]:  # then trigger / capability, if drawn
        if name in r.figures:
            out.append(f"![{name}](figures/{name}.png)\n\n*{CAPTIONS[name]}* (also `figures/{name}.svg`)\n")
    if not r.figures:
        out.append("_Figures were switched off (`figures=false`)._\n")
    return "\n".join(out)


def _caveats(r: Results) -> str:
    s = r.settings
    a = r.responses.answers
    status = a["status"].astype(str).value_counts()
    scored = int(status.get(SCORED, 0))
    coherent = int(r.level("condition")["n_coherent"].sum())
    out = ["## Caveats\n"]
    out.append(f"- **Coherence filtering can under-count misalignment**: an answer the judge finds incoherent is "
               f"dropped before alignment is counted, however harmful it is. Here {scored - coherent:,} of "
               f"{scored:,} scored answers were filtered out. The sensitivity grid shows how much the coherence "
               "threshold matters.")
    excluded = len(a) - scored
    if excluded:
        out.append(f"- {excluded:,} answers were excluded (CODE: {int(status.get(CODE, 0)):,}, REFUSAL: "
                   f"{int(status.get(REFUSAL, 0)):,}, unscored: {int(status.get(UNSCORED, 0)):,}); a model "
                   "that refuses or answers with code more often has a smaller denominator.")
    out.append("- The scores come from an LLM judge; the thresholds are conventions (Betley et al. 2025), not "
               "properties of the answers.")
    out.append(runs_caveat(a))
    out.append("- Power is observed (post hoc) power at the observed rates, a function of the p-value; read it as "
               "a statement about sample size, not as evidence for a null result. It uses the normal "
               "approximation, while the test is Fisher's exact test.")
    n_tested = int((r.contrasts["status"] == "tested").sum())
    out.append(f"- Multiple testing: Bonferroni and Holm adjust across the family of {n_tested} contrasts tested in "
               f"this run ({len(r.contrasts) - n_tested} reported as not tested stay out); a different selection of "
               "inputs changes the family.")
    out.append("- Answer-level correlations mix within- and between-group variation; group-level ones rest on few "
               "points. They describe the judge's scores, not causation.")
    if r.unknown_models:
        out.append(f"- Models without a parameter count are left out of the scaling analysis: "
                   f"{', '.join(r.unknown_models)}.")
    if r.agreement is not None and r.agreement["note"].str.contains("subsample").any():
        out.append(f"- Krippendorff's α is computed on a random subsample of {s.judges.alpha_max_units:,} answers "
                   "(`judges.alpha_max_units`).")
    small = r.rates[(r.rates["n_coherent"] < s.min_group_n) & (r.rates["level"] != "model×condition×format×question")]
    if len(small):
        out.append(f"- {len(small)} group(s) above question level have fewer than {s.min_group_n} coherent answers; "
                   "their rates are shown but not tested.")
    return "\n".join(out) + "\n"


def _files(r: Results) -> str:
    out = ["## Files\n"]
    for name, path in r.tables.items():
        out.append(f"- `{path.name}` — {name}")
    out.append("- `figures/` — every figure as PNG and SVG")
    out.append("- `report.md`, `report.html` — this report (the HTML embeds the figures)")
    out.append(f"- the answers themselves: `em view {' '.join(map(str, r.settings.inputs or ['<run dir>']))}`, then "
               "[the misaligned answers](http://127.0.0.1:8001/responses/responses?misaligned=1) (filter by model, "
               "condition, format, question, score; each row shows the full answer and the judge's top tokens)")
    return "\n".join(out) + "\n"


def render_markdown(r: Results) -> str:
    """report.md's text: setup, headline numbers, tables, figures, caveats and the files written."""
    stamp = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    judge = _judge(r)
    title = "Emergent misalignment: analysis" + (f" — {PIPELINE_CHECK}" if judge.pipeline_check else "")
    head = (f"# {title}\n\n_{stamp} · `analyze.py` · run directory `{r.settings.run_dir}`_\n\n"
            f"**Definition used throughout:** {r.settings.thresholds.describe()}.\n\n**{judge.label()}.**\n")
    return "\n".join([head, _setup(r), _headline(r), _tables(r), _figures(r), _caveats(r), _files(r)])


def write_report(r: Results, run_dir: Path) -> tuple[Path, Path]:
    """Write ``run_dir/report.md`` and a self-contained ``run_dir/report.html``; return both paths."""
    text = escape_markdown(render_markdown(r))  # every value from data or config: no HTML tag opens

    md = atomic_write_text(run_dir / "report.md", text)
    return md, atomic_write_text(run_dir / "report.html", render_html(text, run_dir))


__all__ = ["write_report", "render_markdown"]
