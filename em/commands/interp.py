"""``em interp`` / ``python interp.py``: directions in the residual stream, projections, steering and ablation.

The Hydra app lives here, in the package, so its config (``conf/interp.yaml``) is found as ``pkg://em.conf``
from any directory.
"""

import sys

import hydra
from omegaconf import DictConfig

import em.config  # noqa: F401  registers the structured-config schemas
from em.commands import run_main, sweep_cli


@hydra.main(version_base="1.3", config_path="pkg://em.conf", config_name="interp")
def main(cfg: DictConfig) -> None:
    """One interp run, or one job of a multirun: :func:`em.interp.run.run_interp` (torch imported only once a
    run really starts)."""
    from em.interp.run import run_interp
    from em.quiet import configure
    from em.runtime import in_multirun
    from em.train.stopping import handle_signals

    configure(quiet=bool(cfg.get("quiet")), verbose=bool(cfg.get("verbose")), progress=cfg.get("progress", True))
    try:
        with handle_signals():  # SIGTERM / SIGINT: em_job.json says interrupted, exit 128 + signal
            res = run_main(run_interp, cfg)
    except KeyboardInterrupt as e:
        sys.exit(getattr(e, "exit_code", 130))
    if (res or {}).get("state") == "failed" and not in_multirun():  # e.g. failed judgments: a rerun asks again
        sys.exit(1)


def cli() -> None:
    """Check the command line (one line, exit 2 on a bad option or key), then run the Hydra app."""
    from em.jobs.sweep import exit_status

    sweep_cli("interp", main, exit_status)
