"""``em interp`` / ``python interp.py``: directions in the residual stream, projections, steering and ablation.

The Hydra app lives here, in the package, so its config (``conf/interp.yaml``) is found as ``pkg://em.conf``
from any directory.
"""

import sys

import hydra
from omegaconf import DictConfig

import em.config  # noqa: F401  registers the structured-config schemas
from em.config.compose import check_args
from em.commands import run_main


@hydra.main(version_base="1.3", config_path="pkg://em.conf", config_name="interp")
def main(cfg: DictConfig) -> None:
    """One interp run: :func:`em.interp.run.run_interp` (torch imported only once a run really starts)."""
    from em.interp.run import run_interp
    from em.quiet import configure

    configure(quiet=bool(cfg.get("quiet")), verbose=bool(cfg.get("verbose")), progress=cfg.get("progress", True))
    run_main(run_interp, cfg)


def cli() -> None:
    """Check the command line (one line, exit 2 on a bad option or key), then run the Hydra app."""
    from em.quiet import early

    early(sys.argv[1:])  # warning filters; no tqdm bars into a file
    run_main(lambda argv: check_args("interp", argv), sys.argv[1:])
    main()
