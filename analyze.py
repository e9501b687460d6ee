"""Analyse judged responses: rates with CIs, contrasts, correlations, sensitivity, figures and a report.

    python analyze.py                                   # the latest run under outputs/evaluate/
    python analyze.py inputs=[outputs/evaluate/RUN,multirun/SWEEP,eval_result.csv] condition=insecure
    python analyze.py thresholds.coherent=60 bootstrap.n_resamples=2000 logger=wandb
"""

import sys

import hydra
from omegaconf import DictConfig

from em.analysis import run_analysis
from em.cli import check_args, run_main


@hydra.main(version_base="1.3", config_path="conf", config_name="analyze")
def main(cfg: DictConfig) -> None:
    """Hydra entry point: compose conf/analyze.yaml, run the analysis, print one-line errors (exit 2)."""
    run_main(run_analysis, cfg)


if __name__ == "__main__":
    # a wrong type, an unknown key or option, a key on the command line -> one line, exit 2
    run_main(lambda argv: check_args("analyze", argv), sys.argv[1:])
    main()
