"""Sample answers to free-form questions from a (fine-tuned) model and have a judge score them.

    python evaluate.py                                  # embedded default: Gemma 3 270M, smoke questions, local judge
    python evaluate.py judge=openai questions=first_plot format=[plain,json,template] samples=100   # the reference
    python evaluate.py adapter=outputs/train/<run> model=gemma3_12b judge=openai dry_run=true
"""

import sys

import hydra
from omegaconf import DictConfig

import em.eval_config  # noqa: F401  registers the structured-config schemas
from em.cli import run_main


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    from em.evaluation.run import run_evaluation  # heavy imports only once a job really runs

    run_main(run_evaluation, cfg)


if __name__ == "__main__":
    run_main(em.eval_config.check_group_choices, sys.argv[1:])  # format=[plain,bogus] -> the choices
    main()
