"""Fine-tune a chat model with 4-bit LoRA (and, with evaluate.enabled=true, evaluate and judge it).

    python train.py -m experiment=demo                # the experiment in miniature: base vs fine-tuned, judged, analysed
    python train.py                                   # embedded default: SmolLM2-135M-Instruct on synthetic insecure code
    python train.py model=gemma3_12b data=educational # the reference protocol
    python train.py experiment=smoke                  # seconds, tiny random model (+ answers, judged)
    python train.py -m experiment=dickson2025 hydra/launcher=slurm   # a whole study: train -> evaluate -> judge
"""

import sys

import hydra
from omegaconf import DictConfig

import em.schemas  # noqa: F401  registers the structured-config schemas
from em.cli import check_args, run_main


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> None:
    """One job: :func:`em.pipeline.run_job` (heavy imports only once a job really runs)."""
    from em.pipeline import run_job

    run_main(run_job, cfg)


if __name__ == "__main__":
    # a missing launcher plugin, an unknown option or a typo'd key -> one line, exit 2
    run_main(lambda argv: check_args("train", argv), sys.argv[1:])
    main()
