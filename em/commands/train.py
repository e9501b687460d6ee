"""``em train`` / ``python train.py``: fine-tune with 4-bit LoRA (and, with evaluate.enabled=true, evaluate it).

The Hydra app lives here, in the package, so its config is found as ``pkg://em.conf`` from any directory.
"""

import sys

import hydra
from omegaconf import DictConfig

import em.schemas  # noqa: F401  registers the structured-config schemas
from em.cli import check_args, run_main


@hydra.main(version_base="1.3", config_path="pkg://em.conf", config_name="train")
def main(cfg: DictConfig) -> None:
    """One job: :func:`em.pipeline.run_job` (heavy imports only once a job really runs)."""
    from em.pipeline import run_job
    from em.runtime import in_multirun

    from em.quiet import configure

    configure(quiet=bool(cfg.get("quiet")), verbose=bool(cfg.get("verbose")), progress=cfg.get("progress", True),
              lightning=True)
    res = run_main(run_job, cfg)
    if getattr(res, "state", None) == "failed" and not in_multirun():  # e.g. failed judgments: a rerun asks again
        sys.exit(1)


def cli() -> None:
    """Check the command line (one line, exit 2 on a bad option or key), then run the Hydra app."""
    from em.quiet import early

    early(sys.argv[1:])  # warning filters; no tqdm bars into a file
    run_main(lambda argv: check_args("train", argv), sys.argv[1:])
    main()
