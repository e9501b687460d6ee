"""Analysis stage: misalignment rates, contrasts, correlations, sensitivity and a report from judged responses.

The entry is :func:`em.analysis.run.run_analysis`; statistics are registered in :mod:`em.analysis.registry`.
Importing this package stays light (no pandas: ``analyze.py --help`` must not pay for it) and registers the
config schema (:mod:`em.config.analysis`), so ``compose("analyze")`` works after ``import em.analysis``.
"""

import em.config.analysis  # noqa: F401  registers analyze_schema (conf/analyze.yaml's first default)
