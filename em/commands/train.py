"""``em train`` / ``python train.py``: fine-tune with 4-bit LoRA (and, with evaluate.enabled=true, evaluate it).

The Hydra app lives here, in the package, so its config is found as ``pkg://em.conf`` from any directory.
"""

import sys

import hydra
from omegaconf import DictConfig

import em.config  # noqa: F401  registers the structured-config schemas
from em.commands import run_main, sweep_cli


@hydra.main(version_base="1.3", config_path="pkg://em.conf", config_name="train")
def main(cfg: DictConfig) -> None:
    """One job: :func:`em.jobs.run.run_job` (heavy imports only once a job really runs)."""
    from em.jobs.run import run_job
    from em.runtime import in_multirun

    from em.quiet import configure

    configure(quiet=bool(cfg.get("quiet")), verbose=bool(cfg.get("verbose")), progress=cfg.get("progress", True),
              lightning=True)
    from em.train.stopping import handle_signals

    try:
        with handle_signals():  # SIGTERM / SIGINT: em_job.json says interrupted, exit 128 + signal
            res = run_main(run_job, cfg)
    except KeyboardInterrupt as e:
        sys.exit(getattr(e, "exit_code", 130))
    if getattr(res, "state", None) == "failed" and not in_multirun():  # e.g. failed judgments: a rerun asks again
        sys.exit(1)


def cli() -> None:
    """Check the command line (one line, exit 2 on a bad option or key), then run the Hydra app."""
    from em.jobs.sweep import exit_status

    sweep_cli("train", main, exit_status)
