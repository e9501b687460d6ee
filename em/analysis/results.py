"""Everything one analysis run computed, handed from the statistics to the writers (CSV, figures, report)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import pandas as pd

from em.analysis.groups import Cells
from em.analysis.io import Responses
from em.config.analysis import AnalysisConfig


@dataclass
class Results:
    """The settings, the answers read and every table computed (DataFrames as written to ``<name>.csv``)."""

    settings: AnalysisConfig
    responses: Responses
    cells: Cells
    rates: pd.DataFrame
    contrasts: pd.DataFrame
    correlations: pd.DataFrame
    scaling: pd.DataFrame
    unknown_models: list[str]
    sensitivity: pd.DataFrame
    checks: pd.DataFrame
    judge_rates: Optional[pd.DataFrame] = None
    agreement: Optional[pd.DataFrame] = None
    tables: dict[str, Path] = field(default_factory=dict)  # name -> CSV written
    figures: dict[str, Path] = field(default_factory=dict)  # name -> PNG written (an SVG lies beside it)
    timings: dict[str, float] = field(default_factory=dict)
    judge_extras: dict = field(default_factory=dict)  # em.analysis.judge_report.judge_extras: provenance, bands, bias

    def level(self, name: str) -> pd.DataFrame:
        """The rate table's rows at one level, e.g. ``"condition"`` or ``"model×condition"``."""
        return self.rates[self.rates["level"] == name]
