"""``em evaluate`` / ``python evaluate.py``: sample answers and have a judge score them.

The Hydra app lives here, in the package, so its config is found as ``pkg://em.conf`` from any directory.
"""

import sys

import hydra
from omegaconf import DictConfig

import em.config  # noqa: F401  registers the structured-config schemas
from em.config.compose import check_args
from em.commands import run_main


@hydra.main(version_base="1.3", config_path="pkg://em.conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    """One evaluation: :func:`em.evaluate.run.run_evaluation` (heavy imports only once a job really runs)."""
    from em.quiet import configure

    configure(quiet=bool(cfg.get("quiet")), verbose=bool(cfg.get("verbose")), progress=cfg.get("progress", True))
    from em.evaluate import record

    # SIGTERM / SIGINT: <run_dir>/em_job.json says interrupted, one line says how to resume, exit 128 + signal
    with record.standalone("judge" if cfg.get("answers") is not None else "evaluate"):
        from em.evaluate.run import run_evaluation

        res = run_main(record.recorded(run_evaluation), cfg)
    if getattr(res, "failures", 0):  # judgments failed: results kept on disk, a rerun asks them again
        sys.exit(1)


def cli() -> None:
    """Check the command line (one line, exit 2 on a bad option or key), then run the Hydra app."""
    from em.quiet import early

    early(sys.argv[1:])  # warning filters; no tqdm bars into a file
    run_main(lambda argv: check_args("evaluate", argv), sys.argv[1:])
    main()
