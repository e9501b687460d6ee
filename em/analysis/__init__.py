"""Analysis stage: misalignment rates, contrasts, correlations, sensitivity and a report from judged responses.

Only ``run_analysis`` lives here, and it imports the pipeline lazily: ``analyze.py --help`` must not pay
for pandas, statsmodels or matplotlib. Importing this package registers the config schema
(:mod:`em.config.analysis`), so ``compose("analyze")`` works after ``import em.analysis``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from em.analysis.run import run_analysis as _run
import em.config.analysis  # noqa: F401  registers analyze_schema (conf/analyze.yaml's first default)


def run_analysis(cfg: Any) -> Path:
    """Analyse the responses tables named by ``cfg`` and return the run directory holding every output.

    See :func:`em.analysis.run.run_analysis` (the outputs, and the ConfigError / DataError it raises).
    """
    return _run(cfg)


__all__ = ["run_analysis"]
