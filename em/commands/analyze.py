"""``em analyze`` / ``python analyze.py``: rates with CIs, contrasts, correlations, figures and a report.

The Hydra app lives here, in the package, so its config is found as ``pkg://em.conf`` from any directory.
"""

import sys

import hydra
from omegaconf import DictConfig

import em.schemas  # noqa: F401  registers the structured-config schemas (analyze_schema among them)
from em.cli import check_args, run_main


@hydra.main(version_base="1.3", config_path="pkg://em.conf", config_name="analyze")
def main(cfg: DictConfig) -> None:
    """Run the analysis of the composed config; bad input prints one line (exit 2)."""
    from em.analysis import run_analysis

    from em.quiet import configure

    configure(quiet=bool(cfg.get("quiet")), verbose=bool(cfg.get("verbose")), progress=cfg.get("progress", True))
    run_main(run_analysis, cfg)


def cli() -> None:
    """Check the command line (one line, exit 2 on a bad option or key), then run the Hydra app."""
    from em.quiet import early

    early(sys.argv[1:])  # warning filters; no tqdm bars into a file
    run_main(lambda argv: check_args("analyze", argv), sys.argv[1:])
    main()
