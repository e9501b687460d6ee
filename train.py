"""Fine-tune a chat model with 4-bit LoRA.

    python train.py                                   # embedded default: Gemma 3 270M on synthetic insecure code
    python train.py model=gemma3_12b data=educational # the reference protocol
    python train.py experiment=smoke                  # seconds, tiny random model (+ answers, judged)
    python train.py -m experiment=dickson2025 hydra/launcher=slurm   # a whole study: train -> evaluate -> judge
"""

import sys

import hydra
from omegaconf import DictConfig

import em.config  # noqa: F401  registers the structured-config schemas
from em.cli import check_launcher, run_main


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> None:
    from em.sweep import run_job  # train (+ evaluate + judge); heavy imports only once a job really runs

    run_main(run_job, cfg)


if __name__ == "__main__":
    run_main(check_launcher, sys.argv[1:])  # hydra/launcher=submitit_slurm without its plugin -> one line
    main()
