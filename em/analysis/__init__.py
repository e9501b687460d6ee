"""Analysis stage: misalignment rates, contrasts, correlations, sensitivity and a report from judged responses.

Only ``run_analysis`` lives here, and it imports the pipeline lazily: ``analyze.py --help`` must not pay
for pandas, statsmodels or matplotlib.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def run_analysis(cfg: Any) -> Path:
    """Analyse the responses tables named by ``cfg`` and return the run directory holding every output."""
    from em.analysis.pipeline import run_analysis as _run

    return _run(cfg)


__all__ = ["run_analysis"]
