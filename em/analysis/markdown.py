"""Markdown building blocks of the analysis report (number formats, tables) and its HTML rendering."""

from __future__ import annotations

import base64
import math
import re
from pathlib import Path
from typing import Callable

import pandas as pd


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
