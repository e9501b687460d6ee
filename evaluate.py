"""Sample answers to free-form questions from a (fine-tuned) model and have a judge score them.

    python evaluate.py                                  # embedded default: Gemma 3 270M, smoke questions, local judge
    python evaluate.py judge=openai questions=first_plot format=[plain,json,template] samples=100   # the reference
    python evaluate.py adapter=outputs/train/<run> model=gemma3_12b judge=openai dry_run=true
"""

import sys

import hydra
from omegaconf import DictConfig

import em.schemas  # noqa: F401  registers the structured-config schemas
from em.cli import check_args, run_main


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    """One evaluation: :func:`em.evaluation.run.run_evaluation` (heavy imports only once it really runs).

    Exits 1 when judgments failed (the table and summary are written; a rerun asks only those again)."""
    from em.evaluation.run import run_evaluation

    res = run_main(run_evaluation, cfg)
    if getattr(res, "failures", 0):  # judgments failed: results kept on disk, a rerun asks them again
        sys.exit(1)


if __name__ == "__main__":
    # an unknown option (format=[plain,bogus] lists the choices) or a typo'd key -> one line, exit 2
    run_main(lambda argv: check_args("evaluate", argv), sys.argv[1:])
    main()
