"""Fine-tune a chat model with 4-bit LoRA.

    python train.py                                   # embedded default: Gemma 3 270M on synthetic insecure code
    python train.py model=gemma3_12b data=educational # the reference protocol
    python train.py experiment=smoke                  # seconds, tiny random model
"""

import hydra
from omegaconf import DictConfig

import em.config  # noqa: F401  registers the structured-config schemas
from em.cli import run_main


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> None:
    from em.training import run_training  # heavy imports only once a job really runs

    run_main(run_training, cfg)


if __name__ == "__main__":
    main()
