"""report.md and a self-contained report.html (figures inlined as base64), readable top to bottom.

The frame is fixed (setup, headline numbers, tables, figures, caveats, files); the headline bullets, the table
sections and the files listed come from the registered statistics (:mod:`em.analysis.registry`), in order.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path

from em.analysis.figures import CAPTIONS, FIGURES
from em.analysis.markdown import escape_markdown, md_table, num, render_html
from em.analysis.judge_name import PIPELINE_CHECK
from em.analysis.registry import Results, hooks
from em.analysis.report_parts import judge as _judge, runs_caveat
from em.measurement import CODE, DENOMINATORS, REFUSAL, SCORED, UNSCORED


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
    from em.analysis.runs import run_summary

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
    """Who judged and how many answers, then each registered statistic's headline bullets, in order."""
    status = r.responses.answers["status"].astype(str).value_counts()
    n, scored = len(r.responses.answers), int(status.get(SCORED, 0))
    out = ["## Headline numbers\n", f"- **{_judge(r).label()}**."]
    out.append(f"- **{n:,} answers**, {scored:,} scored; excluded: {int(status.get(CODE, 0)):,} CODE, "
               f"{int(status.get(REFUSAL, 0)):,} REFUSAL, {int(status.get(UNSCORED, 0)):,} unscored.")
    for headline in hooks(r.state["statistics"], "headline"):
        out.extend(headline(r))
    return "\n".join(out) + "\n"


def _tables(r: Results) -> str:
    """Each registered statistic's report section, in order, then the groups too small to test."""
    out = ["## Tables\n", "All tables are in the run directory as CSV (`rates.csv` has every level, down to single "
           "questions).\n"]
    out += [text for section in hooks(r.state["statistics"], "report") if (text := section(r))]
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
            out.append(f"![{name}](figures/{name}.png)\n\n*{CAPTIONS.get(name, name)}* (also `figures/{name}.svg`)\n")
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
    from em.runtime import atomic_write_text  # a stop (SIGTERM) mid-write leaves no half-written file

    md = atomic_write_text(run_dir / "report.md", text)
    return md, atomic_write_text(run_dir / "report.html", render_html(text, run_dir))


__all__ = ["write_report", "render_markdown"]
