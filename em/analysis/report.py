"""report.md and a self-contained report.html (figures inlined as base64), readable top to bottom.

The frame is fixed (setup, headline numbers, tables, figures, caveats, files); the headline bullets, the table
sections and the files listed come from the registered statistics (:mod:`em.analysis.registry`), in order.
"""

from __future__ import annotations

import base64
import datetime as _dt
import math
import re
from pathlib import Path
from typing import Callable

import pandas as pd

from em.analysis.figures import CAPTIONS, FIGURES
from em.analysis.groups import POOLED, breakdown_text, per_format
from em.analysis.judge_name import PIPELINE_CHECK, judge_info
from em.analysis.registry import hooks, Results
from em.analysis.runs import run_summary, runs_per_cell
from em.measurement import CODE, DENOMINATORS, REFUSAL, SCORED, UNSCORED
from em.runtime import atomic_write_text


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
    """Who judged and how many answers, then each registered statistic's headline bullets, in order."""
    status = r.responses.answers["status"].astype(str).value_counts()
    n, scored = len(r.responses.answers), int(status.get(SCORED, 0))
    out = ["## Headline numbers\n", f"- **{judge(r).label()}**."]
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
    who = judge(r)
    title = "Emergent misalignment: analysis" + (f" — {PIPELINE_CHECK}" if who.pipeline_check else "")
    head = (f"# {title}\n\n_{stamp} · `analyze.py` · run directory `{r.settings.run_dir}`_\n\n"
            f"**Definition used throughout:** {r.settings.thresholds.describe()}.\n\n**{who.label()}.**\n")
    return "\n".join([head, _setup(r), _headline(r), _tables(r), _figures(r), _caveats(r), _files(r)])


def write_report(r: Results, run_dir: Path) -> tuple[Path, Path]:
    """Write ``run_dir/report.md`` and a self-contained ``run_dir/report.html``; return both paths."""
    text = escape_markdown(render_markdown(r))  # every value from data or config: no HTML tag opens

    md = atomic_write_text(run_dir / "report.md", text)
    return md, atomic_write_text(run_dir / "report.html", render_html(text, run_dir))


# ---------------------------------------------------------------- markdown: numbers, tables, escaping, the HTML page
def pct(x: float, digits: int = 1) -> str:
    """A share in [0, 1] as a percentage with ``digits`` decimals (``12.3%``); ``–`` for None / NaN."""
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.{digits}f}%"


def rate_ci(rate: float, low: float, high: float) -> str:
    """A rate with its CI as ``12.3% [10.1%, 14.6%]``; ``undefined`` for a None / NaN rate."""
    if rate is None or math.isnan(rate):
        return "undefined"
    return f"{pct(rate)} [{pct(low)}, {pct(high)}]"


def pval(p: float) -> str:
    """A p-value: 3 decimals, scientific below 1e-3, ``< 1e-300`` when it underflowed to 0, ``–`` when missing."""
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return "–"
    if p == 0:
        return "< 1e-300"  # below double precision: Fisher's p underflows
    return f"{p:.2e}" if p < 1e-3 else f"{p:.3f}"


def num(x, digits: int = 2) -> str:
    """A count with thousands separators, or a non-integer float with ``digits`` decimals; ``–`` when missing."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if isinstance(x, float) and not x.is_integer():
        return f"{x:.{digits}f}"
    return f"{int(x):,}"


def dec(x, digits: int = 2) -> str:
    """A number with ``digits`` decimals; ``–`` when missing."""
    return "–" if x is None or pd.isna(x) else f"{float(x):.{digits}f}"


def md_table(df: pd.DataFrame, columns: dict[str, Callable[[pd.Series], str]], max_rows: int = 60) -> str:
    """A GitHub-style table; `columns` maps a header to a function of the row."""
    if df.empty:
        return "_(none)_\n"
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for _, row in df.head(max_rows).iterrows():
        cells = [str(f(row)).replace("|", "\\|").replace("\n", " ") for f in columns.values()]
        lines.append("| " + " | ".join(cells) + " |")
    if len(df) > max_rows:
        lines.append(f"\n_{len(df) - max_rows} more rows in the CSV._")
    return "\n".join(lines) + "\n"


CODE_SPAN = re.compile(r"(?<!`)(`+)(?!`)(.+?)(?<!`)\1(?!`)", re.S)
TAG_OPEN = re.compile(r"<(?=[A-Za-z/!?])")  # what starts raw HTML (a tag, a comment, a declaration)


def escape_markdown(text: str) -> str:
    """``text`` with every ``<`` that could open HTML (before a letter, ``/``, ``!`` or ``?``) outside code
    spans written ``&lt;`` (``aligned < 30`` stays as it is): no value from data or config (a model
    named ``<img src=x onerror=...>``, a ``<script>`` condition) opens an HTML tag in a Markdown viewer.

    The report itself writes no HTML, so this escapes only what came from the tables and the config;
    inside a code span a renderer shows ``<`` literally already.
    """
    out, pos = [], 0
    for m in CODE_SPAN.finditer(text):
        out.append(TAG_OPEN.sub("&lt;", text[pos:m.start()]))
        out.append(m.group(0))
        pos = m.end()
    out.append(TAG_OPEN.sub("&lt;", text[pos:]))
    return "".join(out)


def _no_raw_html():
    """A Python-Markdown extension that treats raw HTML as text (escaped), blocks and inline alike."""
    from markdown.extensions import Extension

    class NoRawHtml(Extension):
        def extendMarkdown(self, md):  # noqa: N802  Python-Markdown's hook name
            md.preprocessors.deregister("html_block")
            md.inlinePatterns.deregister("html")

    return NoRawHtml()


CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}
table{border-collapse:collapse;margin:.6em 0;font-size:.85em}th,td{border:1px solid #ccc;padding:3px 7px}
th{background:#f3f3f3}tr:nth-child(even) td{background:#fafafa}img{max-width:100%;border:1px solid #eee}
code{background:#f5f5f5;padding:0 3px}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
"""


def render_html(markdown_text: str, base: Path) -> str:
    """A self-contained HTML page from the report's Markdown: the figures under ``base`` are inlined as
    base64 PNG data URIs, so the file can be moved or mailed alone. Raw HTML in the text is rendered as
    text (escaped), never as markup: no value from the data can run a script in the reader's browser.
    """
    import markdown

    body = markdown.markdown(markdown_text, extensions=["tables", "sane_lists", _no_raw_html()])

    def inline(match: re.Match) -> str:
        path = base / match.group(1)
        if not path.is_file():
            return match.group(0)
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        return f'src="data:image/png;base64,{data}"'

    body = re.sub(r'src="(figures/[^"]+\.png)"', inline, body)
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>Emergent misalignment: analysis</title><style>{CSS}</style></head>\n"
            f"<body>\n{body}\n</body></html>\n")


# ------------------------------------------------------------------ pieces the statistics' sections share (issue 21)
def judge(r: Results):
    """The judges behind the answers (:func:`em.analysis.judge_name.judge_info`)."""
    return judge_info(r.responses.sources, r.responses.answers, r.settings.judges.combine)


def condition_bullets(r: Results, by_cond: pd.DataFrame) -> list[str]:
    """One headline bullet per condition: its rate [CI], labelled "pooled over formats" with each format's rate
    and counts beside it when the condition was asked in several formats (:mod:`em.analysis.groups`)."""
    out = []
    for row in by_cond.itertuples():
        pooled = len(per_format(r.rates, row.condition)) > 1
        out.append(f"- **{row.condition}**: misaligned rate"
                   f"{', ' + POOLED if pooled else ''} {rate_ci(row.misaligned_rate, row.ci_low, row.ci_high)}"
                   f" ({row.n_misaligned:,} of {row.n_denominator:,} {DENOMINATORS[r.settings.denominator]['noun']}"
                   f"; design effect {dec(row.design_effect)})"
                   + (f"; per format: {breakdown_text(r.rates, row.condition)}." if pooled else "."))
    return out


def contrast_test_text(c: pd.Series) -> str:
    """``Fisher p = ..., Holm-adjusted p = ...`` or the run-level test's name and p (with the permutation p over
    runs when computed); the status when the contrast was not tested."""
    if c.status != "tested":
        return str(c.status)
    name = "Fisher p" if str(c.test).startswith("Fisher") else f"{c.test}: p"
    text = f"{name} = {pval(c.p_value)}, Holm-adjusted p = {pval(c.p_holm)}"
    if not pd.isna(c.get("permutation_p", float("nan"))):
        text += f", exact permutation p over runs = {pval(c.permutation_p)}"
    return text


def runs_caveat(answers: pd.DataFrame) -> str:
    """The caveat on run-to-run variance: carried (>= 2 runs in some model × condition) or not estimated."""
    if (runs_per_cell(answers)["n_runs"] >= 2).any():
        return ("- Groups that pool several fine-tuning runs carry the between-run variance (two-way run × "
                "question design effect; t on min(runs, questions) - 1 degrees of freedom): with few runs these "
                "intervals are wide, which is what few runs tell about the training procedure. Groups with one "
                "run describe that run only.")
    return ("- One fine-tuning run per model and condition: run-to-run variance is not estimated. The intervals "
            "treat answers as the sample (widened for clustering by question); they understate the uncertainty of "
            "a claim about the training recipe.")
