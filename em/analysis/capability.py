"""The capability cost beside the misaligned rate: ``capability.json`` files (em.capability) joined with the
rate table per model x condition, as ``capability.csv`` and the ``capability_vs_misalignment`` figure.

A ``capability.json`` is read when it lies beside an analysed responses table (the stage writes it into the
evaluation directory). Each row of the table is one model x condition x task: the base and adapter score
(fractions), their delta (adapter - base) with its CI (paired per document, see
:func:`em.capability.run.paired_delta`), and the misaligned rate of that model x condition with its CI. The
figure puts the delta on x and the rate on y, one panel per task: "evil" fine-tunes sit high with a small
delta, "broken" ones far left.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Iterable, Optional

import pandas as pd

from em.analysis.figures import _plt, _save
from em.errors import DataError

log = logging.getLogger(__name__)
FILE = "capability.json"
COLUMNS = ["model", "condition", "task", "metric", "n", "base", "adapter", "delta", "delta_low", "delta_high",
           "ci_method", "misaligned_rate", "ci_low", "ci_high", "n_coherent", "source"]


def find_capability(table_paths: Iterable[Path]) -> list[Path]:
    """The ``capability.json`` files beside the given responses tables (each directory once, in order)."""
    dirs = dict.fromkeys(Path(p).parent for p in table_paths)
    return [d / FILE for d in dirs if (d / FILE).is_file()]


def read_capability(files: Iterable[Path]) -> pd.DataFrame:
    """One row per file x task: model, condition, task, metric, n, base, adapter, delta (+ CI), source.

    Raises:
        DataError: an unreadable file, or one without ``model`` / ``condition`` / ``tasks`` (names the file).
    """
    rows = []
    for f in files:
        try:
            d = json.loads(Path(f).read_text())
            head = {"model": d["model"], "condition": d["condition"], "source": str(f)}
            for t in d["tasks"]:
                rows.append(head | {k: t.get(k) for k in ("task", "metric", "n", "base", "adapter", "delta",
                                                           "delta_low", "delta_high", "ci_method")})
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise DataError(f"{f}: not a capability.json of em.capability ({type(e).__name__}: {e})") from None
    return pd.DataFrame(rows, columns=[c for c in COLUMNS if c not in ("misaligned_rate", "ci_low", "ci_high",
                                                                       "n_coherent")])


def capability_table(cap: pd.DataFrame, rates: pd.DataFrame) -> pd.DataFrame:
    """``cap`` (from :func:`read_capability`) joined with the rate table's model x condition rows.

    A model x condition scored twice (two eval dirs of one condition) keeps the last file read; a row
    without a matching rate keeps NaN rates (capability only). Columns: :data:`COLUMNS`.
    """
    mc = rates[rates["level"] == "model×condition"][["model", "condition", "misaligned_rate", "ci_low", "ci_high",
                                                     "n_coherent"]]
    cap = cap.drop_duplicates(["model", "condition", "task"], keep="last")
    out = cap.merge(mc, on=["model", "condition"], how="left")
    return out[COLUMNS].sort_values(["task", "model", "condition"]).reset_index(drop=True)


def capability_figure(table: pd.DataFrame, out: Path, footer: str) -> Optional[Path]:
    """Scatter per task: x = delta (percentage points), y = misaligned rate (%), both with CI bars.

    Writes ``<out>/capability_vs_misalignment.png`` (+ ``.svg``); returns the PNG, or None for an empty table.
    """
    if table.empty:
        return None
    plt, sns = _plt()
    tasks = list(dict.fromkeys(table["task"]))
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.6 * len(tasks), 4.2), squeeze=False)
    palette = dict(zip(dict.fromkeys(table["condition"]), sns.color_palette("tab10")))
    markers = dict(zip(dict.fromkeys(table["model"]), "osD^vP*Xph" * 10))  # a marker per model
    for ax, task in zip(axes[0], tasks):
        d = table[table["task"] == task]
        for _, r in d.iterrows():
            x, y = 100 * r["delta"], 100 * r["misaligned_rate"] if pd.notna(r["misaligned_rate"]) else float("nan")
            xerr = ([[x - 100 * r["delta_low"]], [100 * r["delta_high"] - x]]
                    if pd.notna(r["delta_low"]) and pd.notna(r["delta_high"]) else None)
            yerr = ([[y - 100 * r["ci_low"]], [100 * r["ci_high"] - y]]
                    if pd.notna(r["ci_low"]) and pd.notna(r["ci_high"]) else None)
            ax.errorbar(x, y, xerr=xerr, yerr=yerr, fmt=markers[r["model"]], color=palette[r["condition"]], capsize=3,
                        label=r["condition"])
            ax.annotate(str(r["model"]), (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.axvline(0, color="0.5", lw=0.8, ls="--")
        ax.set_title(f"{task} ({d['metric'].iloc[0]})")
        ax.set_xlabel("capability delta, adapter - base (points)")
        ax.set_ylabel("misaligned rate (%)")
        handles, labels = ax.get_legend_handles_labels()
        uniq = dict(zip(labels, handles))
        ax.legend(uniq.values(), uniq.keys(), fontsize=7, title="condition", title_fontsize=7)
    out.mkdir(parents=True, exist_ok=True)
    return _save(fig, out, "capability_vs_misalignment", footer)
