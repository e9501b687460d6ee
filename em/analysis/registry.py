"""The analysis as a registry of statistics (inspect_ai-style registered functions), and :class:`Results`.

A statistic is one function registered with its name, a description and the table(s) it returns::

    @statistic(name="quantiles", description="aligned-score quantiles per condition", table="quantiles.csv",
               report=lambda r: "### Quantiles\\n" + md_table(r.data["quantiles"], ...))
    def quantiles(r: Results) -> pd.DataFrame:
        return r.responses.answers.groupby("condition", observed=True)["aligned"].quantile([.1, .5, .9]) ...

:func:`em.analysis.run.run_analysis` runs every registered statistic in registration order (a statistic
reads the tables of those before it from ``r.data``), then each output iterates the registry: every table is
written as ``<run_dir>/<table>.csv`` and listed in the report's Files section; ``report`` / ``headline`` hooks
give the report's sections and headline bullets; ``console`` the text printed at the end; ``wandb`` the W&B run
summary keys (every table is logged as ``tables/<table>`` too); ``figures`` draws figures (when ``figures=true``).

Adding a statistic is one file and one line: a module under ``em/analysis/`` holding the decorated function,
and its name in :data:`STATISTIC_MODULES` (the built-in ones are :mod:`em.analysis.statistics`). A test or a
notebook may register one directly and :func:`unregister` it after.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence, Union

import pandas as pd

from em.analysis.groups import Cells
from em.analysis.ingest import Responses
from em.config.analysis import AnalysisConfig
from em.runtime import atomic_write_csv

# Modules whose import registers statistics, imported in this order by load_statistics (registration order is
# computation order, CSV order and report order).
STATISTIC_MODULES = ["em.analysis.statistics"]


@dataclass
class Results:
    """Everything one analysis run computed, handed from the statistics to the writers (CSV, figures, report).

    Attributes:
        settings: the validated config.
        responses: the answers read (:class:`em.analysis.ingest.Responses`).
        cells: the answers' model × condition × format × question cells (:class:`em.analysis.groups.Cells`).
        data: table name -> DataFrame every statistic returned (the CSV may write a column subset,
            :attr:`Table.columns`).
        state: intermediates a statistic leaves for later ones (e.g. ``rate_rows``, ``unknown_models``).
        tables: description -> CSV path written; figures: name -> PNG written (an SVG beside it);
        timings: step -> seconds.
        formats / conditions: the order every table, figure and contrast uses (:func:`ordered`).
    """

    settings: AnalysisConfig
    responses: Responses
    cells: Cells
    data: dict[str, pd.DataFrame] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)
    tables: dict[str, Path] = field(default_factory=dict)
    figures: dict[str, Path] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    formats: list[str] = field(default_factory=list)
    conditions: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        a = self.responses.answers
        self.formats = ordered(a["format"].astype(str), self.settings.ordering.format)
        self.conditions = ordered(a["condition"].astype(str), self.settings.ordering.condition)

    def level(self, name: str) -> pd.DataFrame:
        """The rate table's rows at one level, e.g. ``"condition"`` or ``"model×condition"``."""
        return self.rates[self.rates["level"] == name]

    # The built-in statistics' tables by their old attribute names (None when the statistic wrote none).
    rates = property(lambda self: self.data["rates"])
    contrasts = property(lambda self: self.data.get("contrasts"))
    correlations = property(lambda self: self.data.get("correlations"))
    scaling = property(lambda self: self.data.get("scaling"))
    sensitivity = property(lambda self: self.data.get("sensitivity"))
    checks = property(lambda self: self.data.get("sensitivity_checks"))
    judge_rates = property(lambda self: self.data.get("judge_rates"))
    agreement = property(lambda self: self.data.get("judge_agreement"))
    unknown_models = property(lambda self: self.state.get("unknown_models", []))
    judge_extras = property(lambda self: self.state.get("judge_extras", {}))


def ordered(values: Iterable[str], preferred: Sequence[str] = ()) -> list[str]:
    """Distinct ``values`` in display order: those named in ``preferred`` (the config's ``ordering.format`` /
    ``ordering.condition``) in that order, then the rest in order of first appearance in ``values``. No format
    or condition name is written in code: a fourth format shows up in every table without a code change."""
    seen = list(dict.fromkeys(str(v) for v in values))
    return [p for p in preferred if p in seen] + [v for v in seen if v not in preferred]


def rank(values: pd.Series, order: Sequence[str]) -> pd.Series:
    """Each value's position in ``order`` (values not in it after, as ``len(order)``): a sort key column."""
    return values.astype(object).map({v: i for i, v in enumerate(order)}).fillna(len(order))


@dataclass(frozen=True)
class Table:
    """One output table: ``<run_dir>/<name>.csv``, ``tables/<name>`` in W&B, a line in the report's Files.

    ``columns``: the columns written (None: all); ``skip_empty``: an empty table is not written.
    """

    name: str
    description: str
    columns: Optional[tuple[str, ...]] = None
    skip_empty: bool = False


Frames = Union[pd.DataFrame, Mapping[str, Optional[pd.DataFrame]], None]


@dataclass(frozen=True)
class Statistic:
    """A registered statistic: ``compute(r)`` returns its table (one) or ``{table name: DataFrame or None}``
    (several), None for a table it does not produce on these answers; the hooks are optional."""

    name: str
    description: str
    tables: tuple[Table, ...]
    compute: Callable[[Results], Frames]
    report: Optional[Callable[[Results], str]] = None  # a markdown section under the report's "Tables"
    headline: Optional[Callable[[Results], list[str]]] = None  # bullets under "Headline numbers"
    console: Optional[Callable[[Results], str]] = None  # text printed at the end of analyze.py
    wandb: Optional[Callable[[Results], dict[str, Any]]] = None  # W&B run summary keys -> values
    figures: Optional[Callable[[Results, Path], dict[str, Path]]] = None  # figure name -> PNG drawn into a folder


_REGISTRY: dict[str, Statistic] = {}


def statistic(name: str, description: str, *, table: Optional[str] = None,
              tables: Optional[Mapping[str, str]] = None, columns: Optional[Sequence[str]] = None,
              skip_empty: bool = False, report=None, headline=None, console=None, wandb=None, figures=None):
    """Register the decorated ``fn(r: Results) -> DataFrame | {table: DataFrame}`` as statistic ``name``.

    Args:
        table: its one table's file name (``"rates.csv"`` or ``"rates"``), described by ``description``.
        tables: several tables: file name -> description (``compute`` returns a mapping by table name).
        columns: the columns written for ``table`` (None: all the DataFrame's).
        skip_empty: leave out a table with no rows (else every table is written, empty or not).
        report, headline, console, wandb, figures: the optional hooks of :class:`Statistic`.

    Raises:
        ValueError: neither or both of ``table`` / ``tables``, or a statistic or table name registered already.
    """
    if (table is None) == (tables is None):
        raise ValueError(f"statistic {name!r}: give table= or tables=, not {'both' if table else 'neither'}")
    spec = {table: description} if table is not None else dict(tables or {})
    specs = tuple(Table(n.removesuffix(".csv"), d, tuple(columns) if columns and table else None, skip_empty)
                  for n, d in spec.items())

    def register(fn: Callable[[Results], Frames]) -> Callable[[Results], Frames]:
        taken = {t.name for s in _REGISTRY.values() for t in s.tables}
        if name in _REGISTRY or taken & {t.name for t in specs}:
            raise ValueError(f"statistic {name!r}: the name or a table ({', '.join(t.name for t in specs)}) is "
                             "registered already (unregister it first)")
        _REGISTRY[name] = Statistic(name, description, specs, fn, report, headline, console, wandb, figures)
        return fn

    return register


def unregister(name: str) -> None:
    """Remove statistic ``name`` (no error when absent)."""
    _REGISTRY.pop(name, None)


def load_statistics() -> list[Statistic]:
    """Import :data:`STATISTIC_MODULES` (registering the built-in statistics once); every statistic in order."""
    for module in STATISTIC_MODULES:
        importlib.import_module(module)
    return list(_REGISTRY.values())


def compute(r: Results, stats: Sequence[Statistic], timed) -> None:
    """Run each statistic into ``r.data`` (its tables by name; a table it returns None for stays absent).

    ``timed(name)``: a context manager timing one step into ``r.timings``.

    Raises:
        ValueError: a statistic returned a table it did not register (or a non-DataFrame).
    """
    for s in stats:
        with timed(s.name):
            out = s.compute(r)
        frames = {s.tables[0].name: out} if isinstance(out, pd.DataFrame) or out is None else dict(out)
        unknown = set(frames) - {t.name for t in s.tables}
        if unknown or len(frames) > 1 and len(s.tables) == 1:
            raise ValueError(f"statistic {s.name!r} returned table(s) {sorted(unknown)} it did not register")
        for name, df in frames.items():
            if df is not None:
                r.data[name] = df


def write_tables(r: Results, stats: Sequence[Statistic]) -> dict[str, pd.DataFrame]:
    """Write every registered table ``r.data`` holds as ``<run_dir>/<name>.csv`` (every text field quoted:
    :func:`em.runtime.atomic_write_csv`), record it in ``r.tables``; return name -> DataFrame written."""
    written = {}
    for s in stats:
        for t in s.tables:
            df = r.data.get(t.name)
            if df is None or (t.skip_empty and not len(df)):
                continue
            df = df[list(t.columns)] if t.columns else df
            r.tables[t.description] = atomic_write_csv(Path(r.settings.run_dir) / f"{t.name}.csv", df)
            written[t.name] = df
    return written


def hooks(stats: Sequence[Statistic], hook: str) -> list[Callable]:
    """The ``hook`` functions (``report``, ``headline``, ``console``, ``wandb``, ``figures``) of ``stats``, in
    registration order (a hook returns nothing when its statistic's tables are absent)."""
    return [getattr(s, hook) for s in stats if getattr(s, hook) is not None]


__all__ = ["Results", "STATISTIC_MODULES", "Statistic", "Table", "compute", "hooks", "load_statistics", "ordered",
           "rank", "statistic", "unregister", "write_tables"]
